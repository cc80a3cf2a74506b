"""`python -m fleet.finish REPORT [VERIFY_OUTCOME]`: the action's outputs, read from the run's report.
The run's verdict is the report's own `ok`, written by the last step that wrote the report; this reads
it and decides nothing. One fact only the runner knows is added: a verify step that failed or was
cancelled without writing its section (it never started, or was killed) leaves the run not ok."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from fleet import report, runner
from fleet.contract import ContractError

UNSAID = ("failure", "cancelled")  # a verify step's outcomes that may come without a word in the report


def outputs(doc: dict[str, Any] | None, path: str, verify_outcome: str = "") -> dict[str, str]:
    """The action's outputs from the report (`None`: there is none to read), which its schema checked."""
    doc = doc or {}
    verify = doc.get("verify") or {}
    stragglers = [s for s in doc.get("stragglers") or [] if isinstance(s, str)]
    ok = doc.get("ok") is True and not (not verify and verify_outcome in UNSAID)
    counts = verify.get("counts") or {}
    return {
        "ok": "true" if ok else "false",
        "superseded": str((doc.get("rollout") or {}).get("superseded") or ""),
        "stragglers": json.dumps(stragglers),
        "quarantined-count": str(len(stragglers)),
        # Empty when verify did not run: no section, no counts.
        "verified-count": str(counts.get("verified", "")),
        "failed-count": str(counts.get("failed", "")),
        "report-path": path,
        "chronic": _chronic(doc),
    }


def _chronic(doc: dict[str, Any]) -> str:
    """The tenants at or over max-quarantine-streak, as the quarantine ledger recorded them; [] without one."""
    ledger = doc.get("ledger") or {}
    return json.dumps(list(ledger.get("chronic") or []))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path, verify_outcome = args[0], (args[1] if len(args) > 1 else "")
    try:
        doc: dict[str, Any] | None = report.read(path)
    except ContractError as exc:
        runner.warning(f"the run's outputs say ok=false: {runner.plain(str(exc))}")
        doc = None
    runner.set_outputs(outputs(doc, path, verify_outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
