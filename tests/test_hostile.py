"""Hostile answers, served by real loopback sockets: a lone UTF-16 surrogate, a number out of range, NaN
or Infinity, or nesting hundreds of levels deep, in any field of a control-plane, forge or tenant answer,
ends in that call's contract error: the step's exit code for it, one `::error::` naming the cause, the
report written and valid. And no stdout encoding ends a step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from faultservers import DRY, REDEPLOY, FaultServer, assert_fault, dry_runs, redeploy_ok, reply
from support import SHA, TAG, run_step, scenario

from fleet import contract, report, runner
from verify.cli import main as verify_main

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "cpt-Hostile-Sentinel-5e2aK"
SWITCH = "PROD_AUTO_DEPLOY_DISABLED"

# Each value as JSON text, and the cause its contract error names.
HOSTILE = pytest.mark.parametrize(
    "value, cause",
    [
        ('"\\ud83d"', "holds a lone UTF-16 surrogate: '\\ud83d'"),
        ("1e400", "number 1e400 is out of range"),
        ("NaN", "non-standard JSON constant NaN"),
        ("Infinity", "non-standard JSON constant Infinity"),
        ("[" * 500 + "]" * 500, "nested deeper than 64 levels"),
        ('{"a": ' * 1000 + "1" + "}" * 1000, "nested deeper than 64 levels"),
    ],
    ids=["lone-surrogate", "1e400", "nan", "infinity", "nested-500", "nested-1000"],
)
WHERE = pytest.mark.parametrize("where", ["extra-field", "row-field"])


def carrying(rows: list[dict], value: str, where: str) -> str:
    """A 200 answer with these rows as JSON text, `value` in an extra top-level field or in an extra field
    of its first row."""
    if where == "extra-field":
        return json.dumps({"ok": True, "results": rows})[:-1] + f', "note": {value}}}'
    first = json.dumps(rows[0])[:-1] + f', "detail": {value}}}'
    return '{"ok": true, "results": [' + ", ".join([first, *map(json.dumps, rows[1:])]) + "]}"


def no_crash(run, path: Path, ok: bool = False) -> None:
    """No unforeseen error, and a report that verify's strict reader takes back (no NaN, no Infinity)."""
    for text in (run.log, run.summary):
        assert "internal error" not in text and "Traceback" not in text, text[-2000:]
    assert report.read(str(path))["ok"] is ok


@pytest.fixture
def rollout(fault_rollout):
    return fault_rollout(TOKEN)


def real_calls(cp: FaultServer) -> list:
    return [r for r in cp.received("POST") if r.json().get("dry_run") is not True]


# -- the control plane ---------------------------------------------------------------------------------


@HOSTILE
@WHERE
def test_a_hostile_value_in_the_enumeration_is_refused_before_any_redeploy(rollout, serve, value, cause, where):
    rows = [{"slug": s, "phase": "batch-1", "ssm_status": "DryRun"} for s in ("acme", "birch")]
    cp = serve({DRY: reply(200, carrying(rows, value, where))})
    run = rollout(cp.url)
    rollout.fault(run, "control plane answer to POST /cp/admin/tenants/redeploy-fleet (HTTP 200)", cause)
    assert run.code == 1  # as any answer that is not strict JSON
    assert real_calls(cp) == [] and run.report["rollout"]["verdict"] == "failed"
    no_crash(run, Path(run.outputs["report-path"]))


@HOSTILE
@WHERE
def test_a_hostile_value_in_the_canary_calls_answer_leaves_its_tenant_unknown(rollout, serve, value, cause, where):
    rows = [{"slug": "acme", "phase": "canary", "verified_on_target": True}]
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: reply(200, carrying(rows, value, where))})
    run = rollout(cp.url, "--canary-slug", "acme")
    rollout.fault(run, "control plane answer to POST /cp/admin/tenants/redeploy-fleet (HTTP 200)", cause)
    assert run.code == 1  # after a real call: a failed rollout
    assert len(real_calls(cp)) == 1
    outcomes = {t["slug"]: t["outcome"] for t in run.report["tenants"]}
    assert outcomes == {"acme": "unknown", "birch": "not-attempted"}
    assert cause in run.report["calls"][-1]["error"]
    no_crash(run, Path(run.outputs["report-path"]))


# -- the tenants -----------------------------------------------------------------------------------------


