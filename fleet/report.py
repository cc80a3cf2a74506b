"""The JSON report: one file that holds the plan, every control-plane call, each tenant's outcome and
the verdicts. Written atomically, so a reader never sees half a file."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from fleet import contract, runner

DEFAULT_NAME = "fleet-rollout-report.json"


def default_path() -> str:
    """A fresh path under RUNNER_TEMP on a runner, else ./fleet-rollout-report.json."""
    temp = os.environ.get("RUNNER_TEMP")
    if temp:
        return str(Path(temp) / f"fleet-rollout-report-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.json")
    return DEFAULT_NAME


def refused_path(path: str) -> str:
    """Where a run that refused its inputs writes its report when `path` holds an earlier one."""
    target = Path(path)
    return str(target.with_name(f"{target.stem}.refused{target.suffix or '.json'}"))


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write(path: str, report: dict[str, Any]) -> bool:
    """Write atomically; on failure warn and return False (the verdict stands either way)."""
    text = _strict_json(report)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".report-", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        runner.warning(f"could not write the report {runner.plain(path)}: {runner.plain(exc.strerror or exc)}")
        return False
    return True


def _strict_json(report: dict[str, Any]) -> str:
    """The report as strict JSON, which verify reads back: no NaN or Infinity, no lone surrogate. Should
    it hold what JSON cannot (nesting too deep to walk), the verdict and the message are still written."""
    try:
        return json.dumps(runner.scrub_values(report), indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (ValueError, TypeError, RecursionError) as exc:
        cause = f"the full report could not be written as JSON ({type(exc).__name__})"
        runner.warning(cause)
        message = runner.scrub_values(str(report.get("message", "")))
        least = {"schema_version": 1, "ok": report.get("ok") is True, "message": f"{message} ({cause})"}
        return json.dumps(least, indent=2) + "\n"


def read(path: str) -> dict[str, Any]:
    """Read and validate a report; a bad one is bad input naming the file (a step reads it as input)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise contract.BadInput(f"cannot read report {contract.show(path)}: {exc.strerror}") from None
    doc = contract.parse_json(raw, f"report {contract.show(path)}")
    checked: dict[str, Any] = contract.validate("report", doc, f"report {contract.show(path)} rejected")
    return checked
