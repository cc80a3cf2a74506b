"""Pure judgement of what a redeploy answer covered. The control plane's `ok` and `stragglers` are not
trusted alone: a tenant is redeployed only when its own row says verified_on_target, a tenant in scope
with no row is a straggler (never a silent skip), a row outside the call's scope means the control
plane widened the call, and a row without a slug names no tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet.contract import BadAnswer, show, unnamed
from fleet.vocabulary import Outcome

UNPROVEN = "the control plane's row has no verified_on_target, so nothing proves it runs the target"
UNNAMED = "no row of its own, and the answer has a row without a slug that may be its: its outcome is unknown"


@dataclass(frozen=True)
class Tenant:
    """One tenant's outcome in the rollout and why; `step` is the action's own call that covered it
    (`canary`, `batch 2/3`, `fleet`), `cp_phase` the control plane's free-form label for its row."""

    slug: str
    outcome: Outcome
    reason: str | None = None
    step: str | None = None
    cp_phase: str | None = None

    def record(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "outcome": self.outcome,
            "phase": self.step,
            "cp_phase": self.cp_phase,
            "reason": self.reason,
        }


def reason_of(row: dict[str, Any]) -> str:
    """Why a tenant was not verified, from the fields its row carries."""
    if row.get("error"):
        return str(row["error"])
    parts = []
    if row.get("ssm_status") not in (None, "Success"):
        parts.append(f"ssm status {row['ssm_status']}")
    if row.get("ssm_exit_code") not in (None, 0):
        parts.append(f"exit code {row['ssm_exit_code']}")
    if row.get("healthz_ok") is False:
        parts.append("healthz failed")
    return ", ".join(parts) or "not verified on target"


def unproven(row: dict[str, Any], answer: dict[str, Any]) -> str:
    """Why a row without verified_on_target proves nothing, with what the control plane said beside it:
    the row's error, and the call's when it failed (an older control plane sends no proof at all)."""
    said = []
    if row.get("error"):
        said.append(f"row error: {show(row['error'])}")
    if not answer["ok"]:
        said.append(f"the call failed: {show(answer['error'])}" if answer.get("error") else "the call failed")
    return UNPROVEN + (f" ({'; '.join(said)})" if said else "")


def assess(
    expected: list[str],
    answer: dict[str, Any],
    *,
    step: str | None = None,
    dry_run: bool = False,
    may_halt: bool = False,
) -> tuple[list[Tenant], list[str]]:
    """Outcomes for the tenants one call (`step`) covered, and the tenants it answered for outside them
    (in answer order). A tenant with no row is a straggler; only when the call failed and the control
    plane may have halted before reaching it (`may_halt`, a fleet call), or when a row without a slug
    may be its, is its outcome unknown."""
    rows: dict[str, dict[str, Any]] = {}
    for row in answer["results"]:
        if not row.get("slug"):
            continue  # names no tenant: `unnamed` tells the caller
        if row["slug"] in rows:
            raise BadAnswer(f"redeploy answer rejected: two rows for slug {show(row['slug'])}")
        rows[row["slug"]] = row
    claimed = set(answer.get("stragglers") or ())
    wanted = set(expected)
    outside = [slug for slug in rows if slug not in wanted]
    nameless = bool(unnamed(answer["results"]))
    tenants = []
    for slug in expected:
        row = rows.get(slug)
        outcome, reason = _judge(row, slug in claimed, answer, dry_run, may_halt, nameless)
        tenants.append(Tenant(slug, outcome, reason, step, row.get("phase") if row else None))
    return tenants, outside


def _judge(
    row: dict[str, Any] | None, claimed: bool, answer: dict[str, Any], dry_run: bool, may_halt: bool, nameless: bool
) -> tuple[Outcome, str | None]:
    if dry_run:
        return Outcome.DRY_RUN, (row or {}).get("error")
    if row is None:
        if nameless:
            return Outcome.UNKNOWN, UNNAMED
        if may_halt and not answer["ok"]:
            return Outcome.UNKNOWN, "no row: the control plane reported failure"
        return Outcome.STRAGGLER, "no row from the control plane"
    if "verified_on_target" not in row:
        return Outcome.STRAGGLER, unproven(row, answer)
    if row["verified_on_target"] is not True:
        return Outcome.STRAGGLER, reason_of(row)
    if claimed:
        return Outcome.STRAGGLER, "the control plane listed it as a straggler"
    return Outcome.REDEPLOYED, None


def over_budget(count: int, budget: int) -> bool:
    return count > budget


def tolerance_message(count: int, budget: int) -> str:
    return f"{count} straggler{'s' if count != 1 else ''}, max tolerated {budget}"
