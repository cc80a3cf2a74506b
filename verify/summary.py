"""The verify step's summary: verdict first, the counts (quarantined stragglers among them), the tenants
that need attention with their reasons, what to do next for each group, and the verified ones folded
when the list is long. After a failed rollout it is a survey: who runs which build."""

from __future__ import annotations

from collections import defaultdict

from fleet import markdown
from fleet.runner import md
from fleet.vocabulary import State
from verify.verdict import Seen


def render(
    ok: bool,
    message: str,
    seen: dict[str, Seen],
    counts: dict[str, int] | None,
    steps: dict[str, str | None] | None = None,
    survey: str = "",
    caution: str = "",
) -> str:
    icon = ("⚠️" if caution else "✅") if ok else "❌"
    title = "Fleet survey after a failed rollout" if survey else f"Fleet verify: {'passed' if ok else 'failed'}"
    parts = [f"## {icon} {title}", "", md(markdown.clip(message, markdown.MAX_MESSAGE)), ""]
    if caution:
        parts += [f"> {md(caution)}", ""]
    if counts is None:
        return "\n".join(parts)
    rows = [
        ("Verified", counts[State.VERIFIED]),
        ("Superseded (on the branch's newer head)", counts[State.SUPERSEDED]),
        ("Quarantined stragglers", counts[State.QUARANTINED]),
        ("Stale", counts[State.STALE]),
        ("Unhealthy", counts[State.UNHEALTHY]),
        ("Unreachable", counts[State.UNREACHABLE]),
        ("Total", counts["total"]),
    ]
    parts += [markdown.table(("", "tenants"), rows), ""]
    if survey:
        builds: dict[str, list[str]] = defaultdict(list)
        for slug, s in seen.items():
            builds[s.build[:12] if s.build else f"none ({s.state})"].append(slug)
        parts += ["### Who runs which build", ""]
        by_build = [(f"`{md(build)}`", len(slugs), markdown.code_list(slugs)) for build, slugs in builds.items()]
        parts += [markdown.table(("build", "tenants", "which"), by_build), ""]
    attention = [
        (slug, s) for slug, s in seen.items() if s.state.failing or s.state in (State.QUARANTINED, State.SUPERSEDED)
    ]
    if attention:
        parts += ["### Needs attention", ""]
        table = markdown.table(
            ("tenant", "verdict", "reason"),
            [(f"`{slug}`", s.state, md(markdown.clip(s.reason or ""))) for slug, s in attention],
        )
        parts += [table, ""]
    groups: dict[str, list[str]] = defaultdict(list)
    for slug, step in (steps or {}).items():
        if step:
            groups[step].append(slug)
    if groups:
        parts += ["### Next steps", ""]
        parts += [f"- {md(step)}: {markdown.code_list(slugs)}" for step, slugs in groups.items()]
        parts.append("")
    verified = [slug for slug, s in seen.items() if s.state == State.VERIFIED]
    if verified:
        parts.append(markdown.fold(f"Verified ({len(verified)})", markdown.code_list(verified), len(verified)))
    return "\n".join(parts)
