"""One step's run, written once for both steps: read the inputs, work under the signal guard (a
cancelled job's SIGINT or SIGTERM stops the work), turn whatever stopped the work into a one-line cause
and an exit code, then, on every path, write the report, set the outputs, announce the verdict and
write the summary, which no further signal cuts short."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet import inputs, report, runner
from fleet.contract import ContractError
from fleet.cp import CPError
from fleet.inputs import StepInputs
from fleet.runner import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK


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


class Step(ABC):
    usage: inputs.Usage
    names: Sequence[str]

    @abstractmethod
    def work(self, given: StepInputs) -> None:
        """Do the step's work, keeping what it learns on `self` as it goes, so that a failure part-way
        still reports it."""

    @abstractmethod
    def end(self, given: StepInputs, failure: Failure | None) -> Ending:
        """What the step leaves behind, from what it learned and why it stopped (if it did)."""

    def bad_input_code(self) -> int:
        """The exit code of a contract break: bad input, unless something was already changed."""
        return EXIT_BAD_INPUT

    def stopped(self, signal: runner.Terminated) -> str:
        return str(signal)


def run(step: Step, argv: Sequence[str] | None) -> int:
    try:
        given = inputs.read(step.usage, step.names, argv)
    except BrokenPipeError:  # `--help | head`: whoever read the output went away
        runner.stop_writing()
        return EXIT_OK
    failure: Failure | None = None
    with runner.signals_stop() as guard:
        try:
            try:
                step.work(given)
            finally:
                guard.hold()  # from here a signal is only noted: what the step leaves is written whole
        except ContractError as exc:
            failure = Failure(str(exc), step.bad_input_code())
        except CPError as exc:
            failure = Failure(str(exc), EXIT_FAILED)
        except runner.Terminated as exc:
            failure = Failure(step.stopped(exc), exc.code, cancelled=True)
        except Exception as exc:  # noqa: BLE001 - the report and outputs are still written
            failure = Failure(runner.internal_error(exc), EXIT_FAILED)
        ending = step.end(given, failure)
        code = EXIT_OK if ending.ok else failure.code if failure else EXIT_FAILED
        if code == EXIT_BAD_INPUT and os.path.exists(ending.report_path):
            # Exit 2 means nothing moved: the report an earlier run left at this path is kept.
            ending.report_path = report.refused_path(ending.report_path)
            if "report-path" in ending.outputs:
                ending.outputs["report-path"] = ending.report_path
        report.write(ending.report_path, ending.report)
        runner.set_outputs(ending.outputs)
        for line in ending.warnings:
            runner.warning(line)
        say = runner.log if ending.ok else runner.error if ending.error else runner.warning
        say(runner.plain(ending.message))
        runner.write_summary(ending.summary)
        runner.log(f"report: {runner.plain(ending.report_path)}")
    return code
