"""Small Markdown builders for the step summaries. Cells are trusted only if the caller passed untrusted
text through runner.md first."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

FOLD_AFTER = 20  # lists longer than this are folded in <details>
MAX_ROWS = 1000  # the summary stays far below the runner's 1 MiB limit; the report has every row


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    rows = list(rows)
    for row in rows[:MAX_ROWS]:
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    if len(rows) > MAX_ROWS:
        lines.append(f"| … {len(rows) - MAX_ROWS} more rows in the report |" + " |" * (len(headers) - 1))
    return "\n".join(lines)


def details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def fold(summary: str, body: str, count: int) -> str:
    """Show short content as is; fold long content."""
    return details(summary, body) if count > FOLD_AFTER else f"{summary}:\n\n{body}"


def code_list(slugs: Iterable[str]) -> str:
    return ", ".join(f"`{s}`" for s in slugs)
