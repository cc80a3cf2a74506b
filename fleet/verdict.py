"""The run's verdict, decided once, from what happened: the rollout's outcome and verify's, either of
which may be absent. Both steps call `run_verdict` and write its answer at the top of the report; the
action's outputs and the verify step read it there and never decide it again."""

from __future__ import annotations

from dataclasses import dataclass

from fleet.vocabulary import Follow, RolloutVerdict, VerifyVerdict

# The rollout verdicts that hold: the fleet shipped, or nothing was meant to move (a dry run, a newer run).
HOLDING = frozenset(
    {RolloutVerdict.SHIPPED, RolloutVerdict.SHIPPED_WITH_QUARANTINE, RolloutVerdict.PLANNED, RolloutVerdict.SUPERSEDED}
)
# The fleet shipped, so verify checks it; a chronic straggler fails the run all the same.
SHIPPING = frozenset(
    {RolloutVerdict.SHIPPED, RolloutVerdict.SHIPPED_WITH_QUARANTINE, RolloutVerdict.SHIPPED_WITH_CHRONIC}
)


@dataclass(frozen=True)
class RolloutEnd:
    """How the rollout ended: its verdict and message, whether a real call went out (`touched`: the fleet
    may have moved), and whether this run knows how to reach the tenants (a tenant URL template)."""

    verdict: RolloutVerdict
    message: str
    touched: bool
    tenants_known: bool = True


@dataclass(frozen=True)
class VerifyEnd:
    verdict: VerifyVerdict
    message: str


@dataclass(frozen=True)
class RunVerdict:
    """The run's verdict and its message (the step's whose verdict stands), `ok`, what the rollout's
    outcome calls for (`follow`, kept in the report for a verify that runs later), and what this run
    starts next (`next`: the follow-up, when the tenants can be reached)."""

    verdict: RolloutVerdict | VerifyVerdict
    message: str
    ok: bool
    follow: Follow = Follow.NONE
    next: Follow = Follow.NONE


def run_verdict(rollout: RolloutEnd | None, verify: VerifyEnd | None) -> RunVerdict:
    """`ok` when the rollout (if there was one) holds and verify (if it ran) passed. The verdict is
    verify's when it did not pass, else the rollout's, else verify's (verify run on its own)."""
    if rollout is None:
        if verify is None:
            raise ValueError("a run's verdict needs the rollout's outcome, verify's, or both")
        return RunVerdict(verify.verdict, verify.message, verify.verdict == VerifyVerdict.PASSED)
    follow = follow_up(rollout.verdict, rollout.touched)
    following = follow if rollout.tenants_known else Follow.NONE
    ok = rollout.verdict in HOLDING
    if verify is None:
        return RunVerdict(rollout.verdict, rollout.message, ok, follow, following)
    if verify.verdict != VerifyVerdict.PASSED:
        return RunVerdict(verify.verdict, verify.message, False, follow, following)
    return RunVerdict(rollout.verdict, rollout.message, ok, follow, following)


def follow_up(verdict: RolloutVerdict, touched: bool) -> Follow:
    """Check a fleet that shipped; survey one that a real call touched before the rollout failed, to
    report who runs which build; nothing after a dry run, a newer run's, or a cancelled job (which
    starts nothing new)."""
    if verdict in SHIPPING:
        return Follow.CHECK
    if verdict in HOLDING or verdict == RolloutVerdict.CANCELLED or not touched:
        return Follow.NONE
    return Follow.SURVEY
