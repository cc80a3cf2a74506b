"""Driving the control plane: the canary, its soak, then batch after batch while the budget holds
(`scoped`), or one call that the control plane drives (`fleet`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet import runner
from fleet.cp import ControlPlane
from fleet.tenant import REQUEST_SECONDS, Tenants, health_problem
from rollout import coverage
from rollout import plan as planning
from rollout.coverage import NOT_ATTEMPTED, SHIPPED, STRAGGLER, UNKNOWN, Outcome
from rollout.plan import Plan, Settings

# Verdicts of the rollout step.
SHIPPED_ALL = "shipped"
QUARANTINED = "shipped-with-quarantine"
CANARY_FAILED = "canary-failed"
SYSTEMIC = "systemic"
FAILED = "failed"
PLANNED = "planned"


@dataclass
class Result:
    outcomes: dict[str, Outcome]  # by slug, in scope order
    verdict: str = SHIPPED_ALL
    message: str = ""
    notes: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)  # tenants of the call under way

    @property
    def ok(self) -> bool:
        return self.verdict in (SHIPPED_ALL, QUARANTINED, PLANNED)

    def stragglers(self) -> list[str]:
        return coverage.stragglers(list(self.outcomes.values()))

    @classmethod
    def for_plan(cls, plan: Plan) -> Result:
        result = cls({slug: Outcome(slug, NOT_ATTEMPTED, None, "not attempted") for slug in plan.scope})
        result.notes.extend(plan.notes)
        return result

    def fail(self, cause: str) -> None:
        """The run broke off: tenants of the call under way have an unknown outcome."""
        self.verdict = FAILED
        self.message = cause
        for slug in self.in_flight:
            if self.outcomes[slug].outcome == NOT_ATTEMPTED:
                self.outcomes[slug] = Outcome(slug, UNKNOWN, None, f"outcome unknown: {cause}")
        self.leave(list(self.outcomes), "not attempted: the rollout broke off")

    def take(self, outcomes: list[Outcome]) -> None:
        for outcome in outcomes:
            self.outcomes[outcome.slug] = outcome
        taken = {o.slug for o in outcomes}
        self.in_flight = [s for s in self.in_flight if s not in taken]

    def leave(self, slugs: list[str], reason: str) -> None:
        for slug in slugs:
            if self.outcomes[slug].outcome == NOT_ATTEMPTED:
                self.outcomes[slug].reason = reason


# A soak watcher returns None while the canary stays healthy, else why it did not.
SoakWatch = Callable[[str, float], "str | None"]


def healthz_watch(settings: Settings) -> SoakWatch:
    """Watch the canary's healthz through the soak, one poll per poll interval."""

    def watch(slug: str, seconds: float) -> str | None:
        if not settings.tenant_url_template:
            time.sleep(seconds)
            return None
        tenants = Tenants(
            settings.tenant_url_template, allow_http=settings.allow_http, ca_bundle=settings.ca_bundle, concurrency=1
        )
        url = tenants.base(slug) + "/healthz"
        end = time.monotonic() + seconds
        while True:
            # A poll started just before the soak ends still gets its full time to answer.
            reply = tenants.get(url, time.monotonic() + REQUEST_SECONDS)
            problem = health_problem(reply)
            if problem:
                return problem[1]
            left = end - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(settings.poll_interval, left))
            if time.monotonic() >= end:  # the soak is over; the last poll was its final word
                return None

    return watch


def run(settings: Settings, plan: Plan, cp: ControlPlane, watch: SoakWatch, result: Result) -> Result:
    """Fill `result` as the rollout goes, so a failure part-way still reports what was learned."""
    if settings.mode == "fleet":
        _run_fleet(settings, plan, cp, result)
    else:
        _run_scoped(settings, plan, cp, watch, result)
    result.in_flight = []
    return result


def _redeploy(cp: ControlPlane, result: Result, body: dict, kind: str, slugs: list[str]):
    result.in_flight = slugs  # until `take` records their outcomes
    return cp.redeploy(body, kind)


def _judge_canary(result: Result, plan: Plan, outcome: Outcome, cp_error: str | None) -> bool:
    if outcome.outcome == SHIPPED:
        return True
    reason = outcome.reason or cp_error or "not verified on target"
    outcome.outcome = STRAGGLER if outcome.outcome == UNKNOWN else outcome.outcome
    result.verdict = CANARY_FAILED
    result.message = f"canary {plan.canary} failed: {runner.plain(reason)}; no other tenant was redeployed"
    others = [s for s in plan.scope if s != plan.canary]
    for slug in others:
        result.outcomes[slug] = Outcome(slug, NOT_ATTEMPTED, None, "not attempted: the canary failed")
    return False


