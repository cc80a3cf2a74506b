"""Driving the control plane: the canary, its soak, then batch after batch of the plan's schedule while
the budget holds (`scoped`), or one call that the control plane drives (`fleet`). `run` returns what
happened as a Result; a call that breaks off raises BrokeOff, which carries what was learned up to then.
Each call's answer is judged into an End (the rollout ends there) or None (it goes on)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fleet import runner
from fleet.contract import BadAnswer, ContractError, show, unnamed
from fleet.cp import Answer, ControlPlane, CPError, CPRefused, NothingDone
from fleet.tenant import REQUEST_SECONDS, health_problem
from fleet.vocabulary import Mode, Outcome, RolloutVerdict, counted, listed
from rollout import coverage
from rollout import plan as planning
from rollout.coverage import Tenant
from rollout.gate import End, Gate, Stop
from rollout.plan import Batch, Plan, Settings


@dataclass(frozen=True)
class Result:
    """What the rollout did: each tenant's outcome (in scope order), the verdict and its message."""

    outcomes: dict[str, Tenant]
    verdict: RolloutVerdict
    message: str
    notes: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)  # tenants a real call touched outside its scope
    superseded_by: str = ""  # the run stood down: the deployed branch's newer head (a tenant on it is State.SUPERSEDED)

    def stragglers(self) -> list[str]:
        """Every tenant that failed its redeploy: quarantined ones included."""
        return [t.slug for t in self.outcomes.values() if t.outcome in (Outcome.STRAGGLER, Outcome.QUARANTINED)]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for t in self.outcomes.values() if t.outcome == outcome)

    def left(self, reason: str) -> dict[str, Tenant]:
        """The tenants, every one not attempted given this reason."""
        return {
            slug: replace(t, reason=reason) if t.outcome == Outcome.NOT_ATTEMPTED else t
            for slug, t in self.outcomes.items()
        }

    def ended(self, verdict: RolloutVerdict, message: str, leave: str = "") -> Result:
        """This result with another verdict (a failure after the drive: a cancelled job), the tenants not
        attempted given `leave` as their reason when it says one."""
        return replace(self, verdict=verdict, message=message, outcomes=self.left(leave) if leave else self.outcomes)


class BrokeOff(Exception):
    """A call broke off (a control-plane fault, an answer that breaks the contract, SIGTERM): `result`
    holds what was learned, the tenants of the call under way unknown; `cause` is what broke."""

    def __init__(self, result: Result, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.result = result
        self.cause = cause


# A soak watcher returns None while the canary stays healthy, else why it did not.
SoakWatch = Callable[[str, float], "str | None"]


def health_watch(settings: Settings) -> SoakWatch:
    """Watch the canary's health path through the soak, one poll per poll interval."""

    def watch(slug: str, seconds: float) -> str | None:
        if settings.tenant_access is None:
            time.sleep(seconds)
            return None
        client = settings.tenant_access.client(concurrency=1)
        url = client.base(slug) + settings.tenant_access.healthz_path
        end = time.monotonic() + seconds
        while True:
            # A poll started just before the soak ends still gets its full time to answer.
            problem = health_problem(client.get(url, time.monotonic() + REQUEST_SECONDS))
            if problem:
                return problem[1]
            left = end - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(settings.poll_interval, left))
            if time.monotonic() >= end:  # the soak is over; the last poll was its final word
                return None

    return watch


def run(settings: Settings, plan: Plan, cp: ControlPlane, watch: SoakWatch, gate: Gate | None = None) -> Result:
    """The rollout, from the plan to its verdict. Each way it can end is an End: its verdict, its message,
    and why the rest stay put."""
    driver = _Driver(settings, plan, cp, gate)
    try:
        end = driver.fleet() if plan.mode == Mode.FLEET else driver.scoped(watch)
    except Stop as stop:
        end = stop.end
    except (CPError, ContractError, runner.Terminated) as exc:
        raise BrokeOff(driver.broke_off(str(exc), acted=not isinstance(exc, NothingDone)), exc) from exc
    return driver.result(end)


def _cannot_scope(body: dict[str, Any], what: str) -> End:
    return End(
        RolloutVerdict.CANNOT_SCOPE,
        f"the control plane cannot scope a call: asked for only_slugs {listed(body['only_slugs'])} in a dry run, "
        f"{runner.plain(what)}; nothing was deployed: use mode: fleet with this control plane",
        "not attempted: the control plane cannot scope a call",
    )


def _said(answer: Answer) -> str:
    """What the control plane said of a call that failed, for the message that halts the rollout."""
    return f"; the control plane said: {answer.error}" if not answer.succeeded and answer.document.get("error") else ""


