"""`python -m rollout`: the rollout step, as the action runs it and on its own (flags)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from fleet import inputs, report, runner, step
from fleet.cp import ControlPlane
from fleet.inputs import StepInputs
from fleet.runner import EXIT_BAD_INPUT, EXIT_FAILED
from fleet.vocabulary import Outcome, RolloutVerdict, counted, listed
from rollout import drive, gate, summary
from rollout.plan import Plan, Settings, enumeration_body, make_plan, plan_record, run_seconds, settings_from
from verify import cli as verify_cli

NAMES = inputs.flags(inputs.ROLLOUT)

# Verify's flags when the rollout runs it in the same process (the recovery command): the inputs the
# action's verify step reads, with the rollout's values.
VERIFY_NAMES = inputs.action_flags(inputs.VERIFY)


class Rollout(step.Step):
    usage = inputs.Usage(
        prog="python -m rollout",
        description="Roll a build out across the fleet through the control plane: the canary first, then "
        "batches, quarantining up to max-stragglers tenants that fail.",
        script="fleet-rollout",
        required=("cp-url", "target-tag"),
        epilog="The control-plane token is read from the environment variable CP_TOKEN (required), and the "
        "forge's token from API_TOKEN, never from a flag. The repository and branch come from "
        "GITHUB_REPOSITORY and GITHUB_REF_NAME.",
    )
    names = NAMES

    def __init__(self) -> None:
        self.started = report.now()
        self.settings: Settings | None = None
        self.plan: Plan | None = None
        self.cp: ControlPlane | None = None
        self.result: drive.Result | None = None
        self.halted: gate.Stop | None = None
        self.values: dict[str, str] = {}
        self.report_path = ""
        self.follows = "false"

    def work(self, given: StepInputs) -> None:
        settings = self.settings = settings_from(given.values, os.environ)
        token = given.check_token()
        try:
            gate.check_environment(os.environ)  # before any call: the switch means nothing at all is sent
        except gate.Stop as stop:
            self.halted = stop
            return
        checks = gate.gate_for(settings, given.api_token, os.environ)
        cp = self.cp = ControlPlane(settings.cp_url, token, timeout=settings.cp_timeout, ca_bundle=settings.ca_bundle)
        plan = self.plan = make_plan(settings, cp.enumerate(enumeration_body(settings)))
        cp.deadline = time.monotonic() + run_seconds(settings, plan)  # no call outlives the rollout's
        _log_plan(settings, plan)
        try:
            self.result = drive.run(settings, plan, cp, drive.health_watch(settings), checks)
        except drive.BrokeOff as broke:
            self.result = broke.result
            raise broke.cause from None

    def bad_input_code(self) -> int:
        # An answer that breaks the contract after a real call is a failed rollout, not bad input.
        return EXIT_FAILED if self.cp is not None and self.cp.sent_real_call else EXIT_BAD_INPUT

    def stopped(self, signal: runner.Terminated) -> str:
        if self.cp is None or not self.cp.sent_real_call:
            return f"{signal} before the rollout sent a real call; nothing was deployed"
        unknown = [t.slug for t in self.result.tenants.values() if t.outcome == Outcome.UNKNOWN] if self.result else []
        if not unknown:
            return f"{signal} between two calls of the rollout; no call was under way"
        named = listed(unknown)
        return f"{signal} during a call of the rollout; tenants in the call under way have an unknown outcome: {named}"

    def end(self, given: StepInputs, failure: step.Failure | None) -> step.Ending:
        settings, plan, result = self.settings, self.plan, self.result
        if failure is not None:
            verdict = RolloutVerdict.CANCELLED if failure.cancelled else RolloutVerdict.FAILED
            message = failure.message
            if result is not None:
                result.verdict, result.message = verdict, message
                if failure.cancelled:
                    result.leave("not attempted: the job was cancelled")
        elif self.halted is not None:
            verdict, message = self.halted.verdict, self.halted.message
        else:
            assert result is not None
            verdict, message = result.verdict, result.message
        ok = failure is None and verdict.ok
        self.values, self.follows = given.values, self.verify_follows(ok)
        self.report_path = given.values["report"] or report.default_path()
        doc = self._report(ok, verdict, message)
        stragglers = doc.get("stragglers", [])
        warnings = []
        for tenant in result.tenants.values() if result else []:
            if tenant.outcome == Outcome.QUARANTINED:
                warnings.append(f"tenant {tenant.slug} quarantined, needs individual recovery: {tenant.reason}")
            elif tenant.outcome == Outcome.STRAGGLER:
                warnings.append(f"tenant {tenant.slug} straggler: {tenant.reason}")
        return step.Ending(
            ok=ok,
            message=message,
            report_path=self.report_path,
            report=doc,
            outputs={
                "ok": "true" if ok else "false",
                "superseded": result.superseded if result else "",
                "stragglers": json.dumps(stragglers),
                "quarantined-count": str(len(stragglers)),
                "report-path": self.report_path,
                # Whether verify follows, and how: the action's condition, decided in one place.
                "verify": self.follows,
            },
            summary=summary.render(verdict, message, settings, plan, result),
            warnings=[runner.plain(line) for line in warnings],
        )

    def verify_follows(self, ok: bool) -> str:
        """`true`: verify the shipped fleet; `survey`: the rollout touched the fleet and then failed, so
        read every tenant and report who runs which build; `false`: nothing to verify."""
        settings, result = self.settings, self.result
        if runner.stopped():  # a cancelled job starts nothing new
            return "false"
        if settings is None or settings.tenants is None or settings.dry_run or result is None:
            return "false"
        if ok:
            return "false" if result.verdict == RolloutVerdict.SUPERSEDED else "true"
        return "survey" if self.cp is not None and self.cp.sent_real_call else "false"

    def _report(self, ok: bool, verdict: RolloutVerdict, message: str) -> dict[str, Any]:
        settings, result, cp = self.settings, self.result, self.cp
        doc: dict[str, Any] = {"schema_version": 1, "ok": ok, "message": message}
        if settings is not None:
            doc["plan"] = plan_record(settings, self.plan)
        doc["calls"] = cp.calls if cp is not None else []
        if result is not None:
            doc["tenants"] = [t.record() for t in result.tenants.values()]
            if result.stragglers():
                doc["stragglers"] = result.stragglers()
                if settings is not None:  # the one command that redeploys them strictly and verifies them
                    doc["recovery"] = summary.recovery_command(settings, result.stragglers())
            if result.outside:
                doc["outside_scope"] = result.outside
        doc["rollout"] = {
            "ok": ok,
            "verdict": verdict,
            "message": message,
            "touched": cp is not None and cp.sent_real_call,
            "superseded": result.superseded if result else "",
            "started_at": self.started,
            "finished_at": report.now(),
        }
        return doc


def _log_plan(settings: Settings, plan: Plan) -> None:
    b = settings.budget
    runner.log(
        f"plan: {settings.mode} rollout of {settings.target_tag} to {len(plan.scope)} of "
        f"{counted(plan.fleet_size, 'tenant')}; canary {plan.canary or 'none'}; "
        f"{counted(len(plan.batches), 'batch')} of up to {settings.batch_size}; "
        f"straggler budget {plan.budget} (from {b.source} {b.text!r})" + ("; dry run" if settings.dry_run else "")
    )
    runner.log(
        f"plan: every call may take up to {settings.cp_timeout:g} s (cp-timeout-seconds), so the rollout ends at "
        f"the latest {run_seconds(settings, plan):g} s from now"
    )
    for note in plan.notes:
        runner.log(f"note: {runner.plain(note)}")


def main(argv: Sequence[str] | None = None) -> int:
    rollout = Rollout()
    code = step.run(rollout, argv)
    if rollout.settings is None or not rollout.settings.verify_after:
        return code
    stopped = runner.stopped()
    if stopped is not None:  # the job was cancelled: verify, which was to follow, does not start
        return code or stopped.code
    if rollout.follows == "false":
        return code
    # The recovery command: verify the tenants just redeployed, from the report just written.
    flags = [arg for name in VERIFY_NAMES for arg in (f"--{name}", rollout.values[name])]
    checked = verify_cli.main(["--report", rollout.report_path, *flags])
    return code or checked


if __name__ == "__main__":
    sys.exit(main())