@HOSTILE
@pytest.mark.parametrize("where", ["extra-field", "nested-field"])
def test_a_hostile_value_in_buildinfo_makes_the_tenant_unhealthy(
    serve, tmp_path, capsys, monkeypatch, value, cause, where
):
    info = json.dumps({"git_sha": SHA})[:-1]
    info += f', "note": {value}}}' if where == "extra-field" else f', "build": {{"host": "x", "meta": {value}}}}}'
    ok = reply(200, "ok", "text/plain")
    cp = serve({
        "/t/acme/healthz": ok, "/t/acme/buildinfo": reply(200, info),
        "/t/birch/healthz": ok, "/t/birch/buildinfo": reply(200, json.dumps({"git_sha": SHA})),
    })  # fmt: skip
    answer, path = tmp_path / "answer.json", tmp_path / "verify.json"
    answer.write_text(json.dumps({"ok": True, "results": [{"slug": "acme"}, {"slug": "birch"}]}))
    argv = [
        "--response", str(answer), "--tenant-url-template", cp.url + "/t/{slug}", "--expected-sha", SHA,
        "--poll-interval-seconds", "0.1", "--verify-timeout-seconds", "0.5", "--report", str(path),
    ]  # fmt: skip
    run = run_step(verify_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=None)
    assert_fault(run, "acme (unhealthy", token=TOKEN, report_file=path)
    assert run.code == 1
    seen = {t["slug"]: (t["state"], t["reason"]) for t in run.report["verify"]["tenants"]}
    assert seen["birch"] == ("verified", None)
    state, reason = seen["acme"]
    assert state == "unhealthy" and reason.startswith("buildinfo: ") and cause in reason, reason
    no_crash(run, path)


# -- the forge -------------------------------------------------------------------------------------------


@pytest.fixture
def forge_run(rollout, monkeypatch):
    """A rollout whose control plane and forge share one loopback server."""

    def _run(cp: FaultServer, *flags: str):
        monkeypatch.setenv("GITHUB_REPOSITORY", "acme/platform")
        monkeypatch.setenv("GITHUB_REF_NAME", "main")
        monkeypatch.setenv("GITHUB_REF_TYPE", "branch")
        monkeypatch.setenv("API_TOKEN", "forge-Token-Sentinel-77")
        return rollout(cp.url, "--api-url", cp.url, "--expected-sha", SHA, *flags)

    return _run


@HOSTILE
@pytest.mark.parametrize("where", ["extra-field", "nested-field"])
def test_a_hostile_value_in_the_kill_switch_variable_halts_with_no_real_call(
    serve, rollout, forge_run, value, cause, where
):
    doc = json.dumps({"name": SWITCH, "value": "false"})[:-1]
    doc += f', "note": {value}}}' if where == "extra-field" else f', "owner": {{"login": {value}}}}}'
    variable = f"GET /repos/acme/platform/actions/variables/{SWITCH}"
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok, variable: reply(200, doc)})
    run = forge_run(cp, "--kill-switch-variable", SWITCH)
    rollout.fault(run, f"could not read the kill switch variable {SWITCH}", cause)
    assert run.code == 1 and run.report["rollout"]["verdict"] == "halted"  # fails closed, as for any unreadable read
    assert real_calls(cp) == []
    no_crash(run, Path(run.outputs["report-path"]))


@HOSTILE
@pytest.mark.parametrize("where", ["extra-field", "nested-field"])
def test_a_hostile_value_in_the_branch_answer_leaves_the_head_unread(serve, forge_run, value, cause, where):
    doc = json.dumps({"name": "main", "commit": {"sha": SHA}})
    text = doc[:-1] + f', "note": {value}}}' if where == "extra-field" else doc[:-2] + f', "author": {value}}}}}'
    branch = "GET /repos/acme/platform/branches/main"
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok, branch: reply(200, text)})
    run = forge_run(cp)
    # The contract's rule for a head that cannot be read: not superseded, a note says why (a ::notice::
    # under a runner, plain text on a command line).
    notices = [line for line in run.log.splitlines() if line.startswith(("::notice::", "note: "))]
    assert len(notices) == 1 and "the branch head could not be read" in notices[0] and cause in notices[0], notices
    assert run.code == 0 and run.report["rollout"]["verdict"] == "shipped" and run.errors() == []
    assert len(cp.received("GET", "/repos/acme/platform/branches/main")) == 1
    no_crash(run, Path(run.outputs["report-path"]), ok=True)


