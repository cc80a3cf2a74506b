"""Pure classification of what a tenant answered, by the contract's verdict table."""

from __future__ import annotations

from dataclasses import dataclass

from fleet import contract
from fleet.contract import ContractError
from fleet.tenant import Reply, health_problem

VERIFIED = "verified"
QUARANTINED = "quarantined"
STALE = "stale"
UNHEALTHY = "unhealthy"
UNREACHABLE = "unreachable"
STATES = (VERIFIED, QUARANTINED, STALE, UNHEALTHY, UNREACHABLE)
FAILING = (STALE, UNHEALTHY, UNREACHABLE)


@dataclass(frozen=True)
class Seen:
    state: str
    reason: str | None = None
    build: str | None = None  # the git_sha the tenant reported, when it did

    def record(self, slug: str) -> dict:
        return {"slug": slug, "state": self.state, "reason": self.reason, "build": self.build}


def quarantined() -> Seen:
    return Seen(QUARANTINED, "quarantined by the rollout: needs individual recovery")


def classify_health(health: Reply) -> Seen | None:
    """The verdict healthz alone settles (unreachable, unhealthy), or None when it is 2xx."""
    problem = health_problem(health)
    return Seen(*problem) if problem else None


def classify(health: Reply, build: Reply, expected_sha: str) -> Seen:
    """healthz 2xx and buildinfo on target: verified; else stale, unhealthy or unreachable, with why."""
    settled = classify_health(health)
    if settled:
        return settled
    if build.error:
        return Seen(UNREACHABLE, f"buildinfo: {build.error}")
    if build.status != 200:
        return Seen(UNHEALTHY, f"buildinfo answered HTTP {build.status}")
    if build.oversize:
        return Seen(UNHEALTHY, "buildinfo body too large")
    try:
        info = contract.validate("buildinfo", contract.parse_json(build.body, "buildinfo"), "buildinfo rejected")
    except ContractError as exc:
        return Seen(UNHEALTHY, str(exc))
    sha = info["git_sha"].lower()
    if sha.startswith(expected_sha.lower()):
        return Seen(VERIFIED, None, sha)
    return Seen(STALE, f"serves build {sha[:12]}, expected {expected_sha[:12]}", sha)


def counts(seen: dict[str, Seen]) -> dict[str, int]:
    out = {state: 0 for state in STATES}
    for s in seen.values():
        out[s.state] += 1
    out["failed"] = sum(out[s] for s in FAILING)
    out["total"] = len(seen)
    return out