def _run_scoped(settings: Settings, plan: Plan, cp: ControlPlane, watch: SoakWatch, result: Result) -> None:
    if settings.dry_run:
        calls = ([("canary", [plan.canary], planning.canary_body(settings, plan))] if plan.canary else []) + [
            ("batch", b, planning.batch_body(settings, b, plan.budget)) for b in plan.batches
        ]
        for kind, slugs, body in calls:
            answer = _redeploy(cp, result, body, kind, slugs)
            outcomes, notes = coverage.assess(slugs, answer.document, dry_run=True)
            result.take(outcomes)
            result.notes.extend(notes)
            if _rejected_plan(result, answer, kind):
                return
        result.verdict = PLANNED
        result.message = f"dry run: {len(plan.scope)} tenants planned in {len(calls)} calls; nothing was deployed"
        return

    if plan.canary:
        answer = _redeploy(cp, result, planning.canary_body(settings, plan), "canary", [plan.canary])
        outcomes, notes = coverage.assess([plan.canary], answer.document)
        result.take(outcomes)
        result.notes.extend(notes)
        ok = answer.document["ok"] and answer.status == 200
        if not _judge_canary(result, plan, outcomes[0], None if ok else answer.document.get("error")):
            return
        if not ok:  # verified, yet the call failed: trust the failure
            result.verdict = FAILED
            result.message = f"control plane reported the canary call failed: {_cp_error(answer.document)}"
            result.leave(plan.scope, "not attempted: the canary call failed")
            return
        if settings.soak_seconds:
            runner.log(f"soaking canary {plan.canary} for {settings.soak_seconds} s")
            trouble = watch(plan.canary, settings.soak_seconds)
            if trouble:
                canary = result.outcomes[plan.canary]
                canary.outcome, canary.reason = STRAGGLER, f"turned unhealthy while soaking: {trouble}"
                result.verdict = CANARY_FAILED
                result.message = (
                    f"canary {plan.canary} turned unhealthy while soaking ({trouble}); no other tenant was redeployed"
                )
                result.leave(plan.scope, "not attempted: the canary failed its soak")
                return

    spent: list[str] = []
    for number, batch in enumerate(plan.batches, start=1):
        unspent = plan.budget - len(spent)
        runner.log(f"batch {number}/{len(plan.batches)}: {', '.join(batch)} (budget left {unspent})")
        answer = _redeploy(cp, result, planning.batch_body(settings, batch, unspent), "batch", batch)
        outcomes, notes = coverage.assess(batch, answer.document)
        result.take(outcomes)
        result.notes.extend(notes)
        spent += coverage.stragglers(outcomes)
        halted = f"not attempted: the rollout halted at batch {number} of {len(plan.batches)}"
        if coverage.over_budget(len(spent), plan.budget):
            result.verdict = SYSTEMIC
            left = sum(len(b) for b in plan.batches[number:])
            result.message = (
                f"systemic failure: {coverage.tolerance_message(len(spent), plan.budget)} "
                f"({', '.join(spent)}); halted at batch {number} of {len(plan.batches)}, "
                f"{left} tenant{'s' if left != 1 else ''} left on their old build"
            )
            result.leave(plan.scope, halted)
            return
        if not answer.document["ok"] or answer.status != 200:
            result.verdict = FAILED
            result.message = (
                f"control plane reported batch {number} failed: {_cp_error(answer.document)}; "
                "halted, later batches left on their old build"
            )
            result.leave(plan.scope, halted)
            return
    _finish(settings, plan, result, spent)


def _run_fleet(settings: Settings, plan: Plan, cp: ControlPlane, result: Result) -> None:
    answer = _redeploy(cp, result, planning.fleet_body(settings, plan), "fleet", plan.scope)
    # The control plane halts a failed fleet call part-way: tenants with no result may be untouched.
    outcomes, notes = coverage.assess(plan.scope, answer.document, dry_run=settings.dry_run, may_halt=True)
    result.take(outcomes)
    result.notes.extend(notes)
    if settings.dry_run:
        if _rejected_plan(result, answer, "fleet"):
            return
        result.verdict = PLANNED
        result.message = f"dry run: {len(plan.scope)} tenants planned in 1 call; nothing was deployed"
        return
    failed = not answer.document["ok"] or answer.status != 200
    if plan.canary and not _judge_canary(
        result, plan, result.outcomes[plan.canary], _cp_error(answer.document) if failed else None
    ):
        return
    spent = [s for s in result.stragglers() if s != plan.canary]
    if coverage.over_budget(len(spent), plan.budget):
        result.verdict = SYSTEMIC
        result.message = f"systemic failure: {coverage.tolerance_message(len(spent), plan.budget)} ({', '.join(spent)})"
        return
    if failed:
        result.verdict = FAILED
        result.message = f"control plane reported the fleet call failed: {_cp_error(answer.document)}"
        return
    _finish(settings, plan, result, spent)


def _rejected_plan(result: Result, answer, kind: str) -> bool:
    """A dry run the control plane answered with a failure fails too: its plan would not hold."""
    if answer.document["ok"] and answer.status == 200:
        return False
    result.verdict = FAILED
    result.message = f"control plane rejected the dry run's {kind} call: {_cp_error(answer.document)}"
    return True


def _finish(settings: Settings, plan: Plan, result: Result, spent: list[str]) -> None:
    shipped = sum(1 for o in result.outcomes.values() if o.outcome == SHIPPED)
    result.verdict = QUARANTINED if spent else SHIPPED_ALL
    result.message = f"shipped {settings.target_tag} to {shipped} of {len(plan.scope)} tenants"
    if spent:
        result.message += (
            f"; {len(spent)} quarantined within the budget of {plan.budget} ({', '.join(spent)}): recover individually"
        )


def _cp_error(doc: dict) -> str:
    return runner.plain(doc.get("error") or "no error given")