# -- what the step writes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [{"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}, {"PYTHONIOENCODING": "ascii"}],
    ids=["c-locale", "pythonioencoding-ascii"],
)
@pytest.mark.parametrize("runner_env", [False, True], ids=["terminal", "runner"])
def test_a_stdout_that_is_not_utf8_never_ends_a_clean_rollout(start, tmp_path, env, runner_env):
    sb = start(scenario("acme", "birch", "cobalt"))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHON", "GITHUB_"))}
    environ |= {"PYTHONPATH": str(ROOT), "CP_TOKEN": sb.token, "LANG": "C", **env}
    if runner_env:
        environ |= {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    argv = [
        sys.executable, "-m", "rollout", "--cp-url", sb.url, "--target-tag", TAG, "--soak-seconds", "0",
        "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA, "--verify", "true",
        "--poll-interval-seconds", "0.1", "--report", str(tmp_path / "report.json"),
    ]  # fmt: skip
    done = subprocess.run(argv, cwd=tmp_path, env=environ, capture_output=True, timeout=120)
    out, err = done.stdout.decode("ascii"), done.stderr.decode("utf-8", "replace")  # every byte is ASCII
    assert done.returncode == 0, out + err
    assert "Traceback" not in err and "Error" not in err, err
    # Both summaries reached the log, their icons escaped, and the report was read back by verify.
    assert "\\u2705 Fleet rollout: shipped" in out and "\\u2705 Fleet verify: passed" in out
    assert report.read(str(tmp_path / "report.json"))["verify"]["ok"] is True
    if runner_env:  # the summary file is UTF-8 whatever stdout is
        assert "✅ Fleet rollout: shipped" in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_every_writer_escapes_a_lone_surrogate_rather_than_fail(tmp_path, capsys, monkeypatch):
    """Whatever gets past parse_json (an undecodable byte of argv arrives as a lone surrogate too) costs
    no line, no summary, no output and no report."""
    out, summary, path = tmp_path / "output", tmp_path / "summary.md", tmp_path / "report.json"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    cut = "cut mid-emoji \ud83d"
    runner.error(cut)
    runner.log(cut)
    runner.log(runner.plain(cut))
    runner.write_summary(f"## {runner.md(cut)}\n{cut}")
    runner.set_outputs({"message": cut})
    assert report.write(str(path), {"schema_version": 1, "ok": False, "message": cut, cut: [cut]})
    log = capsys.readouterr().out
    assert log.splitlines() == [
        "::error::cut mid-emoji \\ud83d", "cut mid-emoji \\ud83d", "cut mid-emoji \\ud83d",
        "## cut mid-emoji \\\\ud83d", "cut mid-emoji \\ud83d",
    ]  # fmt: skip
    assert "cut mid-emoji \\ud83d" in summary.read_text(encoding="utf-8")
    assert "cut mid-emoji \\ud83d" in out.read_text(encoding="utf-8")
    # verify's strict reader takes the report back, the surrogate as its escape
    assert report.read(str(path))["message"] == "cut mid-emoji \\ud83d"


def test_the_report_never_holds_infinity_or_nan(tmp_path):
    path = tmp_path / "report.json"
    doc = {"schema_version": 1, "ok": False, "message": "m", "plan": {"deadline_seconds": float("inf")}}
    doc["calls"] = [{"elapsed_seconds": float("nan"), "response": {"weight": float("-inf"), "fine": 1e300}}]
    assert report.write(str(path), doc)
    back = contract.parse_json(path.read_bytes(), "report")  # strict, as verify reads it: no NaN, no Infinity
    assert back["plan"]["deadline_seconds"] is None and back["calls"][0]["elapsed_seconds"] is None
    assert back["calls"][0]["response"] == {"weight": None, "fine": 1e300}


def test_a_report_too_deep_to_write_still_leaves_its_verdict(tmp_path, capsys):
    path, deep = tmp_path / "report.json", []
    for _ in range(5000):
        deep = [deep]
    assert report.write(str(path), {"schema_version": 1, "ok": False, "message": "broke off", "calls": deep})
    back = report.read(str(path))
    assert back["ok"] is False and back["message"].startswith("broke off (the full report could not be written")
    assert capsys.readouterr().out.startswith("::warning::the full report could not be written as JSON")
