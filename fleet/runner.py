"""Everything the runner sees: log lines, workflow commands, masking, outputs and the step summary.

Untrusted text (control-plane errors, tenant answers) reaches the log only through `plain` and the
summary only through `md`, so it can neither start a workflow command nor break the Markdown.
"""

from __future__ import annotations

import base64
import contextlib
import html
import math
import os
import re
import secrets as _secrets
import signal
import sys
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

# Exit codes of both steps; a step stopped by a signal exits as a shell reports it, 128 + the signal.
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_TERMINATED = 0, 1, 2, 143
EXIT_INTERRUPTED = 130  # SIGINT

_SECRETS: list[str] = []

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\x85]")
# Inline Markdown that could format, link or leave a table cell; untrusted text never starts a line.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def under_runner() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


MIN_SCRUBBED_PART = 8  # shorter lines of a multi-line secret ("false", "}") are not scrubbed alone


def register_secret(value: str) -> None:
    """Scrub `value`, and the forms a server may echo it back in, from everything this module emits;
    mask it, and each of its lines, under a runner (a workflow command ends at a newline)."""
    if not value or not value.strip():
        return
    for part in [value, *(line for line in value.splitlines() if line.strip())]:
        _mask(part, whole=part == value)
    # Scrubbed only: every line this module writes passes `scrub`, and the runner's mask list stays short.
    _SECRETS.extend(form for form in echoed_forms(value) if form not in _SECRETS and len(form) >= MIN_SCRUBBED_PART)
    _SECRETS.sort(key=len, reverse=True)


def _mask(part: str, whole: bool) -> None:
    """Scrub `part` (the whole secret, or one line long enough to be told apart) and mask it once."""
    if part in _SECRETS:
        return
    if whole or len(part) >= MIN_SCRUBBED_PART:
        _SECRETS.append(part)
    if under_runner():
        _write(f"::add-mask::{_escape_data(part)}")


def echoed_forms(value: str) -> set[str]:
    """`value` as an error page may quote it: URL-encoded, HTML-escaped, or in base64 (standard or
    URL-safe, padded or not), alone or as "Bearer <value>". Base64 of a longer text holds the value's
    bytes at one of 3 alignments: at each, the groups wholly inside it (all but a few characters at
    each end, which cannot be matched without knowing their neighbours)."""
    forms = {quote(value, safe=""), quote(value), quote_plus(value)}
    escaped = html.escape(value, quote=False)
    for apostrophe in ("'", "&#x27;", "&#39;"):
        for mark in ('"', "&quot;", "&#34;"):
            forms.add(escaped.replace("'", apostrophe).replace('"', mark))
    for text in (value.encode(), f"Bearer {value}".encode()):
        for encoded in (base64.b64encode(text), *_aligned_base64(text)):
            std = encoded.decode()
            forms.update({std, std.rstrip("="), std.translate(_URLSAFE), std.translate(_URLSAFE).rstrip("=")})
    forms.discard(value)
    return forms


_URLSAFE = str.maketrans("+/", "-_")


def _aligned_base64(data: bytes) -> list[bytes]:
    wholes = [data[skip:] for skip in range(3)]
    return [base64.b64encode(part[: len(part) - len(part) % 3]) for part in wholes if len(part) >= 3]


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


def _control(match: re.Match[str]) -> str:
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
    """The runner asked the step to stop: a cancelled job gets SIGINT, then SIGTERM 7.5 s later."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        self.code = EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_TERMINATED  # 128 + the signal
        super().__init__(f"the job was cancelled ({self.signal})")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_STOPPED: list[Terminated] = []  # the first signal this process got inside a guard


def stopped() -> Terminated | None:
    """The signal that asked this process to stop, if one came: nothing new may start after it."""
    return _STOPPED[0] if _STOPPED else None


class SignalGuard:
    """Until `hold` is called, the first SIGINT or SIGTERM raises Terminated in the main thread; after
    that a signal is only noted (`stopped`), so a second one never cuts the report short."""

    def __init__(self) -> None:
        self.raising = True

    def hold(self) -> None:
        self.raising = False

    def handle(self, signum: int, frame: object) -> None:
        if not _STOPPED:
            _STOPPED.append(Terminated(signum))
        if self.raising:
            self.raising = False
            raise Terminated(signum)


@contextlib.contextmanager
def signals_stop() -> Iterator[SignalGuard]:
    """Within the block, SIGINT and SIGTERM are handled by a SignalGuard; the previous handlers are
    restored after."""
    guard = SignalGuard()
    previous = {signum: signal.signal(signum, guard.handle) for signum in STOP_SIGNALS}
    try:
        yield guard
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
