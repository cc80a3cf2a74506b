"""`python -m rollout`: the rollout step, as the action runs it and on its own (flags). Its work returns
what happened (Rolled); what the step leaves behind is a pure function of that."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from fleet import inputs, ledger, quarantine, report, runner, step
from fleet.cp import ControlPlane
from fleet.forge import Forge, Where
from fleet.inputs import StepInputs
from fleet.quarantine import LedgerSettings, Record
from fleet.runner import EXIT_BAD_INPUT, EXIT_FAILED
from fleet.verdict import SHIPPING, RolloutEnd, RunVerdict, run_verdict
from fleet.vocabulary import Follow, Outcome, RolloutVerdict, counted, listed
from rollout import drive, gate, summary
from rollout.drive import Result
from rollout.gate import End
from rollout.plan import Plan, Settings, enumeration_body, make_plan, plan_record, run_seconds, settings_from
from verify import cli as verify_cli

NAMES = inputs.flags(inputs.ROLLOUT)

# Verify's flags when the rollout runs it in the same process (the recovery command): the inputs the
# action's verify step reads, with the rollout's values.
VERIFY_NAMES = inputs.action_flags(inputs.VERIFY)


@dataclass(frozen=True)
class Rolled:
    """What the rollout step did, as far as it got: its settings, its plan, the control-plane client
    (its calls, and whether a real one went out), and the drive's result, or the End the environment's
    kill switch made before anything was sent; and what the quarantine ledger recorded, when it is kept."""

    settings: Settings | None = None
    plan: Plan | None = None
    cp: ControlPlane | None = None
    result: Result | None = None
    halted: End | None = None
    ledger: Record | None = None

    @property
    def touched(self) -> bool:
        return self.cp is not None and self.cp.sent_real_call


class Rollout(step.Step[Rolled]):
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

    def work(self, given: StepInputs) -> Rolled:
        settings = settings_from(given.values, os.environ)
        keeping = quarantine.ledger_settings(given.values)
        rolled = Rolled(settings)
        try:
            token = given.check_token()
            gate.check_environment(os.environ)  # before any call: the switch means nothing at all is sent
            checks = gate.gate_for(settings, given.api_token, os.environ)
            cp = ControlPlane(settings.cp_url, token, timeout=settings.cp_timeout, ca_bundle=settings.ca_bundle)
            rolled = replace(rolled, cp=cp)
            plan = make_plan(settings, cp.enumerate(enumeration_body(settings)))
            rolled = replace(rolled, plan=plan)
            cp.deadline = time.monotonic() + run_seconds(settings, plan)  # no call outlives the rollout's
            _log_plan(settings, plan)
            rolled = replace(rolled, result=drive.run(settings, plan, cp, drive.health_watch(settings), checks))
            return replace(rolled, ledger=_keep(given, settings, keeping, rolled.result))
        except gate.Stop as stop:
            return replace(rolled, halted=stop.end)
        except drive.BrokeOff as broke:
            raise step.Partial(replace(rolled, result=broke.result), broke.cause) from None
        except (Exception, runner.Terminated) as exc:  # noqa: BLE001 - what was learned goes with the cause
            raise step.Partial(rolled, exc) from None

    def bad_input_code(self, so_far: Rolled | None) -> int:
        # An answer that breaks the contract after a real call is a failed rollout, not bad input.
        return EXIT_FAILED if so_far is not None and so_far.touched else EXIT_BAD_INPUT

    def stopped(self, signal: runner.Terminated, so_far: Rolled | None) -> str:
        if so_far is None or not so_far.touched:
            return f"{signal} before the rollout sent a real call; nothing was deployed"
        result = so_far.result
        unknown = [t.slug for t in result.outcomes.values() if t.outcome == Outcome.UNKNOWN] if result else []
        if not unknown:
            return f"{signal} between two calls of the rollout; no call was under way"
        named = listed(unknown)
        return f"{signal} during a call of the rollout; tenants in the call under way have an unknown outcome: {named}"

    def end(self, given: StepInputs, outcome: Rolled | None, failure: step.Failure | None) -> step.Ending:
        rolled = outcome or Rolled()
        result, ended = _ended(rolled, failure)
        settings = rolled.settings
        tenants_known = settings is not None and settings.tenant_access is not None
        run = run_verdict(RolloutEnd(ended.verdict, ended.message, rolled.touched, tenants_known), None)
        path = given.values["report"] or report.default_path()
        doc = _report(rolled, result, ended, run, self.started)
        stragglers = doc.get("stragglers", [])
        return step.Ending(
            ok=run.ok,
            message=run.message,
            report_path=path,
            report=doc,
            outputs={
                "ok": "true" if run.ok else "false",
                "superseded": ended.superseded_by,
                "stragglers": json.dumps(stragglers),
                "quarantined-count": str(len(stragglers)),
                "report-path": path,
                # What runs next, as fleet.verdict decided it: verify's `if:` in the action reads it.
                "verify": run.next,
            },
            summary=summary.render(run, settings, rolled.plan, result) + quarantine.section(rolled.ledger),
            warnings=_warnings(result) + quarantine.warnings(rolled.ledger),
            then=_then(given, settings, run),
        )


def _ended(rolled: Rolled, failure: step.Failure | None) -> tuple[Result | None, End]:
    """The drive's result, and how the rollout ended: as the drive or the kill switch said, or, when the
    work stopped short, failed or cancelled with the cause as its message."""
    result = rolled.result
    if failure is not None:
        verdict = RolloutVerdict.CANCELLED if failure.cancelled else RolloutVerdict.FAILED
        leave = "not attempted: the job was cancelled" if failure.cancelled else ""
        return (result.ended(verdict, failure.message, leave) if result else None), End(verdict, failure.message)
    if rolled.halted is not None:
        return result, rolled.halted
    assert result is not None
    chronic = rolled.ledger.escalation() if rolled.ledger is not None and result.verdict in SHIPPING else []
    if chronic:  # the fleet shipped; then the tolerance's limit fails the step
        message = f"{result.message}; a chronic straggler: {'; '.join(chronic)}"
        return result, End(RolloutVerdict.SHIPPED_WITH_CHRONIC, message, superseded_by=result.superseded_by)
    return result, End(result.verdict, result.message, superseded_by=result.superseded_by)


def _keep(given: StepInputs, settings: Settings, keeping: LedgerSettings, result: Result | None) -> Record | None:
    """The quarantine ledger after the drive: the rollout opens or comments on each quarantined tenant's
    issue, and closes the issues of the tenants it redeployed when no verify follows (else verify does,
    for those it verifies). It never raises: a failure is its record's warning."""
    if not keeping.on or result is None:
        return None
    verify_follows = settings.tenant_access is not None and (given.action or settings.verify_after)
    forge = Forge(settings.api_url, given.api_token, allow_http=settings.allow_http, ca_bundle=settings.ca_bundle)
    return quarantine.keep(
        forge, Where.from_environment(os.environ), keeping, _ledger_run(settings, result, verify_follows)
    )


