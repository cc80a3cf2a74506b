"""Faults of the runner around a step: files it cannot write, and SIGTERM (a cancelled job). None of them
changes a verdict or an exit code; a stopped step still leaves its report and summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultservers import (
    DRY,
    REDEPLOY,
    ClosedPort,
    FaultServer,
    assert_no_token,
    dry_runs,
    redeploy_ok,
    reply,
    stall,
)
from support import SHA, TAG, parse_outputs, run_step

from fleet import contract
from rollout.cli import main as rollout_main
from verify.cli import main as verify_main

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "cpt-Runner-Sentinel-5e8aK2"
ON_TARGET = json.dumps({"git_sha": SHA})
UP = reply(200, "ok", "text/plain")


def tenant(slug: str, healthz=UP, buildinfo=None) -> dict:
    return {f"/t/{slug}/healthz": healthz, f"/t/{slug}/buildinfo": buildinfo or reply(200, ON_TARGET)}


@pytest.fixture
def fleet():
    """One server for the control plane and two tenants: acme healthy, birch as the test asks."""
    servers: list[FaultServer] = []

    def _fleet(birch_healthz=UP) -> FaultServer:
        routes = {DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok}
        server = FaultServer(routes | tenant("acme") | tenant("birch", healthz=birch_healthz)).start()
        servers.append(server)
        return server

    yield _fleet
    for server in servers:
        server.stop()


STEPS = {
    "rollout": (
        rollout_main,
        ["--target-tag", TAG, "--expected-sha", SHA, "--soak-seconds", "0", "--max-stragglers", "0",
         "--cp-timeout-seconds", "2"],
    ),
    "verify": (
        verify_main,
        ["--slugs", "acme,birch", "--expected-sha", SHA, "--verify-timeout-seconds", "0.6",
         "--poll-interval-seconds", "0.2"],
    ),
}  # fmt: skip


@pytest.fixture
def step(tmp_path, capsys, monkeypatch):
    """Run a step against `server`; `env` is applied just before main() runs (after run_step's own)."""
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)
    counter = iter(range(100))

    def _run(name: str, server: FaultServer, *, env=None, report: Path | None = None, cp_url=None, extra=()):
        main, flags = STEPS[name]
        where = tmp_path / f"run{next(counter)}"
        where.mkdir()
        report = report or where / "report.json"
        argv = ["--tenant-url-template", server.url + "/t/{slug}", "--report", str(report), *flags, *extra]
        if name == "rollout":
            argv += ["--cp-url", cp_url or server.url]

        def patched(args):
            for key, value in (env or {}).items():
                if value is None:
                    monkeypatch.delenv(key, raising=False)
                else:
                    monkeypatch.setenv(key, value)
            return main(args)

        run = run_step(patched, argv, tmp_path=where, capsys=capsys, monkeypatch=monkeypatch, token=TOKEN)
        assert_no_token(TOKEN, run.log, run.summary, *run.outputs.values())
        if report.exists():
            assert_no_token(TOKEN, report.read_text())
        return run

    return _run


def summary_heading(name: str, ok: bool) -> str:
    if name == "rollout":
        return "## ✅ Fleet rollout: shipped" if ok else "## ❌ Fleet rollout:"
    return "## ✅ Fleet verify: passed" if ok else "## ❌ Fleet verify: failed"


def same_outputs(run, baseline) -> bool:
    def drop(outputs):
        return {k: v for k, v in outputs.items() if k != "report-path"}

    return bool(run.outputs) and drop(run.outputs) == drop(baseline.outputs)


CASES = [("rollout", True), ("verify", True), ("verify", False)]
CASE_IDS = ["rollout-ok", "verify-ok", "verify-fails"]


@pytest.mark.parametrize("name, ok", CASES, ids=CASE_IDS)
def test_runner_summary_file_missing_is_a_warning_and_changes_nothing(step, fleet, name, ok):
    server = fleet(UP if ok else reply(503, "down", "text/plain"))
    baseline = step(name, server)
    run = step(name, server, env={"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": None})
    assert run.code == baseline.code == (0 if ok else 1)
    assert same_outputs(run, baseline)
    assert run.report["ok"] is baseline.report["ok"] is ok
    assert [w for w in run.warnings() if "GITHUB_STEP_SUMMARY is not set" in w] == run.warnings()[-1:]
    assert len(run.errors()) == (0 if ok else 1)
    assert summary_heading(name, ok) in run.log  # the summary is still in the log


@pytest.mark.parametrize("name, ok", CASES, ids=CASE_IDS)
def test_runner_summary_file_unwritable_is_a_warning_and_changes_nothing(step, fleet, tmp_path, name, ok):
    server = fleet(UP if ok else reply(503, "down", "text/plain"))
    baseline = step(name, server)
    run = step(name, server, env={"GITHUB_STEP_SUMMARY": str(tmp_path)})  # a directory: open() fails
    assert run.code == baseline.code == (0 if ok else 1)
    assert same_outputs(run, baseline)
    assert run.report["ok"] is ok
    assert len([w for w in run.warnings() if "could not write the step summary" in w]) == 1
    assert summary_heading(name, ok) in run.log


@pytest.mark.parametrize("name, ok", CASES, ids=CASE_IDS)
def test_runner_outputs_file_unwritable_is_a_warning_and_changes_nothing(step, fleet, tmp_path, name, ok):
    server = fleet(UP if ok else reply(503, "down", "text/plain"))
    run = step(name, server, env={"GITHUB_OUTPUT": str(tmp_path)})
    assert run.code == (0 if ok else 1)
    assert run.report["ok"] is ok
    assert len([w for w in run.warnings() if "could not write step outputs" in w]) == 1


