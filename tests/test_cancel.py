"""A cancelled job, as the GitHub runner cancels it: SIGINT to the step's entry process (the `bash` that
runs the step's `run:` text, not its process group), SIGTERM 7.5 s later, and the whole process tree
killed 2.5 s after that. act cannot show this (it kills the step at once), so the steps of action.yml
are run here the way the runner runs them: each step's `run:` text in a file, `bash --noprofile --norc
-eo pipefail FILE`, with the `env:` the runner would give it. The step must stop within 5 s of the
SIGINT, send no further call, and leave its report, summary and outputs; then the action's last
(`if: always()`) step must turn them into the action's outputs and summary."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from faultservers import DRY, REDEPLOY, FaultServer, assert_no_token, dry_runs, redeploy_ok, reply, stall
from support import SHA, TAG

from fleet import contract, runner
from fleet.cp import REDEPLOY_PATH

ROOT = Path(__file__).resolve().parent.parent
ACTION = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
TOKEN = "cpt-Cancel-Sentinel-7Qx2"
UP = reply(200, "ok", "text/plain")
DOWN = reply(503, "down", "text/plain")
ON_TARGET = reply(200, json.dumps({"git_sha": SHA}))
SIGTERM_AFTER = 7.5  # the runner's grace after SIGINT, then 2.5 s more before it kills the tree
TREE_KILL_AFTER = 2.5
STOPS_WITHIN = 5.0


# -- the runner, simulated -----------------------------------------------------------------------


_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.S)
_REFERENCE = re.compile(r"\b(?:steps|inputs|github)(?:\.[A-Za-z0-9_-]+)+")


def evaluate(expression: str, context: dict[str, str]) -> str:
    """A `${{ }}` expression of action.yml's `env:` (references, string literals, ==, !=, &&, ||, !,
    toJSON(inputs)), evaluated as the runner does: `&&` and `||` yield an operand, and a missing value
    is ''."""
    python = _REFERENCE.sub(lambda m: f"_[{m.group(0)!r}]", expression)
    python = re.sub(r"!(?!=)", " not ", python.replace("&&", " and ").replace("||", " or "))
    given = {key.removeprefix("inputs."): value for key, value in context.items() if key.startswith("inputs.")}
    names = {"_": defaultdict(str, context), "inputs": given, "toJSON": lambda value: json.dumps(value, indent=2)}
    value = eval(python, {"__builtins__": {}}, names)  # noqa: S307 - action.yml's own text
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def substitute(text: str, context: dict[str, str]) -> str:
    return _EXPRESSION.sub(lambda m: evaluate(m.group(1), context), text)


def action_step(step_id: str) -> dict:
    return next(s for s in ACTION["runs"]["steps"] if s.get("id") == step_id)


@dataclass
class StepRun:
    code: int
    log: str
    stderr: str
    outputs: dict[str, str]
    took: float  # from the first signal to the end of the step's whole process tree


class Job:
    """One job's runner: the action's inputs, the prepare step's outputs, and each step's outputs and
    outcome as the later steps' `${{ steps.* }}` see them."""

    def __init__(self, tmp_path: Path, **inputs: str) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "fleet-state"  # what the prepare step hands on
        self.state.mkdir()
        self.summary = tmp_path / "step-summary.md"  # the job's summary: every step appends to it
        self.summary.write_text("")
        self.context = {
            "github.sha": SHA,
            "github.api_url": "",
            "github.token": "",
            "steps.prepare.outputs.python": sys.executable,
            "steps.prepare.outputs.state": str(self.state),
        }
        for name, spec in ACTION["inputs"].items():
            self.context[f"inputs.{name}"] = inputs.get(name, substitute(str(spec.get("default", "")), self.context))
        self.count = 0

    def start(self, step_id: str) -> tuple[subprocess.Popen, Path]:
        step = action_step(step_id)
        self.count += 1
        script = self.tmp / f"{self.count}-{step_id}.sh"
        script.write_text(step["run"])
        output = self.tmp / f"{self.count}-{step_id}.output"
        output.write_text("")
        env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", str(self.tmp)),
            "GITHUB_ACTIONS": "true",
            "GITHUB_ACTION_PATH": str(ROOT),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(self.summary),
            "RUNNER_TEMP": str(self.tmp),
        }
        env.update({name: substitute(str(value), self.context) for name, value in step.get("env", {}).items()})
        proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],  # the runner's shell: bash
            cwd=self.tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, for the tree kill only
        )
        return proc, output

    def run(self, step_id: str) -> StepRun:
        proc, output = self.start(step_id)
        out, err = proc.communicate(timeout=120)
        return self.done(step_id, proc, output, out, err, 0.0, "success" if proc.returncode == 0 else "failure")

    def cancel(self, step_id: str, proc: subprocess.Popen, output: Path) -> StepRun:
        code, out, err, took = cancel(proc)
        return self.done(step_id, proc, output, out, err, took, "cancelled")

    def done(self, step_id: str, proc, output: Path, out: str, err: str, took: float, outcome: str) -> StepRun:
        outputs = read_outputs(output)
        self.context[f"steps.{step_id}.outcome"] = outcome
        for name, value in outputs.items():
            self.context[f"steps.{step_id}.outputs.{name}"] = value
        return StepRun(proc.returncode, out, err, outputs, took)


