"""Pure judgement of what a redeploy answer covered. The control plane's `ok` and `stragglers` are not
trusted alone: a tenant is redeployed only when its own row says verified_on_target, a tenant in scope
with no row is a straggler (never a silent skip), and a row outside the call's scope means the control
plane widened the call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet.contract import ContractError, show
from fleet.vocabulary import Outcome

UNPROVEN = "the control plane's row has no verified_on_target, so nothing proves it runs the target"


@dataclass(frozen=True)
class Tenant:
    """One tenant's outcome in the rollout, with the phase the control plane named and why."""

    slug: str
    outcome: Outcome
    phase: str | None = None
    reason: str | None = None

    def record(self) -> dict[str, Any]:
        return {"slug": self.slug, "outcome": self.outcome, "phase": self.phase, "reason": self.reason}


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


def assess(
    expected: list[str], answer: dict[str, Any], *, dry_run: bool = False, may_halt: bool = False
) -> tuple[list[Tenant], list[str]]:
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
    return [
        _judge(slug, rows.get(slug), slug in claimed, answer["ok"], dry_run, may_halt) for slug in expected
    ], outside


def _judge(slug: str, row: dict[str, Any] | None, claimed: bool, ok: bool, dry_run: bool, may_halt: bool) -> Tenant:
    phase = row.get("phase") if row else None
    if dry_run:
        return Tenant(slug, Outcome.DRY_RUN, phase, (row or {}).get("error"))
    if row is None:
        if may_halt and not ok:
            return Tenant(slug, Outcome.UNKNOWN, None, "no row: the control plane reported failure")
        return Tenant(slug, Outcome.STRAGGLER, None, "no row from the control plane")
    if "verified_on_target" not in row:
        return Tenant(slug, Outcome.STRAGGLER, phase, UNPROVEN)
    if row["verified_on_target"] is not True:
        return Tenant(slug, Outcome.STRAGGLER, phase, reason_of(row))
    if claimed:
        return Tenant(slug, Outcome.STRAGGLER, phase, "the control plane listed it as a straggler")
    return Tenant(slug, Outcome.REDEPLOYED, phase, None)


def over_budget(count: int, budget: int) -> bool:
    return count > budget


def tolerance_message(count: int, budget: int) -> str:
    return f"{count} straggler{'s' if count != 1 else ''}, max tolerated {budget}"
