"""Pure classification of what a tenant answered, by the contract's verdict table."""

from __future__ import annotations

from dataclasses import dataclass

from fleet import contract
from fleet.contract import ContractError
from fleet.forge import same_commit
from fleet.tenant import Reply, health_problem
from fleet.vocabulary import Outcome, State, counted, listed

# A tenant whose state is one of these is done: it is not polled again.
DONE = frozenset({State.VERIFIED, State.SUPERSEDED})
ANSWERED = frozenset(set(State) - {State.UNREACHABLE})  # a survey is done with a tenant once it answered


@dataclass(frozen=True)
class Seen:
    state: State
    reason: str | None = None
    build: str | None = None  # the git_sha the tenant reported, when it did

    def record(self, slug: str) -> dict[str, object]:
        return {"slug": slug, "state": self.state, "reason": self.reason, "build": self.build}


def quarantined() -> Seen:
    return Seen(State.QUARANTINED, "quarantined by the rollout: needs individual recovery")


def classify(health: Reply, build: Reply, expected_sha: str, head: str | None = None) -> Seen:
    """healthz 2xx and buildinfo on target: verified; on the branch's newer `head`: superseded; else
    stale, unhealthy or unreachable, with why. The build is kept whenever buildinfo told it, so a
    survey can say what an unhealthy tenant runs."""
    sha, problem = _build(build)
    problem_of_health = health_problem(health)
    if problem_of_health:
        return Seen(*problem_of_health, sha)
    if problem:
        return problem
    assert sha is not None
    if sha.startswith(expected_sha.lower()):
        return Seen(State.VERIFIED, None, sha)
    return stale_or_superseded(sha, expected_sha, head)


def _build(build: Reply) -> tuple[str | None, Seen | None]:
    """The git_sha buildinfo reports, or the verdict its answer settles (unreachable, unhealthy)."""
    if build.error:
        return None, Seen(State.UNREACHABLE, f"buildinfo: {build.error}")
    if build.status != 200:
        return None, Seen(State.UNHEALTHY, f"buildinfo answered HTTP {build.status}")
    if build.oversize:
        return None, Seen(State.UNHEALTHY, "buildinfo body too large")
    try:
        info = contract.validate("buildinfo", contract.parse_json(build.body, "buildinfo"), "buildinfo rejected")
    except ContractError as exc:
        return None, Seen(State.UNHEALTHY, str(exc))
    return info["git_sha"].lower(), None


def stale_or_superseded(sha: str, expected_sha: str, head: str | None) -> Seen:
    """A healthy tenant off the expected build: superseded when it serves exactly the branch's head (the
    fleet is ahead, not behind), stale otherwise. Without a head, never excused."""
    if head and not same_commit(head, expected_sha) and same_commit(sha, head):
        return Seen(State.SUPERSEDED, f"serves the branch's newer head {sha[:12]}, expected {expected_sha[:12]}", sha)
    return Seen(State.STALE, f"serves build {sha[:12]}, expected {expected_sha[:12]}", sha)


def next_step(seen: Seen, outcome: Outcome | None = None) -> str | None:
    """What to do about a tenant, from its state and (in a survey) what the rollout did to it."""
    if seen.state.passing:
        return None
    if seen.state == State.QUARANTINED or outcome in (Outcome.STRAGGLER, Outcome.QUARANTINED, Outcome.UNKNOWN):
        return "recover: once the tenant's fault is fixed, redeploy strictly (slugs, max-stragglers 0)"
    if outcome == Outcome.NOT_ATTEMPTED:
        return (
            "roll forward: never reached by the rollout, nothing to fix on the tenant; "
            "run the rollout again for the tenants (slugs)"
        )
    if seen.state == State.STALE:
        return "investigate: healthy but on another build; then redeploy (slugs)"
    if seen.state == State.UNHEALTHY:
        return "investigate: check the health endpoint and logs; then redeploy (slugs)"
    return "investigate: check that the tenant runs and is reachable (DNS, network, TLS)"


def counts(seen: dict[str, Seen]) -> dict[str, int]:
    out = {str(state): 0 for state in State}
    for s in seen.values():
        out[s.state] += 1
    out["failed"] = sum(1 for s in seen.values() if s.state.failing)
    out["total"] = len(seen)
    return out


@dataclass(frozen=True)
class Verdict:
    """Verify's verdict on its whole scope: whether it passed, the line that says so, and for a pass
    that verified no tenant, the warning that says it."""

    ok: bool
    message: str
    caution: str = ""


def decide(
    seen: dict[str, Seen],
    expected_sha: str,
    *,
    source: str,
    survey: str = "",
    outcomes: dict[str, Outcome] | None = None,
) -> Verdict:
    """Pass only when no tenant failed and at least one was verified, or when every tenant in scope is
    quarantined or superseded (a pass that proves little, so it carries a warning). A scope with no
    tenant proves nothing, and a survey follows a rollout that failed: both fail."""
    if not seen:
        refusal = f"refusing to mark the deploy verified: {source} names no tenant"
        return Verdict(False, refusal + (f"; {survey}" if survey else ""))
    if survey:
        return Verdict(False, _survey_message(survey, seen, outcomes or {}))
    failing = [(slug, s) for slug, s in seen.items() if s.state.failing]
    if failing:
        named = listed([f"{slug} ({s.state}: {s.reason})" for slug, s in failing])
        return Verdict(False, f"{len(failing)} of {counted(len(seen), 'tenant')} failed verification: {named}")
    return _passed(seen, expected_sha[:12])


def _passed(seen: dict[str, Seen], sha: str) -> Verdict:
    """No tenant failed: a pass, with a warning when none was verified."""
    tally = counts(seen)
    held = ""
    if tally[State.SUPERSEDED]:
        held += f"; {tally[State.SUPERSEDED]} already on the branch's newer head (superseded)"
    if tally[State.QUARANTINED]:
        held += f"; {tally[State.QUARANTINED]} quarantined"
    if tally[State.VERIFIED]:
        verified = tally[State.VERIFIED]
        every = "the 1 tenant" if verified == 1 else f"all {verified} tenants"
        return Verdict(True, f"{every} verified on {sha}{held}")
    return Verdict(
        True,
        f"no tenant verified on {sha}{held}",
        f"nothing was verified: every tenant in scope is quarantined or superseded ({listed(list(seen))})",
    )


def _survey_message(survey: str, seen: dict[str, Seen], outcomes: dict[str, Outcome]) -> str:
    on_target = sum(1 for s in seen.values() if s.state.passing)
    message = f"survey after a failed rollout ({survey}): "
    message += f"{on_target} of {counted(len(seen), 'tenant')} on the target build"
    if outcomes:  # what the rollout did to each is known only from its report
        untouched = sum(1 for slug in seen if outcomes.get(slug) == Outcome.NOT_ATTEMPTED)
        message += f", {untouched} never reached by the rollout"
    return message + "; the step stays failed"