def cancel(proc: subprocess.Popen) -> tuple[int, str, str, float]:
    """Cancel the job while `proc` runs a step, as the runner does, signalling the bash's PID only.
    Returns the exit code, the log, stderr, and the time from the SIGINT to the end of the step's whole
    process tree (the last holder of its output pipes)."""
    os.kill(proc.pid, signal.SIGINT)
    began = time.monotonic()
    try:
        out, err = proc.communicate(timeout=SIGTERM_AFTER)
    except subprocess.TimeoutExpired:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=TREE_KILL_AFTER)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
    return proc.returncode, out, err, time.monotonic() - began


def read_outputs(path: Path) -> dict[str, str]:
    """GITHUB_OUTPUT as the runner reads it: `name<<delimiter` blocks and `name=value` lines."""
    outputs: dict[str, str] = {}
    lines = iter(path.read_text().split("\n"))
    for line in lines:
        name, equals, value = line.partition("=")
        if "<<" in name or not equals:
            name, _, delimiter = line.partition("<<")
            if not delimiter:
                continue
            value = "\n".join(iter(lines.__next__, delimiter))
        outputs[name] = value
    return outputs


def errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("::error::")]


def assert_stopped_at_the_first_signal(run: StepRun) -> None:
    assert run.took < STOPS_WITHIN, f"the step ran {run.took:.1f} s after SIGINT:\n{run.log}\n{run.stderr}"
    assert run.code == runner.EXIT_INTERRUPTED, (run.code, run.log, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr


def read_report(path: str) -> dict:
    report = json.loads(Path(path).read_text())
    return contract.validate("report", report, "report")


@pytest.fixture
def fleet():
    """A control plane that can scope, and tenants; `routes` override any of them."""
    servers: list[FaultServer] = []

    def _fleet(*slugs: str, routes=None) -> FaultServer:
        base = {DRY: dry_runs(*slugs), REDEPLOY: redeploy_ok}
        for slug in slugs:
            base |= {f"/t/{slug}/healthz": UP, f"/t/{slug}/buildinfo": ON_TARGET}
        server = FaultServer(base | (routes or {})).start()
        servers.append(server)
        return server

    yield _fleet
    for server in servers:
        server.stop()


def wait_or_stop(proc: subprocess.Popen, arrived: bool, what: str) -> None:
    if not arrived:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{what} never arrived:\n{out}\n{err}")


def inputs_for(server: FaultServer, **more: str) -> dict[str, str]:
    return {
        "cp-url": server.url, "cp-token": TOKEN, "target-tag": TAG, "expected-sha": SHA,
        "tenant-url-template": server.url + "/t/{slug}", "soak-seconds": "0", "superseded-check": "false",
        "poll-interval-seconds": "0.2", "verify-timeout-seconds": "60", **more,
    }  # fmt: skip


def real_calls(server: FaultServer) -> list[dict]:
    return [r.json() for r in server.received("POST", REDEPLOY_PATH) if not r.json().get("dry_run")]


# -- the rollout step ------------------------------------------------------------------------------


def test_cancelled_during_a_batch_the_rollout_names_the_unknown_tenants_and_keeps_report_summary_outputs(
    fleet, tmp_path
):
    server = fleet("acme", "birch", "cobalt", "dune", routes={REDEPLOY: stall()})  # batch 1 never answers
    job = Job(tmp_path, **inputs_for(server, **{"batch-size": "2", "max-stragglers": "1"}))
    proc, output = job.start("rollout")
    # The enumeration, the scope probe, then batch 1's real call, under way when the job is cancelled.
    wait_or_stop(proc, server.wait_for(3, REDEPLOY_PATH, timeout=30), "batch 1's call")
    run = job.cancel("rollout", proc, output)

    assert_stopped_at_the_first_signal(run)
    assert len(real_calls(server)) == 1  # nothing sent after the signal, nothing sent again
    [error] = errors(run.log)
    assert error == (
        "::error::the job was cancelled (SIGINT) during a call of the rollout; tenants in the call under way "
        "have an unknown outcome: acme, birch"
    )
    report = read_report(run.outputs["report-path"])
    assert report["ok"] is False and report["rollout"]["verdict"] == "cancelled"
    assert report["rollout"]["message"] == error.removeprefix("::error::")
    assert {t["slug"]: (t["outcome"], t["reason"]) for t in report["tenants"]} == {
        "acme": ("unknown", "outcome unknown: the job was cancelled (SIGINT)"),
        "birch": ("unknown", "outcome unknown: the job was cancelled (SIGINT)"),
        "cobalt": ("not-attempted", "not attempted: the job was cancelled"),
        "dune": ("not-attempted", "not attempted: the job was cancelled"),
    }
    assert run.outputs["ok"] == "false" and run.outputs["verify"] == "none"

    # The verify step is skipped (`!cancelled()`); the last step runs (`if: always()`).
    job.context["steps.verify.outcome"] = "skipped"
    result = job.run("result")
    assert result.code == 0
    assert result.outputs == {
        "ok": "false", "superseded": "", "stragglers": "[]", "quarantined-count": "0", "verified-count": "",
        "failed-count": "", "report-path": run.outputs["report-path"], "chronic": "[]",
    }  # fmt: skip
    summary = job.summary.read_text()
    assert summary.startswith("## ❌ Fleet rollout: cancelled\n\nthe job was cancelled (SIGINT) during a call")
    assert "did not run" not in summary
    assert_no_token(TOKEN, run.log, run.stderr, summary, Path(run.outputs["report-path"]).read_text())


# -- the verify step, and the recovery command's verify ----------------------------------------------


def verify_fleet(fleet) -> FaultServer:
    """acme on target; birch down at its first poll, then silent: verify is polling it when cancelled."""
    return fleet("acme", "birch", routes={"/t/birch/healthz": [DOWN, stall()]})


def polling_birch_again(server: FaultServer) -> bool:
    # With one worker, acme is judged, then birch; birch's second poll means both verdicts are kept.
    return server.wait_for(2, "/t/birch/healthz", timeout=30)


def assert_partial_verify(report: dict, run: StepRun) -> None:
    section = report["verify"]
    assert section["ok"] is False and report["ok"] is False
    assert section["message"] == "the job was cancelled (SIGINT) before the deadline; verdicts are partial"
    assert {t["slug"]: (t["state"], t["reason"]) for t in section["tenants"]} == {
        "acme": ("verified", None),
        "birch": ("unhealthy", "healthz answered HTTP 503"),
    }
    assert errors(run.log) == [f"::error::verify: {section['message']}"]


def test_cancelled_during_verify_the_step_keeps_its_partial_verdicts_report_summary_and_outputs(fleet, tmp_path):
    server = verify_fleet(fleet)
    job = Job(tmp_path, **inputs_for(server, concurrency="1"))
    rolled = job.run("rollout")
    assert rolled.code == 0 and rolled.outputs["verify"] == "check", rolled.log
    proc, output = job.start("verify")
    wait_or_stop(proc, polling_birch_again(server), "birch's second poll")
    run = job.cancel("verify", proc, output)

    assert_stopped_at_the_first_signal(run)
    report = read_report(rolled.outputs["report-path"])
    assert_partial_verify(report, run)
    assert report["rollout"]["verdict"] == "shipped"  # the rollout's section is kept
    assert run.outputs == {"ok": "false", "verified-count": "1", "failed-count": "1"}

    result = job.run("result")
    assert result.code == 0
    assert result.outputs["ok"] == "false"
    assert (result.outputs["verified-count"], result.outputs["failed-count"]) == ("1", "1")
    assert result.outputs["report-path"] == rolled.outputs["report-path"]
    summary = job.summary.read_text()
    assert "## ✅ Fleet rollout: shipped" in summary
    assert "## ❌ Fleet verify: failed" in summary and "the job was cancelled (SIGINT) before the deadline" in summary
    assert_no_token(TOKEN, run.log, run.stderr, summary, Path(rolled.outputs["report-path"]).read_text())


def start_recovery(server: FaultServer, tmp_path: Path) -> tuple[subprocess.Popen, dict[str, Path]]:
    """The recovery command as the summary prints it (python -m rollout ... --verify true), run by a
    `run:` step that execs it, with a report path and a short poll interval of its own."""
    files = {name: tmp_path / name for name in ("recover.sh", "report.json", "output", "summary.md")}
    files["recover.sh"].write_text(
        f"exec python -m rollout --cp-url {server.url} --target-tag {TAG} --slugs acme,birch --max-stragglers 0 "
        f"--soak-seconds 0 --tenant-url-template '{server.url}/t/{{slug}}' --expected-sha {SHA} --verify true "
        f"--verify-timeout-seconds 40 --poll-interval-seconds 0.2 --concurrency 1 --report {files['report.json']}\n"
    )
    files["output"].write_text("")
    files["summary.md"].write_text("")
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python`: the dev venv's
        "PYTHONPATH": str(ROOT),
        "CP_TOKEN": TOKEN,
        "GITHUB_ACTIONS": "true",
        "GITHUB_OUTPUT": str(files["output"]),
        "GITHUB_STEP_SUMMARY": str(files["summary.md"]),
    }
    proc = subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(files["recover.sh"])],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    return proc, files


def cancel_recovery(proc: subprocess.Popen, files: dict[str, Path]) -> tuple[StepRun, dict, str]:
    code, log, err, took = cancel(proc)
    run = StepRun(code, log, err, read_outputs(files["output"]), took)
    assert_stopped_at_the_first_signal(run)
    summary = files["summary.md"].read_text()
    assert_no_token(TOKEN, run.log, run.stderr, summary, files["report.json"].read_text())
    return run, read_report(str(files["report.json"])), summary


def test_cancelled_during_the_recovery_commands_verify_it_stops_at_once_and_keeps_its_report(fleet, tmp_path):
    server = verify_fleet(fleet)
    proc, files = start_recovery(server, tmp_path)
    wait_or_stop(proc, polling_birch_again(server), "birch's second poll")
    run, report, summary = cancel_recovery(proc, files)

    assert len(real_calls(server)) == 1
    assert report["rollout"]["verdict"] == "shipped"
    assert_partial_verify(report, run)
    assert (run.outputs["ok"], run.outputs["verified-count"], run.outputs["failed-count"]) == ("false", "1", "1")
    assert "## ✅ Fleet rollout: shipped" in summary and "## ❌ Fleet verify: failed" in summary


def test_cancelled_during_the_recovery_commands_redeploy_its_verify_never_starts(fleet, tmp_path):
    server = fleet("acme", "birch", routes={REDEPLOY: stall()})
    proc, files = start_recovery(server, tmp_path)
    wait_or_stop(proc, server.wait_for(3, REDEPLOY_PATH, timeout=30), "the recovery's real call")
    run, report, summary = cancel_recovery(proc, files)

    assert report["rollout"]["verdict"] == "cancelled" and "verify" not in report
    assert {t["slug"]: t["outcome"] for t in report["tenants"]} == {"acme": "unknown", "birch": "unknown"}
    assert not server.received("GET")  # no tenant was polled: not even a survey
    assert (run.outputs["ok"], run.outputs["verify"]) == ("false", "none")
    assert "## ❌ Fleet rollout: cancelled" in summary and "Fleet verify" not in summary and "survey" not in summary


# -- the guard itself --------------------------------------------------------------------------------


@pytest.fixture
def forget_signals():
    yield
    runner._STOPPED.clear()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_the_first_signal_stops_the_work_and_a_second_one_is_only_noted(forget_signals, signum, code):
    with runner.signals_stop(), pytest.raises(runner.Terminated) as stopped:
        os.kill(os.getpid(), signum)
    assert (stopped.value.code, str(stopped.value)) == (code, f"the job was cancelled ({signum.name})")
    with runner.signals_stop() as guard:
        guard.hold()  # the report is being written
        os.kill(os.getpid(), signal.SIGTERM)  # the runner's SIGTERM, 7.5 s after its SIGINT
        written = True
    assert written and runner.stopped() is not None and runner.stopped().signal == signum.name
