"""One step's run, written once for both steps: read the inputs, work under the signal guard (a
cancelled job's SIGINT or SIGTERM stops the work), turn whatever stopped the work into a one-line cause
and an exit code, then, on every path, write the report, set the outputs, announce the verdict and
write the summary, which no further signal cuts short."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from fleet import inputs, report, runner
from fleet.contract import BadAnswer, ContractError, PeerFailed
from fleet.inputs import StepInputs
from fleet.runner import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

Happened = TypeVar("Happened")  # what a step's work returns: what happened


@dataclass(frozen=True)
class Failure:
    """Why the work stopped short: one line, and the exit code it earns."""

    message: str
    code: int
    cancelled: bool = False  # stopped by the runner's signal: what was learned so far stands


@dataclass
class Ending:
    """Everything a step leaves behind."""

    ok: bool
    message: str
    report_path: str
    report: dict[str, Any]
    outputs: dict[str, str]
    summary: str
    warnings: list[str] = field(default_factory=list)
    error: bool = True  # a failure's message is the ::error:: line; False: a warning (said already)
    then: list[str] | None = None  # the arguments of a step that follows in this process, if one does


class Partial(Exception):
    """The work stopped short: `so_far` is what it learned up to then, `cause` what stopped it."""

    def __init__(self, so_far: object, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.so_far = so_far
        self.cause = cause


class Step(ABC, Generic[Happened]):
    usage: inputs.Usage
    names: Sequence[str]

    @abstractmethod
    def work(self, given: StepInputs) -> Happened:
        """Do the step's work and return what happened; a failure part-way raises Partial with what was
        learned, so that it is still reported."""

    @abstractmethod
    def end(self, given: StepInputs, outcome: Happened | None, failure: Failure | None) -> Ending:
        """What the step leaves behind, from what happened (as far as it got) and why it stopped (if it did)."""

    def bad_input_code(self, so_far: Happened | None) -> int:
        """The exit code of a contract break: bad input, unless something was already changed."""
        return EXIT_BAD_INPUT

    def stopped(self, signal: runner.Terminated, so_far: Happened | None) -> str:
        return str(signal)


def run(step: Step[Happened], argv: Sequence[str] | None) -> int:
    return conclude(step, argv)[0]


def conclude(step: Step[Happened], argv: Sequence[str] | None) -> tuple[int, Ending | None]:
    """Run the step; its exit code, and what it left behind (None when it only answered --help)."""
    try:
        given = inputs.read(step.usage, step.names, argv)
    except BrokenPipeError:  # `--help | head`: whoever read the output went away
        runner.stop_writing()
        return EXIT_OK, None
    with runner.signals_stop() as guard:
        worked = _work(step, given, guard)
        outcome, failure = worked
        ending = step.end(given, outcome, failure)
        code = EXIT_OK if ending.ok else failure.code if failure else EXIT_FAILED
        if code == EXIT_BAD_INPUT and os.path.exists(ending.report_path):
            # Exit 2 means nothing moved: the report an earlier run left at this path is kept.
            ending.report_path = report.refused_path(ending.report_path)
            if "report-path" in ending.outputs:
                ending.outputs["report-path"] = ending.report_path
        _leave(ending)
    return code, ending


def _work(step: Step[Happened], given: StepInputs, guard: runner.SignalGuard) -> tuple[Happened | None, Failure | None]:
    """The step's work under the signal guard: what happened, and why it stopped short if it did."""
    try:
        try:
            return step.work(given), None
        finally:
            guard.hold()  # from here a signal is only noted: what the step leaves is written whole
    except Partial as partial:
        so_far = cast("Happened | None", partial.so_far)
        return so_far, _failure(step, partial.cause, so_far)
    except (Exception, runner.Terminated) as exc:  # noqa: BLE001 - the report and outputs are still written
        return None, _failure(step, exc, None)


def _failure(step: Step[Happened], exc: BaseException, so_far: Happened | None) -> Failure:
    """Whatever stopped the work, as a one-line cause and the exit code it earns."""
    if isinstance(exc, (BadAnswer, PeerFailed)):  # a peer's fault: nothing says nothing moved
        return Failure(str(exc), EXIT_FAILED)
    if isinstance(exc, ContractError):  # the step's input (BadInput), or a check of it
        return Failure(str(exc), step.bad_input_code(so_far))
    if isinstance(exc, runner.Terminated):
        return Failure(step.stopped(exc, so_far), exc.code, cancelled=True)
    return Failure(runner.internal_error(exc), EXIT_FAILED)


def _leave(ending: Ending) -> None:
    """Write what the step leaves, on every path: the report, the outputs, the verdict and the summary."""
    report.write(ending.report_path, ending.report)
    runner.set_outputs(ending.outputs)
    for line in ending.warnings:
        runner.warning(line)
    say = runner.log if ending.ok else runner.error if ending.error else runner.warning
    say(runner.plain(ending.message))
    runner.write_summary(ending.summary)
    runner.log(f"report: {runner.plain(ending.report_path)}")
