"""The rollout step's summary: verdict first, then counts, the stragglers with their reasons and the
command that redeploys just them, then every tenant."""

from __future__ import annotations

import shlex

from fleet import markdown
from fleet.inputs import INPUTS
from fleet.runner import md
from rollout import drive
from rollout.coverage import NOT_ATTEMPTED, PLANNED, SHIPPED, STRAGGLER, UNKNOWN
from rollout.plan import Plan, Settings

ICONS = {
    drive.SHIPPED_ALL: "✅",
    drive.QUARANTINED: "⚠️",
    drive.PLANNED: "📝",
}


def recovery_command(settings: Settings, slugs: list[str]) -> str:
    """The one command that redeploys just `slugs`, strictly and without a canary, and then verifies
    exactly them against the expected build. It runs wherever the action's package is installed."""
    args = [
        "python", "-m", "rollout",
        "--cp-url", settings.cp_url,
        "--target-tag", settings.target_tag,
        "--slugs", ",".join(slugs),
        "--max-stragglers", "0",
        "--soak-seconds", "0",
    ]  # fmt: skip
    if settings.tenant_url_template and settings.expected_sha:
        args += ["--tenant-url-template", settings.tenant_url_template, "--expected-sha", settings.expected_sha]
        args += ["--verify", "true"]
        for name, value in (("healthz-path", settings.healthz_path), ("buildinfo-path", settings.buildinfo_path)):
            if value != INPUTS[name].default:
                args += [f"--{name}", value]
    if settings.allow_http:
        args += ["--allow-http", "true"]
    if settings.ca_bundle:
        args += ["--ca-bundle", settings.ca_bundle]
    if settings.cp_timeout != float(INPUTS["cp-timeout-seconds"].default):
        args += ["--cp-timeout-seconds", f"{settings.cp_timeout:g}"]
    return "CP_TOKEN=... " + shlex.join(args)


def render(
    verdict: str, message: str, settings: Settings | None, plan: Plan | None, result: drive.Result | None
) -> str:
    icon = ICONS.get(verdict, "❌")
    parts = [f"## {icon} Fleet rollout: {verdict}", "", md(message), ""]
    if plan is None or result is None or settings is None:
        return "\n".join(parts)
    outcomes = list(result.outcomes.values())
    count = {
        k: sum(1 for o in outcomes if o.outcome == k) for k in (SHIPPED, STRAGGLER, NOT_ATTEMPTED, UNKNOWN, PLANNED)
    }
    label = "Quarantined stragglers" if result.ok else "Stragglers"
    budget = settings.budget
    rows = [
        ("Tenants in scope", len(plan.scope)),
        ("Shipped", count[SHIPPED]),
        (label, count[STRAGGLER]),
        ("Not attempted (old build)", count[NOT_ATTEMPTED]),
        ("Outcome unknown", count[UNKNOWN]),
        ("Straggler budget", f"{plan.budget} (from {budget.source} {md(budget.text)})"),
    ]
    if settings.dry_run:
        rows.insert(1, ("Planned (dry run)", count[PLANNED]))
    parts += [markdown.table(("", "count"), rows), ""]
    stragglers = [o for o in outcomes if o.outcome == STRAGGLER]
    if stragglers:
        title = "Quarantined: recover individually" if result.ok else "Stragglers"
        parts += [f"### {title}", ""]
        parts += [f"- `{o.slug}`: {md(o.reason or '')}" for o in stragglers]
        parts += [
            "",
            "Once fixed, redeploy just these strictly and verify them (where the action is installed: "
            "`pip install` of its repository), or run the recovery workflow with `slugs:` set to them:",
            "",
        ]
        parts += ["```sh", recovery_command(settings, [o.slug for o in stragglers]), "```", ""]
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
    tenant_rows = [(f"`{o.slug}`", o.phase or "", o.outcome, md(o.reason or "")) for o in outcomes]
    parts += [
        "",
        markdown.fold(
            f"Tenants ({len(tenant_rows)})",
            markdown.table(("tenant", "phase", "outcome", "reason"), tenant_rows),
            len(tenant_rows),
        ),
    ]
    return "\n".join(parts)
