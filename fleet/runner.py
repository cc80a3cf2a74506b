"""Everything the runner sees: log lines, workflow commands, masking, outputs and the step summary.

Untrusted text (control-plane errors, tenant answers) reaches the log only through `plain` and the
summary only through `md`, so it can neither start a workflow command nor break the Markdown.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets as _secrets
import signal
import sys
from collections.abc import Iterator, Mapping
from typing import Any

# Exit codes of both steps.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TERMINATED = 0, 1, 2, 143

_SECRETS: list[str] = []

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")
# Inline Markdown that could format, link or leave a table cell; untrusted text never starts a line.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def under_runner() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


MIN_SCRUBBED_PART = 8  # shorter lines of a multi-line secret ("false", "}") are not scrubbed alone


def register_secret(value: str) -> None:
    """Scrub `value` from everything this module emits; mask it, and each of its lines, under a
    runner (a workflow command ends at a newline)."""
    if not value or not value.strip():
        return
    lines = [line for line in value.splitlines() if line.strip()]
    for part in [value, *lines]:
        if part in _SECRETS:
            continue
        if part == value or len(part) >= MIN_SCRUBBED_PART:
            _SECRETS.append(part)
        if under_runner():
            _write(f"::add-mask::{_escape_data(part)}")
    _SECRETS.sort(key=len, reverse=True)


def scrub_values(value: Any) -> Any:
    """A JSON-like structure as strict JSON can hold it: every string scrubbed and its lone surrogates
    escaped (keys included), a number that is not finite null; the structure stays valid."""
    if isinstance(value, str):
        return encodable(scrub(value))
    if isinstance(value, list):
        return [scrub_values(v) for v in value]
    if isinstance(value, dict):
        return {scrub_values(k): scrub_values(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def scrub(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


# What json.loads makes of a "\ud83d" escape with no pair: a str that no UTF-8 writer can encode.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """`text` with each lone UTF-16 surrogate (a message cut mid-emoji, an undecodable byte of argv) as
    its escape `\\udXXX`: UTF-8 can encode the rest, and strict JSON can read it back."""
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def _control(match: re.Match) -> str:
    char = match.group(0)
    return {"\n": "\\n", "\r": "\\r", "\t": " "}.get(char, f"\\x{ord(char):02x}")


def plain(text: object) -> str:
    """Untrusted text as one inert log line: no control characters, no `::` or `##[` to start a command."""
    line = _CONTROL.sub(_control, encodable(scrub(str(text))))
    return line.replace("::", ":\\:").replace("##[", "#\\#[")


def md(text: object) -> str:
    """Untrusted text as inert inline Markdown (table cells included)."""
    line = plain(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", line)


def internal_error(exc: BaseException) -> str:
    """One line for a failure nobody foresaw, safe to print."""
    detail = plain(exc)
    return (
        f"internal error: {type(exc).__name__}: {detail[:200]}" if detail else f"internal error: {type(exc).__name__}"
    )


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _write(line: str) -> None:
    try:
        try:
            sys.stdout.write(line + "\n")
        except UnicodeEncodeError:
            # A stdout that is not UTF-8 (LC_ALL=C, PYTHONIOENCODING=ascii) cannot take `✅`: the line is
            # written with what its encoding cannot hold escaped (nothing was written before the error).
            encoding = getattr(sys.stdout, "encoding", None) or "ascii"
            sys.stdout.write((line + "\n").encode(encoding, "backslashreplace").decode(encoding, "replace"))
        sys.stdout.flush()
    except BrokenPipeError:  # `| head` went away: the step goes on, quietly
        stop_writing()


def stop_writing() -> None:
    """Send what is left of the output to /dev/null, so a closed pipe ends nothing but the output."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def console(text: str) -> str:
    """Text as a person reads it outside a runner: the escapes that keep a runner safe undone."""
    return text.replace(":\\:", "::").replace("#\\#[", "##[")


_DETAILS = re.compile(r"<details><summary>(.*?)</summary>")
_MD_ESCAPED = re.compile(r"\\([\\`*_\[\]|~])")


def console_markdown(markdown: str) -> str:
    """A summary as plain text for a terminal: no Markdown escapes, no HTML."""
    lines = []
    for line in markdown.splitlines():
        if line.strip() == "</details>":
            continue
        line = _DETAILS.sub(r"\1:", line)
        line = _MD_ESCAPED.sub(r"\1", line).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        lines.append(console(line))
    return "\n".join(lines)


def log(line: str) -> None:
    """A line the code composed itself; parts from outside must already have passed `plain`."""
    line = scrub(line)
    _write(line if under_runner() else console(line))


def _command(name: str, message: str) -> None:
    message = scrub(message)
    _write(f"::{name}::{_escape_data(message) if under_runner() else console(message)}")


def notice(message: str) -> None:
    _command("notice", message)


def warning(message: str) -> None:
    _command("warning", message)


def error(message: str) -> None:
    _command("error", message)


def set_outputs(outputs: Mapping[str, str]) -> None:
    """Append step outputs to GITHUB_OUTPUT (multi-line safe); outside a runner, nothing to do."""
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        return
    lines = []
    for name, value in outputs.items():
        value = scrub(str(value))
        delimiter = f"ghadelimiter_{_secrets.token_hex(8)}"
        lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
    try:
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write("".join(lines))
    except OSError as exc:
        warning(f"could not write step outputs to GITHUB_OUTPUT: {plain(exc.strerror or exc)}")


# GitHub refuses a step summary over 1 MiB; the rollout and its verify may append to the same one.
MAX_SUMMARY_BYTES = 480 * 1024
MAX_SUMMARY_LINE = 16 * 1024  # characters
SUMMARY_CUT = "*… the summary is cut here, at the runner's size limit: the report holds everything.*"


def bounded(markdown: str) -> str:
    """The summary within the runner's limits: each line at most MAX_SUMMARY_LINE characters, the whole
    at most MAX_SUMMARY_BYTES, cut at a line with SUMMARY_CUT. The summaries cap their own lists long
    before this; it holds whatever text they quote."""
    kept: list[str] = []
    size = len(SUMMARY_CUT) + 8
    for line in markdown.splitlines():
        if len(line) > MAX_SUMMARY_LINE:
            line = line[: MAX_SUMMARY_LINE - 1] + "…"
        size += len(line.encode("utf-8", "backslashreplace")) + 1
        if size > MAX_SUMMARY_BYTES:
            return "\n".join([*kept, "", SUMMARY_CUT])
        kept.append(line)
    return "\n".join(kept)


def write_summary(markdown: str) -> None:
    """Print the summary to the log (Gitea 1.22 and act do not show summaries) and append it to
    GITHUB_STEP_SUMMARY. A summary that cannot be written is a warning, never a changed verdict."""
    markdown = bounded(scrub(markdown))
    for line in (markdown if under_runner() else console_markdown(markdown)).splitlines():
        _write(line)
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        if under_runner():
            warning("GITHUB_STEP_SUMMARY is not set; the summary above is in the log only")
        return
    try:
        with open(path, "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(markdown.rstrip("\n") + "\n\n")
    except OSError as exc:
        warning(f"could not write the step summary ({plain(exc.strerror or exc)}); it is in the log above")


class Terminated(BaseException):
    """The runner asked the step to stop (SIGTERM, as on a cancelled job)."""


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread, so the report and summary are
    still written; the previous handler is restored after."""

    def handler(signum: int, frame: object) -> None:
        raise Terminated(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
