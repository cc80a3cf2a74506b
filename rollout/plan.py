"""Pure decisions made before any redeploy: settings from inputs, the straggler budget, the scope, the
batches, and the body of each call."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fleet import contract, inputs
from fleet.contract import BadInput, show
from fleet.markdown import MORE, SHOWN
from fleet.tenant import REQUEST_SECONDS, TenantAccess
from fleet.vocabulary import Mode, counted, listed
from rollout.waves import CapSpec, Waves, parse_cap, sizes_line
from verify.settings import settings_from as verify_settings

BUDGET_ENV = "PROD_AUTO_DEPLOY_MAX_STRAGGLERS"
# What an image reference accepts as a tag.
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class BudgetSpec:
    """The tolerance as asked for: an absolute count, or a percentage of the scope."""

    text: str
    source: str  # input | env | default
    count: int | None = None
    percent: Decimal | None = None

    def resolve(self, scope_size: int) -> int:
        if self.percent is None:
            return self.count or 0
        return math.floor(self.percent * scope_size / 100)


def parse_budget(text: str, source: str) -> BudgetSpec:
    what = "max-stragglers" if source != "env" else BUDGET_ENV
    if re.fullmatch(r"\d{1,9}", text):
        return BudgetSpec(text, source, count=int(text))
    match = re.fullmatch(r"(\d{1,3}(?:\.\d{1,4})?)%", text)
    if match and Decimal(match.group(1)) <= 100:
        return BudgetSpec(text, source, percent=Decimal(match.group(1)))
    raise BadInput(f"{what} must be an integer >= 0 or a percentage of the scope like 2% or 2.5%: got {show(text)}")


DEFAULT_BUDGET = 1


def choose_budget(given: str, environ: Mapping[str, str]) -> BudgetSpec:
    """The input wins, then PROD_AUTO_DEPLOY_MAX_STRAGGLERS, then 1: the same in the action and on the
    command line."""
    if given:
        return parse_budget(given, "input")
    env = environ.get(BUDGET_ENV, "").strip()
    if env:
        return parse_budget(env, "env")
    return BudgetSpec(str(DEFAULT_BUDGET), "default", count=DEFAULT_BUDGET)


@dataclass(frozen=True)
class Settings:
    cp_url: str
    target_tag: str
    expected_sha: str | None
    tenant_access: TenantAccess | None  # None: no tenant URL template, so no soak polling and no verify
    canary_slug: str
    soak_seconds: int
    batch_size: int
    batch_growth: Decimal  # waves: 1 keeps fixed batches
    max_batch: CapSpec
    budget: BudgetSpec
    mode: str
    slugs: list[str] | None
    dry_run: bool
    poll_interval: float
    cp_timeout: float
    allow_http: bool
    ca_bundle: str | None
    api_url: str
    superseded_check: bool
    kill_switch_variable: str
    verify_after: bool  # verify in the same run (the recovery command)
    given: Mapping[str, str] = field(default_factory=dict, compare=False)  # the strings: the recovery command's


def settings_from(values: Mapping[str, str], environ: Mapping[str, str]) -> Settings:
    """Typed settings from the inputs' strings; the first bad one is a ContractError naming it. With a
    tenant URL template, verify follows: its inputs are checked here too, before the fleet moves."""
    read = inputs.Typed(values)
    allow_http = read.boolean("allow-http")
    inputs.required("cp-url", values["cp-url"])
    cp_url = read.url("cp-url", allow_http)
    tag = inputs.required("target-tag", read.text("target-tag"))
    if not TAG.fullmatch(tag):
        raise BadInput(f"target-tag must be an image tag ([A-Za-z0-9_][A-Za-z0-9_.-]*): got {show(tag)}")
    canary = read.text("canary-slug")
    if canary:
        contract.check_slug(canary, "canary-slug")
    slugs = read.slugs("slugs")
    access = inputs.tenant_access(values)
    if access is not None:
        verify_settings(values)  # verify's inputs fail here, before the fleet moves
    verify_after = read.boolean("verify")
    if verify_after and access is None:
        raise BadInput("verify true needs tenant-url-template: the tenants to poll")
    sha = read.text("expected-sha")
    growth, cap = read.number("batch-growth"), parse_cap(read.text("max-batch-size"))
    if read.text("mode") == Mode.FLEET and (growth != 1 or cap.text):
        raise BadInput(
            "batch-growth and max-batch-size need mode: scoped: in fleet mode the control plane drives the batches"
        )
    return Settings(
        cp_url=cp_url,
        target_tag=tag,
        expected_sha=inputs.expected_sha(sha) if sha else None,
        tenant_access=access,
        canary_slug=canary,
        soak_seconds=read.integer("soak-seconds"),
        batch_size=read.integer("batch-size"),
        batch_growth=growth,
        max_batch=cap,
        budget=choose_budget(read.text("max-stragglers"), environ),
        mode=read.text("mode"),
        slugs=slugs,
        dry_run=read.boolean("dry-run"),
        poll_interval=read.seconds("poll-interval-seconds"),
        cp_timeout=read.seconds("cp-timeout-seconds"),
        allow_http=allow_http,
        ca_bundle=inputs.ca_bundle(read.file("ca-bundle")),
        api_url=read.url("api-url", allow_http),
        superseded_check=read.boolean("superseded-check"),
        kill_switch_variable=inputs.variable_name("kill-switch-variable", read.text("kill-switch-variable")),
        verify_after=verify_after,
        given=dict(values),
    )


@dataclass(frozen=True)
class Batch:
    """One batch of the schedule: its place (`number` of `of`, the batches there are if nothing more
    straggles), where it starts among the schedule's tenants, and its tenants, in fleet order."""

    number: int
    of: int
    start: int
    slugs: list[str]

    @property
    def step(self) -> str:
        """The rollout's own name for this call, as the log and the report's `phase` say it."""
        return f"batch {self.number}/{self.of}"

    @property
    def call(self) -> str:
        return f"the batch {self.number} call"