@pytest.mark.parametrize("name, ok", CASES, ids=CASE_IDS)
def test_runner_report_unwritable_is_a_warning_and_changes_nothing(step, fleet, tmp_path, name, ok):
    server = fleet(UP if ok else reply(503, "down", "text/plain"))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    run = step(name, server, report=blocker / "report.json")
    assert run.code == (0 if ok else 1)
    assert run.outputs["ok"] == ("true" if ok else "false")
    assert len([w for w in run.warnings() if "could not write the report" in w]) == 1


# -- SIGTERM ------------------------------------------------------------------------------------------


def start_step(module: str, args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, dict[str, Path]]:
    files = {name: tmp_path / name for name in ("report.json", "summary.md", "outputs")}
    files["summary.md"].write_text("")
    files["outputs"].write_text("")
    env = dict(os.environ)
    env.update(
        CP_TOKEN=TOKEN,
        GITHUB_ACTIONS="true",
        GITHUB_STEP_SUMMARY=str(files["summary.md"]),
        GITHUB_OUTPUT=str(files["outputs"]),
        PYTHONPATH=str(ROOT),
    )
    env.pop("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args, "--report", str(files["report.json"])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, files


def terminate(proc: subprocess.Popen) -> tuple[int, str, str, float]:
    proc.send_signal(signal.SIGTERM)
    began = time.monotonic()
    try:
        out, err = proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the step did not exit within 5 s of SIGTERM")
    return proc.returncode, out, err, time.monotonic() - began


def test_runner_sigterm_during_verify_leaves_a_partial_report_and_summary(fleet, tmp_path):
    server = fleet(stall())  # birch never answers its healthz
    proc, files = start_step(
        "verify",
        ["--slugs", "acme,birch", "--tenant-url-template", server.url + "/t/{slug}", "--expected-sha", SHA,
         "--verify-timeout-seconds", "60", "--poll-interval-seconds", "0.2", "--concurrency", "1"],
        tmp_path,
    )  # fmt: skip
    try:
        # One poller takes the tenants in order and records acme's verdict before it asks for birch's
        # healthz: birch's request is the event that says acme's verdict is recorded.
        assert server.wait_for(1, "/t/birch/healthz", timeout=10)
    except BaseException:
        proc.kill()
        raise
    code, out, err, took = terminate(proc)
    assert code != 0 and took < 5
    report = json.loads(files["report.json"].read_text())
    contract.validate("report", report, "report")
    section = report["verify"]
    assert section["ok"] is False and "SIGTERM" in section["message"]
    states = {t["slug"]: (t["state"], t["reason"]) for t in section["tenants"]}
    assert states == {"acme": ("verified", None), "birch": ("unreachable", "not verified before the job was cancelled")}
    errors = [line for line in out.splitlines() if line.startswith("::error::")]
    assert len(errors) == 1 and "SIGTERM" in errors[0]
    assert [line.startswith("::add-mask::") for line in out.splitlines()].count(True) == 1  # under a runner
    assert "## ❌ Fleet verify: failed" in out  # the summary, in the log
    assert "## ❌ Fleet verify: failed" in files["summary.md"].read_text()
    outputs = parse_outputs(files["outputs"].read_text())
    assert outputs["ok"] == "false" and outputs["verified-count"] == "1"
    assert_no_token(
        TOKEN, out, err, files["report.json"].read_text(), files["summary.md"].read_text(), *outputs.values()
    )


def test_runner_sigterm_during_a_redeploy_call_leaves_the_outcome_unknown(fleet, tmp_path):
    server = fleet()
    server.route(REDEPLOY, stall())
    proc, files = start_step(
        "rollout",
        ["--cp-url", server.url, "--target-tag", TAG, "--soak-seconds", "0", "--batch-size", "2",
         "--cp-timeout-seconds", "120"],
        tmp_path,
    )  # fmt: skip
    try:
        assert server.wait_for(3, "/cp/admin/tenants/redeploy-fleet", timeout=10)  # enumeration, probe, batch
    except BaseException:
        proc.kill()
        raise
    code, out, err, took = terminate(proc)
    assert code != 0 and took < 5
    report = json.loads(files["report.json"].read_text())
    assert report["ok"] is False and "SIGTERM" in report["message"]
    assert {t["slug"]: t["outcome"] for t in report["tenants"]} == {"acme": "unknown", "birch": "unknown"}
    errors = [line for line in out.splitlines() if line.startswith("::error::")]
    assert len(errors) == 1 and "unknown outcome" in errors[0]
    assert report["rollout"]["verdict"] == "cancelled" and code == 143
    assert "## ❌ Fleet rollout: cancelled" in files["summary.md"].read_text()
    assert [r.json()["dry_run"] for r in server.received("POST")] == [True, True, False]
    assert_no_token(TOKEN, out, err, files["report.json"].read_text(), files["summary.md"].read_text())


@pytest.mark.parametrize("where", ["cp-url", "canary-slug"])
def test_runner_token_pasted_into_another_input_is_scrubbed_from_every_artefact(step, fleet, where):
    # The token reaches an error message through the input that holds it; the runner scrubs it there.
    closed = ClosedPort()
    try:
        if where == "cp-url":
            run = step("rollout", fleet(), cp_url=f"{closed.url}/{TOKEN}")  # `step` asserts no artefact has it
            said = f"control plane unreachable at {closed.url}/***: connection refused"
        else:
            run = step("rollout", fleet(), extra=["--canary-slug", TOKEN])
            said = "canary-slug: invalid slug '***'"
    finally:
        closed.close()
    assert run.code != 0
    assert len(run.errors()) == 1 and said in run.errors()[0]
