"""Driving the control plane: the canary, its soak, then batch after batch while the budget holds
(`scoped`), or one call that the control plane drives (`fleet`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet import runner
from fleet.contract import show
from fleet.cp import Answer, ControlPlane, CPRefused
from fleet.tenant import REQUEST_SECONDS, Tenants, health_problem
from rollout import coverage
from rollout import plan as planning
from rollout.coverage import NOT_ATTEMPTED, SHIPPED, STRAGGLER, UNKNOWN, Outcome
from rollout.gate import SUPERSEDED, Gate, Stop
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
    superseded: str = ""  # the newer head's sha, when the run stood down for it

    @property
    def ok(self) -> bool:
        return self.verdict in (SHIPPED_ALL, QUARANTINED, PLANNED, SUPERSEDED)

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


def run(
    settings: Settings, plan: Plan, cp: ControlPlane, watch: SoakWatch, result: Result, gate: Gate | None = None
) -> Result:
    """Fill `result` as the rollout goes, so a failure part-way still reports what was learned. Each
    way the rollout can end early is a Stop: its verdict, its message, and why the rest stay put."""
    driver = _Driver(settings, plan, cp, result, gate)
    try:
        if settings.mode == "fleet":
            driver.fleet()
        else:
            driver.scoped(watch)
    except Stop as stop:
        result.verdict, result.message, result.superseded = stop.verdict, stop.message, stop.superseded
        result.leave(list(result.outcomes), stop.leave)
    result.in_flight = []
    return result


def _names(slugs: list[str], limit: int = 10) -> str:
    more = f" and {len(slugs) - limit} more" if len(slugs) > limit else ""
    return ", ".join(slugs[:limit]) + more


def _cannot_scope(body: dict, what: str) -> Stop:
    return Stop(
        CANNOT_SCOPE,
        f"the control plane cannot scope a call: asked for only_slugs {_names(body['only_slugs'])} in a dry run, "
        f"{runner.plain(what)}; nothing was deployed: use mode: fleet with this control plane",
        "not attempted: the control plane cannot scope a call",
    )


class _Driver:
    def __init__(self, settings: Settings, plan: Plan, cp: ControlPlane, result: Result, gate: Gate | None) -> None:
        self.settings, self.plan, self.cp, self.result, self.gate = settings, plan, cp, result, gate

    def call(self, body: dict, kind: str, slugs: list[str], what: str) -> Answer:
        """One call, its rows judged into the result. Before a real call the gate is asked; a real call
        that answers for tenants outside its only_slugs has widened, and the rollout halts there."""
        dry = bool(body.get("dry_run"))
        if not dry and self.gate is not None:
            self.gate.before_real_call(what)
        self.result.in_flight = slugs  # until `take` records their outcomes
        answer = self.cp.redeploy(body, kind)
        outcomes, outside = coverage.assess(slugs, answer.document, dry_run=dry, may_halt=kind == "fleet")
        self.result.take(outcomes)
        if outside and "only_slugs" in body:
            if dry:
                raise _cannot_scope(body, f"its dry run answered for {_names(outside)} too")
            self.result.outside += [s for s in outside if s not in self.result.outside]
            raise Stop(
                WIDENED,
                f"the control plane widened {what} beyond its only_slugs, redeploying {_names(outside)}; "
                "halted: this control plane ignores only_slugs, so use mode: fleet with it",
                f"not attempted: the rollout halted when {what} widened",
            )
        if outside:
            self.result.notes.append(
                f"the control plane answered for tenants its dry run did not list: {_names(outside)}"
            )
        if dry and not answer.succeeded:  # a plan the control plane rejects would not hold
            raise Stop(FAILED, f"control plane rejected the dry run of {what}: {answer.error}")
        return answer

    def probe(self, body: dict, slugs: list[str]) -> None:
        """Before the first real scoped call, its dry run must answer for exactly its tenants."""
        try:
            answer = self.cp.redeploy(planning.probe_body(body), "probe")
        except CPRefused as exc:
            raise _cannot_scope(body, f"it refused the call: {show(exc.said) if exc.said else exc}") from None
        if not answer.succeeded:
            raise _cannot_scope(body, f"its dry run failed (HTTP {answer.status}): {answer.error}")
        answered = [row["slug"] for row in answer.rows]
        extra = [s for s in answered if s not in slugs]
        missing = [s for s in slugs if s not in answered]
        said = [f"answered for {_names(extra)} too"] if extra else []
        said += [f"did not answer for {_names(missing)}"] if missing else []
        if said:
            raise _cannot_scope(body, "it " + ", ".join(said))

    def canary_must_pass(self, answer: Answer) -> None:
        canary = self.result.outcomes[self.plan.canary]
        if canary.outcome != SHIPPED:
            reason = canary.reason or (answer.error if not answer.succeeded else "not verified on target")
            if canary.outcome == UNKNOWN:
                self.result.outcomes[self.plan.canary] = Outcome(canary.slug, STRAGGLER, canary.phase, reason)
            for slug, outcome in self.result.outcomes.items():  # a control plane stops at a failed canary
                if outcome.outcome == UNKNOWN:
                    self.result.outcomes[slug] = Outcome(slug, NOT_ATTEMPTED, None, "not attempted: the canary failed")
            raise Stop(
                CANARY_FAILED,
                f"canary {self.plan.canary} failed: {runner.plain(reason)}; no other tenant was redeployed",
                "not attempted: the canary failed",
            )

    def scoped(self, watch: SoakWatch) -> None:
        settings, plan, result = self.settings, self.plan, self.result
        calls = len(plan.batches) + (1 if plan.canary else 0)
        if settings.dry_run:
            if plan.canary:
                self.call(planning.canary_body(settings, plan), "canary", [plan.canary], "the canary call")
            for number, batch in enumerate(plan.batches, start=1):
                self.call(planning.batch_body(settings, batch, plan.budget), "batch", batch, f"the batch {number} call")
            result.verdict = PLANNED
            result.message = f"dry run: {len(plan.scope)} tenants planned in {calls} calls; nothing was deployed"
            return

        if plan.canary:
            self.probe(planning.canary_body(settings, plan), [plan.canary])
            runner.log(f"canary: {plan.canary}")
            answer = self.call(planning.canary_body(settings, plan), "canary", [plan.canary], "the canary call")
            self.canary_must_pass(answer)
            if not answer.succeeded:  # verified, yet the call failed: trust the failure
                raise Stop(
                    FAILED,
                    f"control plane reported the canary call failed: {answer.error}",
                    "not attempted: the canary call failed",
                )
            if settings.soak_seconds:
                runner.log(f"soaking canary {plan.canary} for {settings.soak_seconds} s")
                trouble = watch(plan.canary, settings.soak_seconds)
                if trouble:
                    canary = result.outcomes[plan.canary]
                    canary.outcome, canary.reason = STRAGGLER, f"turned unhealthy while soaking: {trouble}"
                    raise Stop(
                        CANARY_FAILED,
                        f"canary {plan.canary} turned unhealthy while soaking ({trouble}); "
                        "no other tenant was redeployed",
                        "not attempted: the canary failed its soak",
                    )
        else:
            self.probe(planning.batch_body(settings, plan.batches[0], plan.budget), plan.batches[0])

        spent: list[str] = []
        for number, batch in enumerate(plan.batches, start=1):
            unspent = plan.budget - len(spent)
            runner.log(f"batch {number}/{len(plan.batches)}: {', '.join(batch)} (budget left {unspent})")
            body = planning.batch_body(settings, batch, unspent)
            answer = self.call(body, "batch", batch, f"the batch {number} call")
            spent += [s for s in batch if result.outcomes[s].outcome == STRAGGLER]
            halted = f"not attempted: the rollout halted at batch {number} of {len(plan.batches)}"
            if coverage.over_budget(len(spent), plan.budget):
                left = sum(len(b) for b in plan.batches[number:])
                raise Stop(
                    SYSTEMIC,
                    f"systemic failure: {coverage.tolerance_message(len(spent), plan.budget)} "
                    f"({', '.join(spent)}); halted at batch {number} of {len(plan.batches)}, "
                    f"{left} tenant{'s' if left != 1 else ''} left on their old build",
                    halted,
                )
            if not answer.succeeded:
                raise Stop(
                    FAILED,
                    f"control plane reported batch {number} failed: {answer.error}; "
                    "halted, later batches left on their old build",
                    halted,
                )
        self.finish(spent)

    def fleet(self) -> None:
        settings, plan, result = self.settings, self.plan, self.result
        body = planning.fleet_body(settings, plan)
        if planning.probes(settings):
            self.probe(body, plan.scope)
        # The control plane halts a failed fleet call part-way: tenants with no row may be untouched.
        answer = self.call(body, "fleet", plan.scope, "the fleet call")
        if settings.dry_run:
            result.verdict = PLANNED
            result.message = f"dry run: {len(plan.scope)} tenants planned in 1 call; nothing was deployed"
            return
        if plan.canary:
            self.canary_must_pass(answer)
        spent = [s for s in result.stragglers() if s != plan.canary]
        if coverage.over_budget(len(spent), plan.budget):
            raise Stop(
                SYSTEMIC,
                f"systemic failure: {coverage.tolerance_message(len(spent), plan.budget)} ({', '.join(spent)})",
            )
        if not answer.succeeded:
            raise Stop(FAILED, f"control plane reported the fleet call failed: {answer.error}")
        self.finish(spent)

    def finish(self, spent: list[str]) -> None:
        settings, plan, result = self.settings, self.plan, self.result
        shipped = sum(1 for o in result.outcomes.values() if o.outcome == SHIPPED)
        result.verdict = QUARANTINED if spent else SHIPPED_ALL
        result.message = f"shipped {settings.target_tag} to {shipped} of {len(plan.scope)} tenants"
        if spent:
            result.message += (
                f"; {len(spent)} quarantined within the budget of {plan.budget} ({', '.join(spent)}): "
                "recover individually"
            )