@dataclass(frozen=True)
class Schedule:
    """The batches after the canary: their tenants in order and the rule that sizes each batch (waves).
    The plan makes it; the drive walks it, telling it after each batch whether that one quarantined a
    straggler (which sets the next back to batch-size). Iterated, it is the plan if nothing straggles."""

    tenants: tuple[str, ...]
    waves: Waves

    def first(self) -> Batch | None:
        return self._batch(1, 0, None, straggled=False)

    def after(self, batch: Batch, *, straggled: bool) -> Batch | None:
        """The batch after `batch`, None when none is left."""
        return self._batch(batch.number + 1, batch.start + len(batch.slugs), len(batch.slugs), straggled=straggled)

    def _batch(self, number: int, start: int, previous: int | None, *, straggled: bool) -> Batch | None:
        left = len(self.tenants) - start
        if left <= 0:
            return None
        size = self.waves.next_size(previous, left, straggled=straggled)
        ahead = self.waves.count(left, previous, straggled=straggled)
        return Batch(number, number - 1 + ahead, start, list(self.tenants[start : start + size]))

    def __iter__(self) -> Iterator[Batch]:
        batch = self.first()
        while batch is not None:
            yield batch
            batch = self.after(batch, straggled=False)

    def __len__(self) -> int:
        return self.waves.count(len(self.tenants))

    def sizes(self) -> list[int]:
        """The batch sizes if nothing straggles."""
        return self.waves.sizes(len(self.tenants))

    def most_calls(self) -> int:
        """The most batches it can take, were every batch the smallest (stragglers set growth back)."""
        return math.ceil(len(self.tenants) / self.waves.smallest) if self.tenants else 0

    def left_after(self, batch: Batch) -> int:
        """How many tenants the batches after `batch` hold: they stay on their old build if it halts."""
        return len(self.tenants) - batch.start - len(batch.slugs)


@dataclass
class Plan:
    mode: Mode
    scope: list[str]  # every tenant this rollout covers, canary included, in fleet order
    canary: str  # "" when there is none, or it is outside the scope
    schedule: Schedule
    budget: int
    fleet_size: int
    notes: list[str] = field(default_factory=list)

    @property
    def batches(self) -> list[list[str]]:
        """The batches if nothing straggles."""
        return [batch.slugs for batch in self.schedule]


def make_plan(settings: Settings, fleet: list[str]) -> Plan:
    """Scope, canary and batches from the validated fleet; unknown names fail before any call."""
    notes: list[str] = []
    scope = contract.narrow(fleet, settings.slugs) if settings.slugs is not None else list(fleet)
    canary = settings.canary_slug
    if canary and canary not in fleet:
        raise BadInput(f"canary-slug {show(canary)} is not in the control plane's fleet")
    if canary and canary not in scope:
        notes.append(f"canary {canary} is outside the scope (slugs) and is not redeployed")
        canary = ""
    waves = Waves(settings.batch_size, settings.batch_growth, settings.max_batch.resolve(len(scope)))
    schedule = Schedule(tuple(s for s in scope if s != canary), waves)
    mode = Mode(settings.mode)
    return Plan(mode, scope, canary, schedule, settings.budget.resolve(len(scope)), len(fleet), notes)


RUN_MARGIN_SECONDS = 60.0


