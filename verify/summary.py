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
    parts += _counts(counts)
    if survey:
        parts += _builds(seen)
    parts += _attention(seen) + _next_steps(steps or {})
    verified = [slug for slug, s in seen.items() if s.state == State.VERIFIED]
    if verified:
        parts.append(markdown.fold(f"Verified ({len(verified)})", markdown.code_list(verified), len(verified)))
    return "\n".join(parts)


def _counts(counts: dict[str, int]) -> list[str]:
    rows = [
        ("Verified", counts[State.VERIFIED]),
        ("Superseded (on the branch's newer head)", counts[State.SUPERSEDED]),
        ("Quarantined stragglers", counts[State.QUARANTINED]),
        ("Stale", counts[State.STALE]),
        ("Unhealthy", counts[State.UNHEALTHY]),
        ("Unreachable", counts[State.UNREACHABLE]),
        ("Total", counts["total"]),
    ]
    return [markdown.table(("", "tenants"), rows), ""]


def _builds(seen: dict[str, Seen]) -> list[str]:
    """A survey's table: who runs which build."""
    builds: dict[str, list[str]] = defaultdict(list)
    for slug, s in seen.items():
        builds[s.build[:12] if s.build else f"none ({s.state})"].append(slug)
    by_build = [(f"`{md(build)}`", len(slugs), markdown.code_list(slugs)) for build, slugs in builds.items()]
    return ["### Who runs which build", "", markdown.table(("build", "tenants", "which"), by_build), ""]


def _attention(seen: dict[str, Seen]) -> list[str]:
    """The tenants that failed, or that passed without running the expected build, with why: the column
    shows each one's state, as verify saw it."""
    attention = [
        (slug, s) for slug, s in seen.items() if s.state.failing or s.state in (State.QUARANTINED, State.SUPERSEDED)
    ]
    if not attention:
        return []
    rows = [(f"`{slug}`", s.state, md(markdown.clip(s.reason or ""))) for slug, s in attention]
    return ["### Needs attention", "", markdown.table(("tenant", "state", "reason"), rows), ""]


def _next_steps(steps: dict[str, str | None]) -> list[str]:
    groups: dict[str, list[str]] = defaultdict(list)
    for slug, step in steps.items():
        if step:
            groups[step].append(slug)
    if not groups:
        return []
    return ["### Next steps", "", *(f"- {md(step)}: {markdown.code_list(slugs)}" for step, slugs in groups.items()), ""]
