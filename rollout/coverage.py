"""Pure judgement of what a redeploy answer covered. The control plane's `ok` and `stragglers` are not
trusted alone: a tenant is shipped only when its own row says verified_on_target, a tenant in scope
with no row is a straggler (never a silent skip), and a row outside the call's scope means the control
plane widened the call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet.contract import ContractError, show

SHIPPED = "shipped"
STRAGGLER = "straggler"
NOT_ATTEMPTED = "not-attempted"
UNKNOWN = "unknown"
PLANNED = "planned"


@dataclass
class Outcome:
    slug: str
    outcome: str
    phase: str | None = None
    reason: str | None = None

    def record(self) -> dict[str, Any]:
        return {"slug": self.slug, "outcome": self.outcome, "phase": self.phase, "reason": self.reason}


def reason_of(result: dict[str, Any]) -> str:
    """Why a tenant was not verified, from the fields its result carries."""
    if result.get("error"):
        return str(result["error"])
    parts = []
    if result.get("ssm_status") not in (None, "Success"):
        parts.append(f"ssm status {result['ssm_status']}")
    if result.get("ssm_exit_code") not in (None, 0):
        parts.append(f"exit code {result['ssm_exit_code']}")
    if result.get("healthz_ok") is False:
        parts.append("healthz failed")
    return ", ".join(parts) or "not verified on target"


UNPROVEN = "the control plane's row has no verified_on_target, so nothing proves it runs the target"


def assess(
    expected: list[str], answer: dict[str, Any], *, dry_run: bool = False, may_halt: bool = False
) -> tuple[list[Outcome], list[str]]:
    """Outcomes for the tenants one call covered, and the tenants it answered for outside them (in
    answer order). A tenant with no row is a straggler; only when the call failed and the control plane
    may have halted before reaching it (`may_halt`, a fleet call) is its outcome unknown."""
    rows: dict[str, dict[str, Any]] = {}
    for row in answer["results"]:
        if row["slug"] in rows:
            raise ContractError(f"redeploy answer rejected: two rows for slug {show(row['slug'])}")
        rows[row["slug"]] = row
    claimed = set(answer.get("stragglers") or ())
    wanted = set(expected)
    outside = [slug for slug in rows if slug not in wanted]
    outcomes = []
    for slug in expected:
        row = rows.get(slug)
        phase = row.get("phase") if row else None
        if dry_run:
            outcomes.append(Outcome(slug, PLANNED, phase, (row or {}).get("error")))
        elif row is None and may_halt and not answer["ok"]:
            outcomes.append(Outcome(slug, UNKNOWN, None, "no row: the control plane reported failure"))
        elif row is None:
            outcomes.append(Outcome(slug, STRAGGLER, None, "no row from the control plane"))
        elif "verified_on_target" not in row:
            outcomes.append(Outcome(slug, STRAGGLER, phase, UNPROVEN))
        elif row["verified_on_target"] is not True:
            outcomes.append(Outcome(slug, STRAGGLER, phase, reason_of(row)))
        elif slug in claimed:
            outcomes.append(Outcome(slug, STRAGGLER, phase, "the control plane listed it as a straggler"))
        else:
            outcomes.append(Outcome(slug, SHIPPED, phase, None))
    return outcomes, outside


def stragglers(outcomes: list[Outcome]) -> list[str]:
    return [o.slug for o in outcomes if o.outcome == STRAGGLER]


def over_budget(count: int, budget: int) -> bool:
    return count > budget


def tolerance_message(count: int, budget: int) -> str:
    return f"{count} straggler{'s' if count != 1 else ''}, max tolerated {budget}"
