"""The verify step's summary: verdict first, the counts (quarantined stragglers among them), the tenants
that need attention with their reasons, and the verified ones folded when the list is long."""

from __future__ import annotations

from fleet import markdown
from fleet.runner import md
from verify.verdict import FAILING, QUARANTINED, STALE, UNHEALTHY, UNREACHABLE, VERIFIED, Seen


def render(ok: bool, message: str, seen: dict[str, Seen], counts: dict[str, int] | None) -> str:
    icon = "✅" if ok else "❌"
    parts = [f"## {icon} Fleet verify: {'passed' if ok else 'failed'}", "", md(message), ""]
    if counts is None:
        return "\n".join(parts)
    rows = [
        ("Verified", counts[VERIFIED]),
        ("Quarantined stragglers", counts[QUARANTINED]),
        ("Stale", counts[STALE]),
        ("Unhealthy", counts[UNHEALTHY]),
        ("Unreachable", counts[UNREACHABLE]),
        ("Total", counts["total"]),
    ]
    parts += [markdown.table(("", "tenants"), rows), ""]
    attention = [(slug, s) for slug, s in seen.items() if s.state in FAILING or s.state == QUARANTINED]
    if attention:
        parts += ["### Needs attention", ""]
        table = markdown.table(
            ("tenant", "verdict", "reason"), [(f"`{slug}`", s.state, md(s.reason or "")) for slug, s in attention]
        )
        parts += [table, ""]
    verified = [slug for slug, s in seen.items() if s.state == VERIFIED]
    if verified:
        parts.append(markdown.fold(f"Verified ({len(verified)})", markdown.code_list(verified), len(verified)))
    return "\n".join(parts)
