"""The words both steps use, one per idea, as they appear in the report, the outputs and the summaries.

A tenant's rollout outcome is what the control plane did to it; its state is what verify saw on it; the
rollout's verdict is how the whole rollout ended, verify's verdict how its check ended, and the run's
verdict (fleet.verdict) how both did. A straggler is a tenant that failed its redeploy; it becomes
quarantined when the budget allows it and the rollout ships.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum


class Word(str, Enum):
    """An enum whose members are their string values wherever they are printed or dumped."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class RolloutVerdict(Word):
    SHIPPED = "shipped"
    SHIPPED_WITH_QUARANTINE = "shipped-with-quarantine"
    # shipped, but a quarantined tenant reached max-quarantine-streak: the tolerance turned chronic
    SHIPPED_WITH_CHRONIC = "shipped-with-chronic-straggler"
    PLANNED = "planned"  # a dry run
    SUPERSEDED = "superseded"  # the branch moved on: nothing deployed, the newer run deploys
    CANARY_FAILED = "canary-failed"
    SYSTEMIC = "systemic"  # more stragglers than the budget
    FAILED = "failed"
    CANNOT_SCOPE = "cannot-scope"  # the scope probe showed a control plane that ignores or refuses only_slugs
    WIDENED = "widened"  # a real call answered for tenants outside its only_slugs
    HALTED = "halted"  # the kill switch
    CANCELLED = "cancelled"  # the job was cancelled: the runner's SIGINT or SIGTERM stopped the rollout


class Mode(Word):
    """How the rollout drives the control plane."""

    SCOPED = "scoped"  # the action drives: the canary and each batch are scoped calls
    FLEET = "fleet"  # one call, the control plane drives


class Follow(Word):
    """What follows the rollout: verify checks the fleet it shipped, surveys the fleet it touched and
    then failed, or nothing."""

    CHECK = "check"
    SURVEY = "survey"
    NONE = "none"


class VerifyMode(Word):
    """How verify ran: a check of a shipped fleet, or a survey of who runs which build."""

    VERIFY = "verify"
    SURVEY = "survey"


class VerifyVerdict(Word):
    """How verify ended on its whole scope; a survey always fails, since the rollout before it did."""

    PASSED = "passed"
    FAILED = "failed"
    SURVEY = "survey"


class Outcome(Word):
    """What the rollout did to one tenant."""

    REDEPLOYED = "redeployed"  # the control plane's row says verified_on_target
    QUARANTINED = "quarantined"  # a straggler the budget allowed, on a rollout that shipped
    STRAGGLER = "straggler"  # failed its redeploy (no proof it runs the target)
    NOT_ATTEMPTED = "not-attempted"  # still on its old build
    UNKNOWN = "unknown"  # the call broke off: it may or may not have moved
    DRY_RUN = "dry-run"  # in the plan of a dry run


class State(Word):
    """What verify saw on one tenant, by the contract's verdict table."""

    VERIFIED = "verified"
    QUARANTINED = "quarantined"
    SUPERSEDED = "superseded"  # serves the deployed branch's newer head
    STALE = "stale"
    UNHEALTHY = "unhealthy"
    UNREACHABLE = "unreachable"

    @property
    def failing(self) -> bool:
        return self in (State.STALE, State.UNHEALTHY, State.UNREACHABLE)

    @property
    def passing(self) -> bool:
        return self in (State.VERIFIED, State.SUPERSEDED)


def counted(count: int, noun: str) -> str:
    """`1 tenant`, `2 tenants`: a count with its noun in the right number."""
    return f"{count} {noun}{'' if count == 1 else 'es' if noun.endswith('ch') else 's'}"


def listed(items: Sequence[str], limit: int = 10, more: str = " and {count} more") -> str:
    """`a, b, c`, and past `limit` items `a, b and N more` (`more` words the rest): a list named in one line."""
    rest = more.format(count=len(items) - limit) if len(items) > limit else ""
    return ", ".join(items[:limit]) + rest
