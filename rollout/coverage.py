"""Pure judgement of what a redeploy answer covered. The control plane's `ok` and `stragglers` are not
trusted alone: a tenant is shipped only when its own result says verified_on_target, and a tenant in
scope with no result is a straggler (never a silent skip)."""

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


def assess(
    expected: list[str], answer: dict[str, Any], *, dry_run: bool = False, may_halt: bool = False
) -> tuple[list[Outcome], list[str]]:
    """Outcomes for the tenants one call covered, and notes on results outside them. A tenant with no
    result is a straggler; only when the call failed and the control plane may have halted before
    reaching it (`may_halt`, a fleet call) is its outcome unknown."""
    results: dict[str, dict[str, Any]] = {}
    for result in answer["results"]:
        if result["slug"] in results:
            raise ContractError(f"redeploy answer rejected: two results for slug {show(result['slug'])}")
        results[result["slug"]] = result
    claimed = set(answer.get("stragglers") or ())
    wanted = set(expected)
    notes = [f"result for {slug}, which this call did not cover, ignored" for slug in results if slug not in wanted]
    outcomes = []
    for slug in expected:
        result = results.get(slug)
        phase = result.get("phase") if result else None
        if dry_run:
            outcomes.append(Outcome(slug, PLANNED, phase, (result or {}).get("error")))
        elif result is None and may_halt and not answer["ok"]:
            outcomes.append(Outcome(slug, UNKNOWN, None, "no result: the control plane reported failure"))
        elif result is None:
            outcomes.append(Outcome(slug, STRAGGLER, None, "no result from the control plane"))
        elif result["verified_on_target"] is not True:
            outcomes.append(Outcome(slug, STRAGGLER, phase, reason_of(result)))
        elif slug in claimed:
            outcomes.append(Outcome(slug, STRAGGLER, phase, "the control plane listed it as a straggler"))
        else:
            outcomes.append(Outcome(slug, SHIPPED, phase, None))
    return outcomes, notes


def stragglers(outcomes: list[Outcome]) -> list[str]:
    return [o.slug for o in outcomes if o.outcome == STRAGGLER]


def over_budget(count: int, budget: int) -> bool:
    return count > budget


def tolerance_message(count: int, budget: int) -> str:
    return f"{count} straggler{'s' if count != 1 else ''}, max tolerated {budget}"
