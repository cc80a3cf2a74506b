"""Small Markdown builders for the step summaries. Cells are trusted only if the caller passed untrusted
text through runner.md first. Every list and table is cut short: the report has all of it, and the runner
refuses a summary over 1 MiB."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from fleet.vocabulary import listed

FOLD_AFTER = 20  # lists longer than this are folded in <details>
MAX_ROWS = 1000  # the summary stays far below the runner's 1 MiB limit; the report has every row
SHOWN = 50  # names shown in one list, calls in one plan
MAX_CELL = 300  # characters of untrusted text in one cell or list item: an error text can run long
MAX_MESSAGE = 2000  # characters of a verdict's message (its ::error:: line has all of it)
MORE = " … and {count} more, see the report"


def clip(text: str, limit: int = MAX_CELL) -> str:
    """Untrusted text cut to `limit` characters, before runner.md escapes it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


def code_list(slugs: Sequence[str]) -> str:
    """`a`, `b`, and past SHOWN names `… and N more, see the report`."""
    return listed([f"`{s}`" for s in slugs], SHOWN, MORE)
