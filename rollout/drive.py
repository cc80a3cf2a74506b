"""Driving the control plane: the canary, its soak, then batch after batch while the budget holds
(`scoped`), or one call that the control plane drives (`fleet`). `run` returns what happened as a
Result; a call that breaks off raises BrokeOff, which carries what was learned up to then."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from fleet import runner
from fleet.contract import ContractError, show, unnamed
from fleet.cp import Answer, ControlPlane, CPError, CPRefused, NothingDone
from fleet.tenant import REQUEST_SECONDS, health_problem
from fleet.vocabulary import Outcome, RolloutVerdict, counted, listed
from rollout import coverage
from rollout import plan as planning
from rollout.coverage import Tenant
from rollout.gate import Gate, Stop
from rollout.plan import Plan, Settings


@dataclass
class Result:
    """What the rollout did: each tenant's outcome (in scope order), the verdict and its message."""

    tenants: dict[str, Tenant]
    verdict: RolloutVerdict = RolloutVerdict.SHIPPED
    message: str = ""
    notes: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)  # tenants a real call touched outside its scope
    superseded: str = ""  # the newer head's sha, when the run stood down for it

    @property
    def ok(self) -> bool:
        return self.verdict.ok

    def stragglers(self) -> list[str]:
        """Every tenant that failed its redeploy: quarantined ones included."""
        return [t.slug for t in self.tenants.values() if t.outcome in (Outcome.STRAGGLER, Outcome.QUARANTINED)]

    def count(self, outcome: Outcome) -> int:
        return sum(1 for t in self.tenants.values() if t.outcome == outcome)

    def leave(self, reason: str) -> None:
        """Give every tenant not attempted this reason."""
        for slug, tenant in self.tenants.items():
            if tenant.outcome == Outcome.NOT_ATTEMPTED:
                self.tenants[slug] = replace(tenant, reason=reason)


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
        if settings.tenants is None:
            time.sleep(seconds)
            return None
        tenants = settings.tenants.client(concurrency=1)
        url = tenants.base(slug) + settings.tenants.healthz_path
        end = time.monotonic() + seconds
        while True:
            # A poll started just before the soak ends still gets its full time to answer.
            problem = health_problem(tenants.get(url, time.monotonic() + REQUEST_SECONDS))
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
    """The rollout, from the plan to its verdict. Each way it can end early is a Stop: its verdict,
    its message, and why the rest stay put."""
    driver = _Driver(settings, plan, cp, gate)
    try:
        if settings.mode == "fleet":
            driver.fleet()
        else:
            driver.scoped(watch)
    except Stop as stop:
        driver.result.verdict, driver.result.message = stop.verdict, stop.message
        driver.result.superseded = stop.superseded
        driver.result.leave(stop.leave)
    except (CPError, ContractError, runner.Terminated) as exc:
        raise BrokeOff(driver.broke_off(str(exc), acted=not isinstance(exc, NothingDone)), exc) from exc
    return driver.result


def _cannot_scope(body: dict, what: str) -> Stop:
    return Stop(
        RolloutVerdict.CANNOT_SCOPE,
        f"the control plane cannot scope a call: asked for only_slugs {listed(body['only_slugs'])} in a dry run, "
        f"{runner.plain(what)}; nothing was deployed: use mode: fleet with this control plane",
        "not attempted: the control plane cannot scope a call",
    )


def _said(answer: Answer) -> str:
    """What the control plane said of a call that failed, for the message that halts the rollout."""
    return f"; the control plane said: {answer.error}" if not answer.succeeded and answer.document.get("error") else ""