def run_seconds(settings: Settings, plan: Plan) -> float:
    """The rollout's deadline after planning: each call (the scope probe included) may take
    cp-timeout-seconds, the canary soak its soak-seconds plus one health request, and a margin."""
    # Stragglers set growth back, so a growing schedule can take up to as many calls as its smallest batches.
    calls = 1 if settings.mode == "fleet" else plan.schedule.most_calls() + (1 if plan.canary else 0)
    calls += 1 if probes(settings) else 0
    soaks = plan.canary and settings.mode == "scoped" and settings.soak_seconds
    soak = settings.soak_seconds + REQUEST_SECONDS if soaks else 0
    return calls * settings.cp_timeout + soak + RUN_MARGIN_SECONDS


def probes(settings: Settings) -> bool:
    """Whether the first real call carries only_slugs, and so needs a scoped dry run before it."""
    return not settings.dry_run and (settings.mode == "scoped" or settings.slugs is not None)


def _base_body(settings: Settings) -> dict[str, Any]:
    # The real caller always confirms: the control plane refuses an unscoped call without it.
    return {"target_tag": settings.target_tag, "batch_size": settings.batch_size, "dry_run": settings.dry_run,
            "confirm": True}  # fmt: skip


def enumeration_body(settings: Settings) -> dict[str, Any]:
    """The unscoped dry run whose rows are the fleet: the control plane has no listing endpoint."""
    return _base_body(settings) | {"dry_run": True}


def probe_body(body: dict[str, Any]) -> dict[str, Any]:
    """A scoped call's dry run: a control plane that can scope answers for exactly its only_slugs."""
    return body | {"dry_run": True}


def canary_body(settings: Settings, plan: Plan) -> dict[str, Any]:
    # The action soaks the canary itself, watching its health; the control plane need not wait.
    return _base_body(settings) | {
        "only_slugs": [plan.canary],
        "canary_slug": plan.canary,
        "max_stragglers": 0,
        "soak_seconds": 0,
    }


def batch_body(settings: Settings, batch: list[str], unspent: int) -> dict[str, Any]:
    return _base_body(settings) | {"only_slugs": batch, "max_stragglers": unspent, "soak_seconds": 0}


def fleet_body(settings: Settings, plan: Plan) -> dict[str, Any]:
    body = _base_body(settings) | {
        "canary_slug": plan.canary,
        "soak_seconds": settings.soak_seconds,
        "max_stragglers": plan.budget,
    }
    if settings.slugs is not None:
        body["only_slugs"] = plan.scope
    return body


def plan_record(settings: Settings, plan: Plan | None) -> dict[str, Any]:
    """The plan as the report holds it."""
    record: dict[str, Any] = {
        "mode": settings.mode,
        "target_tag": settings.target_tag,
        "expected_sha": settings.expected_sha,
        "canary_slug": settings.canary_slug,
        "soak_seconds": settings.soak_seconds,
        "batch_size": settings.batch_size,
        "batch_growth": str(settings.batch_growth),
        "max_batch_size": settings.max_batch.text,
        "dry_run": settings.dry_run,
        "budget": {"requested": settings.budget.text, "source": settings.budget.source},
        "tenant_url_template": settings.tenant_access.template if settings.tenant_access else "",
    }
    if plan is not None:
        record["budget"]["resolved"] = plan.budget
        record.update(
            deadline_seconds=run_seconds(settings, plan),
            canary_in_scope=bool(plan.canary),
            fleet_size=plan.fleet_size,
            scope=plan.scope,
            batches=plan.batches,
            notes=plan.notes,
        )
    return record


def plan_lines(settings: Settings, plan: Plan) -> list[str]:
    """The calls the plan makes, in order, one line each: which tenants go in which call. Past SHOWN calls
    or SHOWN tenants in one call the rest is counted, not named: the report's plan holds every batch."""
    if plan.mode == Mode.FLEET:
        canary = f"canary {plan.canary}, then " if plan.canary else ""
        return [f"call 1 (fleet, the control plane drives): {canary}{counted(len(plan.scope), 'tenant')} in batches of "
                f"{settings.batch_size}: {listed(plan.scope, SHOWN, MORE)}"]  # fmt: skip
    lines = [f"call 1 (canary): {plan.canary}"] if plan.canary else []
    for batch in list(plan.schedule)[:SHOWN]:
        lines.append(f"call {len(lines) + 1} (batch {batch.number}): {listed(batch.slugs, SHOWN, MORE)}")
    if len(plan.schedule) > SHOWN:
        lines.append(f"… and {counted(len(plan.schedule) - SHOWN, 'more call')}, see the report")
    return lines


def schedule_line(plan: Plan) -> str:
    """The batches' sizes if nothing straggles (`3, 6, 12, …, 384, 235`), and how many calls they take."""
    sizes = plan.schedule.sizes()
    return f"batch sizes if nothing straggles: {sizes_line(sizes)}: {counted(len(sizes), 'call')}"
