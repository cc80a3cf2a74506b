"""The rollout step's summary: verdict first, then counts, the stragglers with their reasons and the
command that redeploys just them, then every tenant."""

from __future__ import annotations

import shlex

from fleet import markdown
from fleet.inputs import INPUTS, value_of
from fleet.runner import md
from fleet.vocabulary import Outcome, RolloutVerdict
from rollout.drive import Result
from rollout.plan import Plan, Settings, plan_lines

ICONS = {
    RolloutVerdict.SHIPPED: "✅",
    RolloutVerdict.SHIPPED_WITH_QUARANTINE: "⚠️",
    RolloutVerdict.PLANNED: "📝",
    RolloutVerdict.SUPERSEDED: "⏭️",
}


def recovery_command(settings: Settings, slugs: list[str]) -> str:
    """The one command that redeploys just `slugs`, strictly and without a canary, and then verifies
    exactly them against the expected build. It repeats each input the list marks for recovery that was
    given another value than its default. It runs wherever the action's package is installed."""
    given = settings.given
    args = ["python", "-m", "rollout"]
    for item in INPUTS.values():
        value = given.get(item.name, item.default)
        if item.recovery and value_of(item.name, value) != value_of(item.name, item.default):
            args += [f"--{item.name}", "true" if value_of(item.name, value) is True else value]
    args += ["--slugs", ",".join(slugs), "--max-stragglers", "0", "--soak-seconds", "0"]
    if settings.tenants is not None and settings.expected_sha:
        args += ["--verify", "true"]
    return "CP_TOKEN=... " + shlex.join(args)


def render(
    verdict: RolloutVerdict, message: str, settings: Settings | None, plan: Plan | None, result: Result | None
) -> str:
    icon = ICONS.get(verdict, "❌")
    parts = [f"## {icon} Fleet rollout: {verdict}", "", md(markdown.clip(message, markdown.MAX_MESSAGE)), ""]
    if plan is None or result is None or settings is None:
        return "\n".join(parts)
    tenants = list(result.tenants.values())
    budget = settings.budget
    rows: list[tuple[str, object]] = [
        ("Tenants in scope", len(plan.scope)),
        ("Redeployed", result.count(Outcome.REDEPLOYED)),
        ("Quarantined stragglers" if result.ok else "Stragglers", len(result.stragglers())),
        ("Not attempted (old build)", result.count(Outcome.NOT_ATTEMPTED)),
        ("Outcome unknown", result.count(Outcome.UNKNOWN)),
        ("Straggler budget", f"{plan.budget} (from {budget.source} {md(budget.text)})"),
    ]
    if settings.dry_run:
        rows.insert(1, ("In the dry run's plan", result.count(Outcome.DRY_RUN)))
    parts += [markdown.table(("", "count"), rows), ""]
    if settings.dry_run:
        parts += ["### The plan", ""] + [f"1. {md(line)}" for line in plan_lines(settings, plan)] + [""]
    stragglers = [t for t in tenants if t.outcome in (Outcome.STRAGGLER, Outcome.QUARANTINED)]
    if stragglers:
        title = "Quarantined: recover individually" if result.ok else "Stragglers"
        parts += [f"### {title}", ""]
        parts += [
            f"- `{o.slug}`{f' ({o.step})' if o.step else ''}: {md(markdown.clip(o.reason or ''))}"
            for o in stragglers[: markdown.SHOWN]
        ]
        if len(stragglers) > markdown.SHOWN:
            parts.append("- " + markdown.MORE.format(count=len(stragglers) - markdown.SHOWN).strip())
        parts += [
            "",
            "Once fixed, redeploy just these strictly and verify them (where the action is installed: "
            "`pip install` of its repository), or run the recovery workflow with `slugs:` set to them:",
            "",
        ]
        if len(stragglers) <= markdown.SHOWN:
            parts += ["```sh", recovery_command(settings, [o.slug for o in stragglers]), "```", ""]
        else:  # a command naming thousands of tenants is one line too long for a summary
            parts += [f"The command for all {len(stragglers)} is in the report, under `recovery`.", ""]
    if result.outside:
        parts += ["### Touched outside the call's scope", ""]
        parts += [
            "The control plane answered for these tenants although no call's `only_slugs` named them: "
            "it may have redeployed them. Check them before anything else.",
            "",
            markdown.code_list(result.outside),
            "",
        ]
    for line in result.notes:
        parts.append(f"> {md(line)}")
    # The action's own step (`batch 2/3`, as the log says), not the control plane's label for its row.
    clip = markdown.clip
    tenant_rows = [(f"`{t.slug}`", t.step or "", t.outcome, md(clip(t.reason or ""))) for t in tenants]
    parts += [
        "",
        markdown.fold(
            f"Tenants ({len(tenant_rows)})",
            markdown.table(("tenant", "step", "outcome", "reason"), tenant_rows),
            len(tenant_rows),
        ),
    ]
    return "\n".join(parts)