class _Driver:
    def __init__(self, settings: Settings, plan: Plan, cp: ControlPlane, gate: Gate | None) -> None:
        self.settings, self.plan, self.cp, self.gate = settings, plan, cp, gate
        self.result = Result({slug: Tenant(slug, Outcome.NOT_ATTEMPTED, "not attempted") for slug in plan.scope})
        self.result.notes.extend(plan.notes)
        self.in_flight: list[str] = []  # the tenants of the call under way
        self.step: str | None = None  # that call's step: canary, batch 2/3, fleet

    def take(self, tenants: list[Tenant]) -> None:
        for tenant in tenants:
            self.result.tenants[tenant.slug] = tenant
        self.in_flight = []

    def broke_off(self, cause: str, acted: bool) -> Result:
        """The result when a call broke off: its tenants' outcome is unknown (unless the control plane
        cannot have acted on it), the rest not attempted."""
        for slug in self.in_flight:
            if acted:
                self.result.tenants[slug] = Tenant(slug, Outcome.UNKNOWN, f"outcome unknown: {cause}", self.step)
            else:
                self.result.tenants[slug] = Tenant(slug, Outcome.NOT_ATTEMPTED, f"not attempted: {cause}", self.step)
        self.result.verdict, self.result.message = RolloutVerdict.FAILED, cause
        self.result.leave("not attempted: the rollout broke off")
        return self.result

    def call(self, body: dict, kind: str, slugs: list[str], what: str, step: str) -> Answer:
        """One call (`step` of the rollout), its rows judged into the result. Before a real call the gate
        is asked; a real call that answers for tenants outside its only_slugs has widened, and the
        rollout halts there; one that answers a row without a slug breaks the contract, and the rollout
        breaks off there."""
        dry = bool(body.get("dry_run"))
        if not dry and self.gate is not None:
            self.gate.before_real_call(what)
        self.in_flight, self.step = slugs, step
        answer = self.cp.redeploy(body, kind)
        tenants, outside = coverage.assess(slugs, answer.document, step=step, dry_run=dry, may_halt=kind == "fleet")
        self.take(tenants)
        nameless = unnamed(answer.rows)
        if nameless and "only_slugs" in body and dry:
            raise _cannot_scope(body, f"its dry run answered a row without a slug: {listed(nameless)}")
        if nameless and not dry:
            # A row that names no tenant may be any of them: those without a row of their own are unknown.
            self.in_flight = [t.slug for t in tenants if t.outcome == Outcome.UNKNOWN]
            raise ContractError(
                f"the control plane's answer to {what} breaks the contract: a row names no tenant (no slug): "
                f"{listed(nameless)}"
            )
        if outside and "only_slugs" in body:
            if dry:
                raise _cannot_scope(body, f"its dry run answered for {listed(outside)} too")
            self.result.outside += [s for s in outside if s not in self.result.outside]
            # Tenants of the rollout the widened call reached are judged by their rows, not left as
            # untouched: the control plane says what it did to them.
            reached = [s for s in outside if s in self.result.tenants]
            self.take(coverage.assess(reached, answer.document, step=step)[0])
            raise Stop(
                RolloutVerdict.WIDENED,
                f"the control plane widened {what} beyond its only_slugs, redeploying {listed(outside)}; "
                "halted: this control plane ignores only_slugs, so use mode: fleet with it",
                f"not attempted: the rollout halted when {what} widened",
            )
        if outside:
            self.result.notes.append(
                f"the control plane answered for tenants its dry run did not list: {listed(outside)}"
            )
        if dry and not answer.succeeded:  # a plan the control plane rejects would not hold
            raise Stop(RolloutVerdict.FAILED, f"control plane rejected the dry run of {what}: {answer.error}")
        return answer

    def probe(self, body: dict, slugs: list[str]) -> None:
        """Before the first real scoped call, its dry run must answer for exactly its tenants."""
        try:
            answer = self.cp.redeploy(planning.probe_body(body), "probe")
        except CPRefused as exc:
            raise _cannot_scope(body, f"it refused the call: {show(exc.said) if exc.said else exc}") from None
        if not answer.succeeded:
            raise _cannot_scope(body, f"its dry run failed (HTTP {answer.status}): {answer.error}")
        answered = [row["slug"] for row in answer.rows if row.get("slug")]
        extra = [s for s in answered if s not in slugs]
        missing = [s for s in slugs if s not in answered]
        nameless = unnamed(answer.rows)
        said = [f"answered for {listed(extra)} too"] if extra else []
        said += [f"answered a row without a slug: {listed(nameless)}"] if nameless else []
        said += [f"did not answer for {listed(missing)}"] if missing else []
        if said:
            raise _cannot_scope(body, "it " + ", ".join(said))

    def canary_must_pass(self, answer: Answer) -> None:
        """A canary that is not redeployed fails the rollout, whatever the budget; the control plane
        stops at a failed canary, so tenants with no row were not attempted."""
        canary = self.result.tenants[self.plan.canary]
        if canary.outcome == Outcome.REDEPLOYED:
            return
        reason = canary.reason or (answer.error if not answer.succeeded else "not verified on target")
        self.result.tenants[canary.slug] = replace(canary, outcome=Outcome.STRAGGLER, reason=reason)
        for slug, tenant in self.result.tenants.items():
            if tenant.outcome == Outcome.UNKNOWN:
                self.result.tenants[slug] = replace(
                    tenant, outcome=Outcome.NOT_ATTEMPTED, reason="not attempted: the canary failed"
                )
        raise Stop(
            RolloutVerdict.CANARY_FAILED,
            f"canary {self.plan.canary} failed: {runner.plain(reason)}; no other tenant was redeployed",
            "not attempted: the canary failed",
        )

    def scoped(self, watch: SoakWatch) -> None:
        settings, plan, result = self.settings, self.plan, self.result
        calls = len(plan.batches) + (1 if plan.canary else 0)
        if settings.dry_run:
            if plan.canary:
                self.call(planning.canary_body(settings, plan), "canary", [plan.canary], "the canary call", "canary")
            for number, batch in enumerate(plan.batches, start=1):
                body = planning.batch_body(settings, batch, plan.budget)
                self.call(body, "batch", batch, f"the batch {number} call", f"batch {number}/{len(plan.batches)}")
            self.planned(calls)
            return

        if plan.canary:
            self.probe(planning.canary_body(settings, plan), [plan.canary])
            runner.log(f"canary: {plan.canary}")
            body = planning.canary_body(settings, plan)
            answer = self.call(body, "canary", [plan.canary], "the canary call", "canary")
            self.canary_must_pass(answer)
            if not answer.succeeded:  # verified, yet the call failed: trust the failure
                raise Stop(
                    RolloutVerdict.FAILED,
                    f"control plane reported the canary call failed: {answer.error}",
                    "not attempted: the canary call failed",
                )
            if settings.soak_seconds:
                runner.log(f"soaking canary {plan.canary} for {settings.soak_seconds} s")
                trouble = watch(plan.canary, settings.soak_seconds)
                if trouble:
                    reason = f"turned unhealthy while soaking: {trouble}"
                    result.tenants[plan.canary] = replace(result.tenants[plan.canary], outcome=Outcome.STRAGGLER,
                                                          reason=reason)  # fmt: skip
                    raise Stop(
                        RolloutVerdict.CANARY_FAILED,
                        f"canary {plan.canary} turned unhealthy while soaking ({trouble}); "
                        "no other tenant was redeployed",
                        "not attempted: the canary failed its soak",
                    )
        else:
            self.probe(planning.batch_body(settings, plan.batches[0], plan.budget), plan.batches[0])

        spent: list[str] = []
        for number, batch in enumerate(plan.batches, start=1):
            unspent = plan.budget - len(spent)
            runner.log(f"batch {number}/{len(plan.batches)}: {listed(batch)} (budget left {unspent})")
            body = planning.batch_body(settings, batch, unspent)
            answer = self.call(body, "batch", batch, f"the batch {number} call", f"batch {number}/{len(plan.batches)}")
            spent += [s for s in batch if result.tenants[s].outcome == Outcome.STRAGGLER]
            halted = f"not attempted: the rollout halted at batch {number} of {len(plan.batches)}"
            if coverage.over_budget(len(spent), plan.budget):
                left = sum(len(b) for b in plan.batches[number:])
                raise Stop(
                    RolloutVerdict.SYSTEMIC,
                    f"systemic failure: {coverage.tolerance_message(len(spent), plan.budget)} "
                    f"({listed(spent)}); halted at batch {number} of {len(plan.batches)}, "
                    f"{counted(left, 'tenant')} left on their old build{_said(answer)}",
                    halted,
                )
            if not answer.succeeded and not self.failed_for_stragglers_only(answer, batch):
                raise Stop(
                    RolloutVerdict.FAILED,
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
        answer = self.call(body, "fleet", plan.scope, "the fleet call", "fleet")
        if settings.dry_run:
            self.planned(1)
            return
        if plan.canary:
            self.canary_must_pass(answer)
        spent = [s for s in plan.scope if s != plan.canary and result.tenants[s].outcome == Outcome.STRAGGLER]
        if coverage.over_budget(len(spent), plan.budget):
            tolerance = coverage.tolerance_message(len(spent), plan.budget)
            raise Stop(RolloutVerdict.SYSTEMIC, f"systemic failure: {tolerance} ({listed(spent)}){_said(answer)}")
        if not answer.succeeded and not self.failed_for_stragglers_only(answer, plan.scope):
            raise Stop(RolloutVerdict.FAILED, f"control plane reported the fleet call failed: {answer.error}")
        self.finish(spent)

    def failed_for_stragglers_only(self, answer: Answer, slugs: list[str]) -> bool:
        """An older control plane answers 500 whenever any tenant failed, whatever max_stragglers says.
        When its rows cover every tenant of the call and the only failures are stragglers the budget
        allows (checked before this), the rollout goes on, with a notice."""
        covered = {row.get("slug") for row in answer.rows} >= set(slugs)
        stragglers = [s for s in slugs if self.result.tenants[s].outcome == Outcome.STRAGGLER]
        if answer.status != 500 or not covered or not stragglers:
            return False
        runner.notice(
            f"the control plane answered HTTP 500 for stragglers the budget allows ({listed(stragglers)}), "
            "as an older control plane does; the rollout goes on"
        )
        return True

    def planned(self, calls: int) -> None:
        """A dry run's verdict, and its plan in the log: which tenants in which call, in order."""
        result, plan = self.result, self.plan
        result.verdict = RolloutVerdict.PLANNED
        result.message = (
            f"dry run: {counted(len(plan.scope), 'tenant')} planned in {counted(calls, 'call')}; nothing was deployed"
        )
        for line in planning.plan_lines(self.settings, plan):
            runner.log(f"plan: {line}")

    def finish(self, spent: list[str]) -> None:
        """The rollout shipped: its stragglers, within the budget, are quarantined."""
        result, plan = self.result, self.plan
        for slug in spent:
            result.tenants[slug] = replace(result.tenants[slug], outcome=Outcome.QUARANTINED)
        redeployed = result.count(Outcome.REDEPLOYED)
        result.verdict = RolloutVerdict.SHIPPED_WITH_QUARANTINE if spent else RolloutVerdict.SHIPPED
        result.message = f"shipped {self.settings.target_tag} to {redeployed} of {counted(len(plan.scope), 'tenant')}"
        if spent:
            result.message += (
                f"; {len(spent)} quarantined within the budget of {plan.budget} ({listed(spent)}): recover individually"
            )