def _ledger_run(settings: Settings, result: Result, verify_follows: bool) -> ledger.Run:
    """What the rollout did, as the ledger reads it."""
    tenants = result.outcomes.values()
    quarantined = {t.slug: t.reason or "" for t in tenants if t.outcome == Outcome.QUARANTINED}
    redeployed = frozenset(t.slug for t in tenants if t.outcome == Outcome.REDEPLOYED and not verify_follows)
    return ledger.Run(
        settings.target_tag, settings.expected_sha or "(no expected-sha given)", quarantine.run_url(os.environ),
        result.verdict in SHIPPING, quarantined, redeployed,
        {slug: summary.recovery_command(settings, [slug]) for slug in quarantined},
    )  # fmt: skip


def _warnings(result: Result | None) -> list[str]:
    warnings = []
    for tenant in result.outcomes.values() if result else []:
        if tenant.outcome == Outcome.QUARANTINED:
            warnings.append(f"tenant {tenant.slug} quarantined, needs individual recovery: {tenant.reason}")
        elif tenant.outcome == Outcome.STRAGGLER:
            warnings.append(f"tenant {tenant.slug} straggler: {tenant.reason}")
    return [runner.plain(line) for line in warnings]


def _then(given: StepInputs, settings: Settings | None, run: RunVerdict) -> list[str] | None:
    """The recovery command's verify (`--verify true`): its flags, when verify follows (--report is added
    where the report was written)."""
    if settings is None or not settings.verify_after or run.next == Follow.NONE:
        return None
    return [arg for name in VERIFY_NAMES for arg in (f"--{name}", given.values[name])]


def _report(rolled: Rolled, result: Result | None, ended: End, run: RunVerdict, started: str) -> dict[str, Any]:
    settings, cp = rolled.settings, rolled.cp
    doc: dict[str, Any] = {"schema_version": 1, "ok": run.ok, "verdict": run.verdict, "message": run.message}
    if settings is not None:
        doc["plan"] = plan_record(settings, rolled.plan)
    doc["calls"] = cp.calls if cp is not None else []
    if result is not None:
        doc |= _outcomes(settings, result)
    if rolled.ledger is not None:
        doc["ledger"] = rolled.ledger.part()
    doc["rollout"] = {
        "ok": run.ok,
        "verdict": ended.verdict,
        "message": ended.message,
        "follow": run.follow,
        "touched": rolled.touched,
        "superseded": ended.superseded_by,
        "batch_sizes": result.batch_sizes if result is not None else [],  # each batch as sent (waves)
        "started_at": started,
        "finished_at": report.now(),
    }
    return doc


def _outcomes(settings: Settings | None, result: Result) -> dict[str, Any]:
    """The tenants' part of the report: each one's outcome, the stragglers with the one command that
    redeploys them strictly and verifies them, and the tenants a call reached outside its scope."""
    part: dict[str, Any] = {"tenants": [t.record() for t in result.outcomes.values()]}
    stragglers = result.stragglers()
    if stragglers:
        part["stragglers"] = stragglers
        if settings is not None:
            part["recovery"] = summary.recovery_command(settings, stragglers)
    if result.outside:
        part["outside_scope"] = result.outside
    return part


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
    code, ending = step.conclude(Rollout(), argv)
    if ending is None or ending.then is None:
        return code
    stopped = runner.stopped()
    if stopped is not None:  # the job was cancelled: verify, which was to follow, does not start
        return code or stopped.code
    # The recovery command: verify the tenants just redeployed, from the report just written.
    checked = verify_cli.main(["--report", ending.report_path, *ending.then])
    return code or checked


if __name__ == "__main__":
    sys.exit(main())
