"""The rollout step's summary: verdict first, then counts, the stragglers with their reasons and the
command that redeploys just them, then every tenant."""

from __future__ import annotations

import shlex

from fleet import markdown
from fleet.inputs import INPUTS, value_of
from fleet.runner import md
from fleet.verdict import RunVerdict
from fleet.vocabulary import Mode, Outcome, RolloutVerdict
from rollout.drive import Result
from rollout.plan import Plan, Settings, plan_lines, schedule_line
from rollout.waves import sizes_line

ICONS: dict[str, str] = {
    RolloutVerdict.SHIPPED: "✅",
    RolloutVerdict.SHIPPED_WITH_QUARANTINE: "⚠️",
    RolloutVerdict.PLANNED: "📝",
    RolloutVerdict.SUPERSEDED: "⏭️",
}


def recovery_command(settings: Settings, slugs: list[str]) -> str:
    """The one command that redeploys just `slugs`, strictly and without a canary, and then verifies
    exactly them against the expected build. It repeats each input the list marks for recovery that was
    given another value than its default, and the forge's API when the quarantine ledger is kept. It runs
    wherever the action's package is installed (the forge's token from API_TOKEN, the repository from
    GITHUB_REPOSITORY)."""
    given = settings.given
    args = ["python", "-m", "rollout"]
    for item in INPUTS.values():
        value = given.get(item.name, item.default)
        if item.recovery and value_of(item.name, value) != value_of(item.name, item.default):
            args += [f"--{item.name}", "true" if value_of(item.name, value) is True else value]
    if value_of("quarantine-issues", given.get("quarantine-issues", "false")) is True and given.get("api-url"):
        args += ["--api-url", given["api-url"]]  # the ledger's forge: the recovery closes the tenant's issue
    args += ["--slugs", ",".join(slugs), "--max-stragglers", "0", "--soak-seconds", "0"]
    if settings.tenant_access is not None and settings.expected_sha:
        args += ["--verify", "true"]
    return "CP_TOKEN=... " + shlex.join(args)


def render(run: RunVerdict, settings: Settings | None, plan: Plan | None, result: Result | None) -> str:
    icon = ICONS.get(run.verdict, "❌")
    parts = [f"## {icon} Fleet rollout: {run.verdict}", "", md(markdown.clip(run.message, markdown.MAX_MESSAGE)), ""]
    if plan is None or result is None or settings is None:
        return "\n".join(parts)
    parts += _counts(run.ok, settings, plan, result)
    if settings.dry_run:
        lines = [f"1. {md(line)}" for line in plan_lines(settings, plan)]
        schedule = [md(schedule_line(plan)), ""] if plan.mode == Mode.SCOPED else []
        parts += ["### The plan", "", *schedule, *lines, ""]
    parts += _stragglers(run.ok, settings, result)
    parts += _outside(result.outside)
    parts += [f"> {md(line)}" for line in result.notes]
    parts += ["", _tenants(result)]
    return "\n".join(parts)


def _counts(ok: bool, settings: Settings, plan: Plan, result: Result) -> list[str]:
    budget = settings.budget
    rows: list[tuple[str, object]] = [
        ("Tenants in scope", len(plan.scope)),
        ("Redeployed", result.count(Outcome.REDEPLOYED)),
        ("Quarantined stragglers" if ok else "Stragglers", len(result.stragglers())),
        ("Not attempted (old build)", result.count(Outcome.NOT_ATTEMPTED)),
        ("Outcome unknown", result.count(Outcome.UNKNOWN)),
        ("Straggler budget", f"{plan.budget} (from {budget.source} {md(budget.text)})"),
    ]
    if settings.dry_run:
        rows.insert(1, ("In the dry run's plan", result.count(Outcome.DRY_RUN)))
    if result.batch_sizes:  # as sent: a straggler sets a growing schedule back
        rows.append(("Batch sizes", f"{sizes_line(result.batch_sizes)} ({len(result.batch_sizes)} batches)"))
    return [markdown.table(("", "count"), rows), ""]


def _stragglers(ok: bool, settings: Settings, result: Result) -> list[str]:
    """The stragglers with their reasons, and the command that redeploys just them."""
    stragglers = [t for t in result.outcomes.values() if t.outcome in (Outcome.STRAGGLER, Outcome.QUARANTINED)]
    if not stragglers:
        return []
    parts = [f"### {'Quarantined: recover individually' if ok else 'Stragglers'}", ""]
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
    if len(stragglers) > markdown.SHOWN:  # a command naming thousands of tenants is one line too long for a summary
        return parts + [f"The command for all {len(stragglers)} is in the report, under `recovery`.", ""]
    return parts + ["```sh", recovery_command(settings, [o.slug for o in stragglers]), "```", ""]


def _outside(outside: list[str]) -> list[str]:
    if not outside:
        return []
    return [
        "### Touched outside the call's scope",
        "",
        "The control plane answered for these tenants although no call's `only_slugs` named them: "
        "it may have redeployed them. Check them before anything else.",
        "",
        markdown.code_list(outside),
        "",
    ]


def _tenants(result: Result) -> str:
    # The action's own step (`batch 2/3`, as the log says), not the control plane's label for its row.
    clip = markdown.clip
    rows = [(f"`{t.slug}`", t.step or "", t.outcome, md(clip(t.reason or ""))) for t in result.outcomes.values()]
    table = markdown.table(("tenant", "step", "outcome", "reason"), rows)
    return markdown.fold(f"Tenants ({len(rows)})", table, len(rows))
