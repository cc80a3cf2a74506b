"""`python -m rollout`: the rollout step, as the action runs it (--from-env) and on its own (flags)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

from fleet import inputs, report, runner
from fleet.contract import ContractError
from fleet.cp import ControlPlane, CPError
from fleet.runner import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_TERMINATED
from rollout import drive, gate, summary
from rollout.coverage import STRAGGLER
from rollout.plan import Plan, Settings, enumeration_body, make_plan, plan_record, run_seconds, settings_from
from verify import cli as verify_cli

NAMES = (
    "cp-url", "target-tag", "expected-sha", "tenant-url-template", "canary-slug", "soak-seconds", "batch-size",
    "max-stragglers", "mode", "slugs", "dry-run", "poll-interval-seconds", "cp-timeout-seconds", "report",
    "allow-http", "ca-bundle", "verify-timeout-seconds", "concurrency", "healthz-path", "buildinfo-path",
    "api-url", "superseded-check", "kill-switch-variable", "verify",
)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    step = inputs.read(
        "python -m rollout",
        "Roll a build out across the fleet through the control plane: the canary first, then batches, "
        "quarantining up to max-stragglers tenants that fail.",
        NAMES,
        argv,
    )
    values, token = step.values, step.token
    report_path = values["report"] or report.default_path()
    started = report.now()

    settings: Settings | None = None
    plan: Plan | None = None
    result: drive.Result | None = None
    cp: ControlPlane | None = None
    failure: str | None = None
    halted: gate.Stop | None = None
    code = EXIT_FAILED
    try:
        with runner.sigterm_stops():
            # The action's fallback is 1; a caller that gives nothing at all on the command line gets 0.
            settings = settings_from(values, os.environ, 1 if step.from_env else 0, verify_follows=step.from_env)
            inputs.check_token(token)
            gate.check_environment(os.environ)  # before any call: the switch means nothing at all is sent
            checks = gate.gate_for(settings, step.api_token, os.environ)
            cp = ControlPlane(settings.cp_url, token, timeout=settings.cp_timeout, ca_bundle=settings.ca_bundle)
            plan = make_plan(settings, cp.enumerate(enumeration_body(settings)))
            cp.deadline = time.monotonic() + run_seconds(settings, plan)  # no call outlives the rollout's
            _log_plan(settings, plan)
            result = drive.Result.for_plan(plan)
            drive.run(settings, plan, cp, drive.healthz_watch(settings), result, checks)
    except gate.Stop as stop:  # the environment's kill switch: nothing was sent
        halted, failure = stop, stop.message
    except ContractError as exc:
        # Bad input, found before anything was redeployed; after a redeploy it is a failed rollout.
        failure, code = str(exc), EXIT_FAILED if cp is not None and cp.sent_real_call else EXIT_BAD_INPUT
    except CPError as exc:
        failure = str(exc)
    except runner.Terminated as exc:
        failure, code = f"rollout {exc}; tenants in the call under way have an unknown outcome", EXIT_TERMINATED
    except Exception as exc:  # noqa: BLE001 - the report and outputs are still written
        failure = runner.internal_error(exc)
    if result is not None and failure:
        result.fail(failure)

    verdict = result.verdict if result and not failure else (halted.verdict if halted else drive.FAILED)
    message = result.message if result and not failure else (failure or "")
    ok = result is not None and result.ok and not failure
    doc = _report(settings, plan, result, cp, ok, verdict, message, started)
    report.write(report_path, doc)
    stragglers = doc.get("stragglers", [])
    follow = _verify_follows(settings, result, cp, ok)
    runner.set_outputs(
        {
            "ok": "true" if ok else "false",
            "superseded": result.superseded if result else "",
            "stragglers": json.dumps(stragglers),
            "quarantined-count": str(len(stragglers)),
            "report-path": report_path,
            # Whether verify follows, and how: the action's condition, decided in one place.
            "verify": follow,
        }
    )
    _announce(result, ok, message)
    runner.write_summary(summary.render(verdict, message, settings, plan, result))
    runner.log(f"report: {runner.plain(report_path)}")
    code = EXIT_OK if ok else code
    if settings is not None and settings.verify_after and follow != "false":
        checked = verify_cli.main(_verify_argv(values, report_path))
        return code or checked
    return code


def _verify_follows(settings: Settings | None, result: drive.Result | None, cp: ControlPlane | None, ok: bool) -> str:
    """ "true": verify the shipped fleet; "survey": the rollout touched the fleet and then failed, so
    read every tenant and report who runs which build; "false": nothing to verify."""
    if settings is None or not settings.tenant_url_template or settings.dry_run or result is None:
        return "false"
    if ok:
        return "false" if result.verdict == drive.SUPERSEDED else "true"
    return "survey" if cp is not None and cp.sent_real_call else "false"


def _verify_argv(values: dict[str, str], report_path: str) -> list[str]:
    """The verify step's flags, from the rollout's own inputs: it reads the scope from the report."""
    names = (
        "expected-sha", "tenant-url-template", "verify-timeout-seconds", "poll-interval-seconds", "concurrency",
        "allow-http", "ca-bundle", "healthz-path", "buildinfo-path", "api-url", "superseded-check",
    )  # fmt: skip
    return ["--report", report_path] + [arg for name in names for arg in (f"--{name}", values[name])]


def _log_plan(settings: Settings, plan: Plan) -> None:
    b = settings.budget
    runner.log(
        f"plan: {settings.mode} rollout of {settings.target_tag} to {len(plan.scope)} of {plan.fleet_size} tenants; "
        f"canary {plan.canary or 'none'}; {len(plan.batches)} batches of up to {settings.batch_size}; "
        f"straggler budget {plan.budget} (from {b.source} {b.text!r}); deadline {run_seconds(settings, plan):g} s"
        + ("; dry run" if settings.dry_run else "")
    )
    for note in plan.notes:
        runner.log(f"note: {runner.plain(note)}")


def _announce(result: drive.Result | None, ok: bool, message: str) -> None:
    if result is not None:
        for outcome in result.outcomes.values():
            if outcome.outcome == STRAGGLER:
                state = "quarantined, needs individual recovery" if ok else "straggler"
                runner.warning(f"tenant {outcome.slug} {state}: {runner.plain(outcome.reason or '')}")
    if ok:
        runner.log(runner.plain(message))
    else:
        runner.error(runner.plain(message))


def _report(settings, plan, result, cp, ok, verdict, message, started) -> dict:
    doc: dict = {"schema_version": 1, "ok": ok, "message": message}
    if settings is not None:
        doc["plan"] = plan_record(settings, plan)
    doc["calls"] = cp.calls if cp is not None else []
    if result is not None:
        doc["tenants"] = [o.record() for o in result.outcomes.values()]
        if result.stragglers():
            doc["stragglers"] = result.stragglers()
        if result.outside:
            doc["outside_scope"] = result.outside
    doc["rollout"] = {
        "ok": ok,
        "verdict": verdict,
        "message": message,
        "touched": cp is not None and cp.sent_real_call,
        "superseded": result.superseded if result else "",
        "started_at": started,
        "finished_at": report.now(),
    }
    return doc


if __name__ == "__main__":
    sys.exit(main())
