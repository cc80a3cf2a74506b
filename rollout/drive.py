"""Driving the control plane: the canary, its soak, then batch after batch while the budget holds
(`scoped`), or one call that the control plane drives (`fleet`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet import runner
from fleet.contract import show
from fleet.cp import ControlPlane, CPRefused
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
CANNOT_SCOPE = "cannot-scope"  # the scope probe showed a control plane that ignores or refuses only_slugs
WIDENED = "widened"  # a real call answered for tenants outside its only_slugs


@dataclass
class Result:
    outcomes: dict[str, Outcome]  # by slug, in scope order
    verdict: str = SHIPPED_ALL
    message: str = ""
    notes: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)  # tenants of the call under way
    outside: list[str] = field(default_factory=list)  # tenants a real call touched outside its scope

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
            settings.tenant_url_template,
            allow_http=settings.allow_http,
            ca_bundle=settings.ca_bundle,
            concurrency=1,
            healthz_path=settings.healthz_path,
        )
        url = tenants.base(slug) + settings.healthz_path
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
    """One call, its rows judged. A real call that answers for tenants outside its only_slugs has
    widened: the rollout halts there, naming them (Result.verdict WIDENED)."""
    result.in_flight = slugs  # until `take` records their outcomes
    answer = cp.redeploy(body, kind)
    dry = bool(body.get("dry_run"))
    outcomes, outside = coverage.assess(slugs, answer.document, dry_run=dry, may_halt=kind == "fleet")
    result.take(outcomes)
    if outside and "only_slugs" in body:
        if dry:
            _cannot_scope(result, body, f"its dry run answered for {_names(outside)} too")
        else:
            result.outside += [s for s in outside if s not in result.outside]
            result.verdict = WIDENED
            result.message = (
                f"the control plane widened the {kind} call beyond its only_slugs, redeploying {_names(outside)}; "
                "halted: this control plane ignores only_slugs, so use mode: fleet with it"
            )
            result.leave(list(result.outcomes), f"not attempted: the rollout halted when the {kind} call widened")
    elif outside:
        result.notes.append(f"the control plane answered for tenants its dry run did not list: {_names(outside)}")
    return answer


def _names(slugs: list[str], limit: int = 10) -> str:
    more = f" and {len(slugs) - limit} more" if len(slugs) > limit else ""
    return ", ".join(slugs[:limit]) + more


def _cannot_scope(result: Result, body: dict, what: str) -> None:
    result.verdict = CANNOT_SCOPE
    result.message = (
        f"the control plane cannot scope a call: asked for only_slugs {_names(body['only_slugs'])} in a dry run, "
        f"{runner.plain(what)}; nothing was deployed: use mode: fleet with this control plane"
    )
    result.leave(list(result.outcomes), "not attempted: the control plane cannot scope a call")


def _probe(cp: ControlPlane, result: Result, body: dict, slugs: list[str]) -> bool:
    """Before the first real scoped call, its dry run must answer for exactly its tenants."""
    try:
        answer = cp.redeploy(planning.probe_body(body), "probe")
    except CPRefused as exc:
        _cannot_scope(result, body, f"it refused the call: {show(exc.said) if exc.said else exc}")
        return False
    answered = [row["slug"] for row in answer.rows]
    if not answer.succeeded:
        _cannot_scope(result, body, f"its dry run failed (HTTP {answer.status}): {answer.error}")
        return False
    if sorted(answered) != sorted(slugs):
        extra = [s for s in answered if s not in slugs]
        missing = [s for s in slugs if s not in answered]
        said = ", ".join(
            part
            for part in (
                f"answered for {_names(extra)} too" if extra else "",
                f"did not answer for {_names(missing)}" if missing else "",
            )
            if part
        )
        _cannot_scope(result, body, f"it {said}")
        return False
    return True


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


def _halted(result: Result) -> bool:
    return result.verdict in (WIDENED, CANNOT_SCOPE)


def _run_scoped(settings: Settings, plan: Plan, cp: ControlPlane, watch: SoakWatch, result: Result) -> None:
    if settings.dry_run:
        calls = ([("canary", [plan.canary], planning.canary_body(settings, plan))] if plan.canary else []) + [
            ("batch", b, planning.batch_body(settings, b, plan.budget)) for b in plan.batches
        ]
        for kind, slugs, body in calls:
            answer = _redeploy(cp, result, body, kind, slugs)
            if _halted(result) or _rejected_plan(result, answer, kind):
                return
        result.verdict = PLANNED
        result.message = f"dry run: {len(plan.scope)} tenants planned in {len(calls)} calls; nothing was deployed"
        return

    if plan.canary:
        first_body, first_slugs = planning.canary_body(settings, plan), [plan.canary]
    else:
        first_body, first_slugs = planning.batch_body(settings, plan.batches[0], plan.budget), plan.batches[0]
    if not _probe(cp, result, first_body, first_slugs):
        return

    if plan.canary:
        runner.log(f"canary: {plan.canary}")
        answer = _redeploy(cp, result, planning.canary_body(settings, plan), "canary", [plan.canary])
        if _halted(result):
            return
        ok = answer.succeeded
        if not _judge_canary(result, plan, result.outcomes[plan.canary], None if ok else answer.error):
            return
        if not ok:  # verified, yet the call failed: trust the failure
            result.verdict = FAILED
            result.message = f"control plane reported the canary call failed: {answer.error}"
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
        if _halted(result):
            return
        spent += [s for s in batch if result.outcomes[s].outcome == STRAGGLER]
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
        if not answer.succeeded:
            result.verdict = FAILED
            result.message = (
                f"control plane reported batch {number} failed: {answer.error}; "
                "halted, later batches left on their old build"
            )
            result.leave(plan.scope, halted)
            return
    _finish(settings, plan, result, spent)


def _run_fleet(settings: Settings, plan: Plan, cp: ControlPlane, result: Result) -> None:
    body = planning.fleet_body(settings, plan)
    if planning.probes(settings) and not _probe(cp, result, body, plan.scope):
        return
    # The control plane halts a failed fleet call part-way: tenants with no row may be untouched.
    answer = _redeploy(cp, result, body, "fleet", plan.scope)
    if _halted(result):
        return
    if settings.dry_run:
        if _rejected_plan(result, answer, "fleet"):
            return
        result.verdict = PLANNED
        result.message = f"dry run: {len(plan.scope)} tenants planned in 1 call; nothing was deployed"
        return
    failed = not answer.succeeded
    if plan.canary and not _judge_canary(result, plan, result.outcomes[plan.canary], answer.error if failed else None):
        return
    spent = [s for s in result.stragglers() if s != plan.canary]
    if coverage.over_budget(len(spent), plan.budget):
        result.verdict = SYSTEMIC
        result.message = f"systemic failure: {coverage.tolerance_message(len(spent), plan.budget)} ({', '.join(spent)})"
        return
    if failed:
        result.verdict = FAILED
        result.message = f"control plane reported the fleet call failed: {answer.error}"
        return
    _finish(settings, plan, result, spent)


def _rejected_plan(result: Result, answer, kind: str) -> bool:
    """A dry run the control plane answered with a failure fails too: its plan would not hold."""
    if answer.succeeded:
        return False
    result.verdict = FAILED
    result.message = f"control plane rejected the dry run's {kind} call: {answer.error}"
    return True


def _finish(settings: Settings, plan: Plan, result: Result, spent: list[str]) -> None:
    shipped = sum(1 for o in result.outcomes.values() if o.outcome == SHIPPED)
    result.verdict = QUARANTINED if spent else SHIPPED_ALL
    result.message = f"shipped {settings.target_tag} to {shipped} of {len(plan.scope)} tenants"
    if spent:
        result.message += (
            f"; {len(spent)} quarantined within the budget of {plan.budget} ({', '.join(spent)}): recover individually"
        )