def _probe_trouble(answer: Answer, slugs: list[str]) -> str:
    """What a scope probe's answer shows beyond exactly its tenants; "" when it scoped."""
    answered = [row["slug"] for row in answer.rows if row.get("slug")]
    extra = [s for s in answered if s not in slugs]
    missing = [s for s in slugs if s not in answered]
    nameless = unnamed(answer.rows)
    said = [f"answered for {listed(extra)} too"] if extra else []
    said += [f"answered a row without a slug: {listed(nameless)}"] if nameless else []
    said += [f"did not answer for {listed(missing)}"] if missing else []
    return "it " + ", ".join(said) if said else ""


class _Driver:
    def __init__(self, settings: Settings, plan: Plan, cp: ControlPlane, gate: Gate | None) -> None:
        self.settings, self.plan, self.cp, self.gate = settings, plan, cp, gate
        self.outcomes = {slug: Tenant(slug, Outcome.NOT_ATTEMPTED, "not attempted") for slug in plan.scope}
        self.notes = list(plan.notes)
        self.outside: list[str] = []
        self.in_flight: list[str] = []  # the tenants of the call under way
        self.step: str | None = None  # that call's step: canary, batch 2/3, fleet

    def result(self, end: End) -> Result:
        outcomes = Result(self.outcomes, end.verdict, end.message).left(end.left)
        return Result(outcomes, end.verdict, end.message, self.notes, self.outside, end.superseded_by)

    def take(self, tenants: list[Tenant]) -> None:
        for tenant in tenants:
            self.outcomes[tenant.slug] = tenant
        self.in_flight = []

    def mark(self, slug: str, outcome: Outcome, reason: str) -> None:
        self.outcomes[slug] = replace(self.outcomes[slug], outcome=outcome, reason=reason)

    def broke_off(self, cause: str, acted: bool) -> Result:
        """The result when a call broke off: its tenants' outcome is unknown (unless the control plane
        cannot have acted on it), the rest not attempted."""
        for slug in self.in_flight:
            if acted:
                self.outcomes[slug] = Tenant(slug, Outcome.UNKNOWN, f"outcome unknown: {cause}", self.step)
            else:
                self.outcomes[slug] = Tenant(slug, Outcome.NOT_ATTEMPTED, f"not attempted: {cause}", self.step)
        return self.result(End(RolloutVerdict.FAILED, cause, "not attempted: the rollout broke off"))

    def call(
        self, body: dict[str, Any], kind: str, slugs: list[str], what: str, step: str
    ) -> tuple[Answer, End | None]:
        """One call (`step` of the rollout), its rows judged into the tenants' outcomes, and its answer
        into whether the rollout ends there. Before a real call the gate is asked."""
        dry = bool(body.get("dry_run"))
        if not dry and self.gate is not None:
            self.gate.before_real_call(what)
        self.in_flight, self.step = slugs, step
        answer = self.cp.redeploy(body, kind)
        tenants, outside = coverage.assess(slugs, answer.document, step=step, dry_run=dry, may_halt=kind == "fleet")
        self.take(tenants)
        return answer, self.judge(body, answer, tenants, outside, what)

    def judge(
        self, body: dict[str, Any], answer: Answer, tenants: list[Tenant], outside: list[str], what: str
    ) -> End | None:
        """A real call that answers for tenants outside its only_slugs has widened, and the rollout halts
        there; one that answers a row without a slug breaks the contract, and the rollout breaks off
        there."""
        if body.get("dry_run"):
            return self.rehearsed(body, answer, outside, what)
        nameless = unnamed(answer.rows)
        if nameless:
            # A row that names no tenant may be any of them: those without a row of their own are unknown.
            self.in_flight = [t.slug for t in tenants if t.outcome == Outcome.UNKNOWN]
            raise BadAnswer(
                f"the control plane's answer to {what} breaks the contract: a row names no tenant (no slug): "
                f"{listed(nameless)}"
            )
        if outside and "only_slugs" in body:
            return self.widened(answer, outside, what)
        self.unlisted(outside)
        return None

    def rehearsed(self, body: dict[str, Any], answer: Answer, outside: list[str], what: str) -> End | None:
        """A dry run shows a plan that would not hold when a scoped one answers beyond its tenants, or
        when the control plane rejects it."""
        nameless = unnamed(answer.rows)
        if nameless and "only_slugs" in body:
            return _cannot_scope(body, f"its dry run answered a row without a slug: {listed(nameless)}")
        if outside and "only_slugs" in body:
            return _cannot_scope(body, f"its dry run answered for {listed(outside)} too")
        self.unlisted(outside)
        if not answer.succeeded:
            return End(RolloutVerdict.FAILED, f"control plane rejected the dry run of {what}: {answer.error}")
        return None

    def unlisted(self, outside: list[str]) -> None:
        if outside:
            self.notes.append(f"the control plane answered for tenants its dry run did not list: {listed(outside)}")

    def widened(self, answer: Answer, outside: list[str], what: str) -> End:
        """Tenants of the rollout the widened call reached are judged by their rows, not left as untouched:
        the control plane says what it did to them."""
        self.outside += [s for s in outside if s not in self.outside]
        self.take(coverage.assess([s for s in outside if s in self.outcomes], answer.document, step=self.step)[0])
        return End(
            RolloutVerdict.WIDENED,
            f"the control plane widened {what} beyond its only_slugs, redeploying {listed(outside)}; "
            "halted: this control plane ignores only_slugs, so use mode: fleet with it",
            f"not attempted: the rollout halted when {what} widened",
        )

    def probe(self, body: dict[str, Any], slugs: list[str]) -> End | None:
        """Before the first real scoped call, its dry run must answer for exactly its tenants."""
        try:
            answer = self.cp.redeploy(planning.probe_body(body), "probe")
        except CPRefused as exc:
            return _cannot_scope(body, f"it refused the call: {show(exc.said) if exc.said else exc}")
        if not answer.succeeded:
            return _cannot_scope(body, f"its dry run failed (HTTP {answer.status}): {answer.error}")
        trouble = _probe_trouble(answer, slugs)
        return _cannot_scope(body, trouble) if trouble else None

    def canary_passed(self, answer: Answer) -> End | None:
        """A canary that is not redeployed fails the rollout, whatever the budget; the control plane
        stops at a failed canary, so tenants with no row were not attempted."""
        canary = self.outcomes[self.plan.canary]
        if canary.outcome == Outcome.REDEPLOYED:
            return None
        reason = canary.reason or (answer.error if not answer.succeeded else "not verified on target")
        self.mark(canary.slug, Outcome.STRAGGLER, reason)
        for slug, tenant in self.outcomes.items():
            if tenant.outcome == Outcome.UNKNOWN:
                self.mark(slug, Outcome.NOT_ATTEMPTED, "not attempted: the canary failed")
        return End(
            RolloutVerdict.CANARY_FAILED,
            f"canary {self.plan.canary} failed: {runner.plain(reason)}; no other tenant was redeployed",
            "not attempted: the canary failed",
        )

    def scoped(self, watch: SoakWatch) -> End:
        if self.settings.dry_run:
            return self.rehearse()
        plan = self.plan
        if plan.canary:
            return self.canary(watch) or self.batches()
        first = next(iter(plan.schedule))
        return self.probe(planning.batch_body(self.settings, first.slugs, plan.budget), first.slugs) or self.batches()

    def rehearse(self) -> End:
        """A scoped dry run: each call of the plan, as a dry run."""
        settings, plan = self.settings, self.plan
        calls = [(planning.canary_body(settings, plan), "canary", [plan.canary], "the canary call", "canary")]
        calls = calls if plan.canary else []
        for batch in plan.schedule:
            calls.append((planning.batch_body(settings, batch.slugs, plan.budget), "batch", batch.slugs, batch.call,
                          batch.step))  # fmt: skip
        for call in calls:
            end = self.call(*call)[1]
            if end:
                return end
        return self.planned(len(calls))

    def canary(self, watch: SoakWatch) -> End | None:
        """The canary's own strict call, then its soak, watched by the action: None when it held."""
        settings, canary = self.settings, self.plan.canary
        body = planning.canary_body(settings, self.plan)
        halted = self.probe(body, [canary])
        if halted:
            return halted
        runner.log(f"canary: {canary}")
        answer, halted = self.call(body, "canary", [canary], "the canary call", "canary")
        halted = halted or self.canary_passed(answer)
        if halted:
            return halted
        if not answer.succeeded:  # verified, yet the call failed: trust the failure
            return End(
                RolloutVerdict.FAILED,
                f"control plane reported the canary call failed: {answer.error}",
                "not attempted: the canary call failed",
            )
        return self.soak(watch)

    def soak(self, watch: SoakWatch) -> End | None:
        settings, canary = self.settings, self.plan.canary
        if not settings.soak_seconds:
            return None
        runner.log(f"soaking canary {canary} for {settings.soak_seconds} s")
        trouble = watch(canary, settings.soak_seconds)
        if not trouble:
            return None
        self.mark(canary, Outcome.STRAGGLER, f"turned unhealthy while soaking: {trouble}")
        return End(
            RolloutVerdict.CANARY_FAILED,
            f"canary {canary} turned unhealthy while soaking ({trouble}); no other tenant was redeployed",
            "not attempted: the canary failed its soak",
        )

    def batches(self) -> End:
        """The schedule, batch after batch, each call carrying the budget still unspent."""
        spent: list[str] = []
        for batch in self.plan.schedule:
            unspent = self.plan.budget - len(spent)
            runner.log(f"{batch.step}: {listed(batch.slugs)} (budget left {unspent})")
            body = planning.batch_body(self.settings, batch.slugs, unspent)
            answer, halted = self.call(body, "batch", batch.slugs, batch.call, batch.step)
            spent += [s for s in batch.slugs if self.outcomes[s].outcome == Outcome.STRAGGLER]
            halted = halted or self.held(answer, batch.slugs, spent, batch)
            if halted:
                return halted
        return self.finish(spent)

    def fleet(self) -> End:
        settings, plan = self.settings, self.plan
        body = planning.fleet_body(settings, plan)
        halted = self.probe(body, plan.scope) if planning.probes(settings) else None
        if halted:
            return halted
        # The control plane halts a failed fleet call part-way: tenants with no row may be untouched.
        answer, halted = self.call(body, "fleet", plan.scope, "the fleet call", "fleet")
        if halted or settings.dry_run:
            return halted or self.planned(1)
        halted = self.canary_passed(answer) if plan.canary else None
        spent = [s for s in plan.scope if s != plan.canary and self.outcomes[s].outcome == Outcome.STRAGGLER]
        return halted or self.held(answer, plan.scope, spent, None) or self.finish(spent)

    def held(self, answer: Answer, slugs: list[str], spent: list[str], batch: Batch | None) -> End | None:
        """Whether the rollout goes on after a call (`batch`, or the fleet call): not when its stragglers
        overspend the budget (systemic), nor when the control plane says it failed for more than
        stragglers the budget allows."""
        leave = f"not attempted: the rollout halted at batch {batch.number} of {batch.of}" if batch else ""
        if coverage.over_budget(len(spent), self.plan.budget):
            return End(RolloutVerdict.SYSTEMIC, self.systemic(spent, batch) + _said(answer), leave)
        if answer.succeeded or self.failed_for_stragglers_only(answer, slugs):
            return None
        if batch is None:
            return End(RolloutVerdict.FAILED, f"control plane reported the fleet call failed: {answer.error}")
        return End(
            RolloutVerdict.FAILED,
            f"control plane reported batch {batch.number} failed: {answer.error}; "
            "halted, later batches left on their old build",
            leave,
        )

    def systemic(self, spent: list[str], batch: Batch | None) -> str:
        message = f"systemic failure: {coverage.tolerance_message(len(spent), self.plan.budget)} ({listed(spent)})"
        if batch is None:
            return message
        left = counted(self.plan.schedule.left_after(batch), "tenant")
        return f"{message}; halted at batch {batch.number} of {batch.of}, {left} left on their old build"

    def failed_for_stragglers_only(self, answer: Answer, slugs: list[str]) -> bool:
        """An older control plane answers 500 whenever any tenant failed, whatever max_stragglers says.
        When its rows cover every tenant of the call and the only failures are stragglers the budget
        allows (checked before this), the rollout goes on, with a notice."""
        covered = {row.get("slug") for row in answer.rows} >= set(slugs)
        stragglers = [s for s in slugs if self.outcomes[s].outcome == Outcome.STRAGGLER]
        if answer.status != 500 or not covered or not stragglers:
            return False
        runner.notice(
            f"the control plane answered HTTP 500 for stragglers the budget allows ({listed(stragglers)}), "
            "as an older control plane does; the rollout goes on"
        )
        return True

    def planned(self, calls: int) -> End:
        """A dry run's verdict, and its plan in the log: which tenants in which call, in order."""
        plan = self.plan
        for line in planning.plan_lines(self.settings, plan):
            runner.log(f"plan: {line}")
        return End(
            RolloutVerdict.PLANNED,
            f"dry run: {counted(len(plan.scope), 'tenant')} planned in {counted(calls, 'call')}; nothing was deployed",
        )

    def finish(self, spent: list[str]) -> End:
        """The rollout shipped: its stragglers, within the budget, are quarantined."""
        plan = self.plan
        for slug in spent:
            self.outcomes[slug] = replace(self.outcomes[slug], outcome=Outcome.QUARANTINED)
        redeployed = sum(1 for t in self.outcomes.values() if t.outcome == Outcome.REDEPLOYED)
        message = f"shipped {self.settings.target_tag} to {redeployed} of {counted(len(plan.scope), 'tenant')}"
        if not spent:
            return End(RolloutVerdict.SHIPPED, message)
        message += (
            f"; {len(spent)} quarantined within the budget of {plan.budget} ({listed(spent)}): recover individually"
        )
        return End(RolloutVerdict.SHIPPED_WITH_QUARANTINE, message)
