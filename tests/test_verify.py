"""The verify step against sandbox tenants, over real HTTP."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import SHA, TAG, run_step, scenario

from fleet.tenant import Reply
from fleet.vocabulary import State
from rollout.cli import main as rollout_main
from sandbox import Sandbox
from verify import poll, verdict
from verify import summary as verify_summary
from verify.cli import main


@pytest.fixture
def verify(tmp_path, capsys, monkeypatch):
    def _run(sb: Sandbox, *flags: str, report: str | None = None):
        argv = [
            "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA,
            "--poll-interval-seconds", "0.2", "--verify-timeout-seconds", "5",
            "--report", report or str(tmp_path / "verify.json"), *flags,
        ]  # fmt: skip
        if report is None and "--response" not in flags:
            argv += ["--slugs", ",".join(sb.slugs)]
        return run_step(main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token)

    return _run


def deployed(*tenants: str, **extra) -> dict:
    """A fleet already redeployed to TAG when the sandbox starts."""
    return scenario(*tenants, deployed_tag=TAG, **extra)


def states(run) -> dict[str, str]:
    return {t["slug"]: t["state"] for t in run.report["verify"]["tenants"]}


def test_all_verified_ends_early_and_sets_outputs(start, verify):
    sb = start(deployed("acme", "birch", "cobalt"))
    began = time.monotonic()
    run = verify(sb, "--verify-timeout-seconds", "60")
    assert run.code == 0
    assert time.monotonic() - began < 30  # it did not wait for the 60 s deadline
    assert run.outputs == {"ok": "true", "verified-count": "3", "failed-count": "0"}
    assert states(run) == {"acme": "verified", "birch": "verified", "cobalt": "verified"}
    assert run.summary.splitlines()[0] == "## ✅ Fleet verify: passed"


def test_quarantine_is_an_exact_whole_string_match(start, verify):
    # `reno` is quarantined; `reno-stars` merely contains the name, so it is polled and found stale
    sb = start(deployed("reno", "reno-stars:stale", "stars"))
    run = verify(sb, "--stragglers", '["reno"]', "--verify-timeout-seconds", "1.5")
    assert run.code == 1
    assert states(run) == {"reno": "quarantined", "reno-stars": "stale", "stars": "verified"}
    assert not sb.tenant_hits.get("reno")  # quarantined: never polled
    assert sb.tenant_hits["reno-stars"]
    # and the other way round: quarantining `reno-stars` does not skip `reno`
    sb2 = start(deployed("reno:stale", "reno-stars"))
    run2 = verify(sb2, "--stragglers", "reno-stars", "--verify-timeout-seconds", "1.5")
    assert states(run2) == {"reno": "stale", "reno-stars": "quarantined"}
    assert run2.code == 1


def test_quarantined_tenants_are_counted_warned_and_not_polled(start, verify):
    sb = start(deployed("acme", "reno-stars:wedged", "harbor"))
    run = verify(sb, "--stragglers", "reno-stars")
    assert run.code == 0
    assert not sb.tenant_hits.get("reno-stars")
    assert run.report["verify"]["counts"]["quarantined"] == 1
    assert "| Quarantined stragglers | 1 |" in run.summary
    assert "::warning::tenant reno-stars quarantined: not verified, needs individual recovery" in run.warnings()


def test_slow_tenants_are_waited_for_and_pass(start, verify):
    spec = deployed("acme", "birch")
    spec["tenants"][1].update(behaviour="slow", ready_after=1.5)
    sb = start(spec)
    began = time.monotonic()
    run = verify(sb, "--verify-timeout-seconds", "20")
    assert run.code == 0
    assert time.monotonic() - began >= 1.5
    assert len(sb.tenant_hits["birch"]) > 2  # polled again while it was not ready


@pytest.mark.parametrize(
    ("behaviour", "state", "reason"),
    [
        ("stale", "stale", "serves build"),
        ("wedged", "unhealthy", "healthz answered HTTP 503"),
        # the sandbox drops the connection: seen as a close or, when it races the request, a reset
        ("unreachable", "unreachable", ("healthz: connection closed without an answer", "healthz: connection reset")),
    ],
)
def test_each_failing_state_is_classified_and_fails_the_step(start, verify, behaviour, state, reason):
    sb = start(deployed("acme", f"cobalt:{behaviour}"))
    run = verify(sb, "--verify-timeout-seconds", "1.5")
    assert run.code == 1
    cobalt = next(t for t in run.report["verify"]["tenants"] if t["slug"] == "cobalt")
    assert cobalt["state"] == state and any(
        r in cobalt["reason"] for r in (reason if isinstance(reason, tuple) else (reason,))
    )
    assert run.outputs["failed-count"] == "1" and run.outputs["verified-count"] == "1"
    errors = run.errors()
    assert len(errors) == 1 and "cobalt" in errors[0] and state in errors[0]
    assert f"| `cobalt` | {state} |" in run.summary


def test_verify_reads_the_rollouts_report_and_extends_it(start, verify, tmp_path, capsys, monkeypatch):
    sb = start("incident")
    path = str(tmp_path / "report.json")
    rolled = run_step(
        rollout_main,
        ["--cp-url", sb.url, "--target-tag", TAG, "--canary-slug", "acme", "--soak-seconds", "0",
         "--max-stragglers", "1", "--report", path],
        tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token,
    )  # fmt: skip
    assert rolled.code == 0
    run = verify(sb, report=path)
    assert run.code == 0
    assert run.report["rollout"]["verdict"] == "shipped-with-quarantine"  # the rollout's part is kept
    assert run.report["verify"]["counts"]["verified"] == 7
    assert states(run)["reno-stars"] == "quarantined"
    assert run.report["ok"] is True
    assert len(sb.cp_calls) == len(rolled.report["calls"])  # verify made no call: the fleet came from the report


def test_verify_refuses_a_report_whose_rollout_failed(start, verify, tmp_path):
    sb = start(deployed("acme"))
    path = tmp_path / "failed.json"
    path.write_text(
        json.dumps(
            {
                "schema_version": 1,
                "ok": False,
                "rollout": {"ok": False, "verdict": "systemic", "message": "x", "follow": "none"},
            }
        )
    )
    run = verify(sb, report=str(path))
    assert run.code == 2 and "did not ship" in run.report["verify"]["message"]
    assert not any(sb.tenant_hits.values())


def test_progress_lines_while_waiting(start, verify, monkeypatch):
    monkeypatch.setattr(poll, "PROGRESS_EVERY", 0.3)
    spec = deployed("acme", "birch")
    spec["tenants"][1].update(behaviour="slow", ready_after=1.2)
    sb = start(spec)
    run = verify(sb, "--verify-timeout-seconds", "10")
    assert run.code == 0
    assert "verified 1/2, waiting on 1, " in run.log


def test_summary_escapes_untrusted_reasons():
    seen = {
        "acme": verdict.Seen(State.UNHEALTHY, "buildinfo said <img src=x> | ::error::boom\r\n## [x](y) `z`"),
        "birch": verdict.Seen(State.VERIFIED, None, SHA),
    }
    text = verify_summary.render(False, "1 failed", seen, verdict.counts(seen))
    assert "| tenant | state | reason |" in text  # the column shows each tenant's state
    row = next(line for line in text.splitlines() if line.startswith("| `acme`"))
    assert row.count(" | ") == 2  # the reason did not add cells
    assert "<img" not in text and "&lt;img src=x&gt;" in row
    assert "\\|" in row and "\\`z\\`" in row and "\\[x\\]" in row
    assert "::" not in text and "##[" not in text
    assert "\r" not in text and text.count("\n") == len(text.splitlines()) - 1 + text.endswith("\n")


def test_classify_follows_the_verdict_table():
    ok = Reply(status=200, body=json.dumps({"git_sha": SHA.upper(), "x": 1}).encode())
    assert verdict.classify(Reply(status=204), ok, SHA[:7]).state == "verified"
    assert verdict.classify(Reply(status=200), ok, "abcdef0").state == "stale"
    assert verdict.classify(Reply(status=302), ok, SHA).reason == "healthz answered HTTP 302 (redirect, not followed)"
    assert verdict.classify(Reply(error="timed out"), ok, SHA).state == "unreachable"
    dev = verdict.classify(Reply(status=200), Reply(status=200, body=b'{"git_sha": "dev"}'), SHA)
    assert (dev.state, dev.reason, dev.build) == ("stale", f"serves build dev, expected {SHA[:12]}", "dev")
    for build, why in [
        (Reply(status=500), "buildinfo answered HTTP 500"),
        (Reply(status=200, body=b"<html>"), "not JSON"),
        (Reply(status=200, body=b'{"sha": "abc"}'), "git_sha"),
        (Reply(status=200, body=b'{"git_sha": "abc", "git_sha": "def"}'), "duplicate key"),
    ]:
        seen = verdict.classify(Reply(status=200), build, SHA)
        assert seen.state == "unhealthy" and why in seen.reason


def test_an_answer_that_cannot_be_judged_costs_no_worker(start, verify, monkeypatch):
    real = verdict.classify
    sb = start(deployed("acme", "birch", "cobalt"))
    calls = {"n": 0}

    def flaky(health, build, expected, head=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RecursionError("nested too deeply")
        return real(health, build, expected, head)

    monkeypatch.setattr(verdict, "classify", flaky)
    run = verify(sb, "--concurrency", "1", "--verify-timeout-seconds", "20")
    # the first answer could not be judged; the same worker went on, polled it again, and all passed
    assert run.code == 0, run.report["verify"]["message"]
    assert calls["n"] >= 4


def test_standalone_verify_never_reads_a_leftover_default_report(start, tmp_path, capsys, monkeypatch):
    sb = start(deployed("acme", "birch"))
    monkeypatch.chdir(tmp_path)
    leftover = {
        "schema_version": 1,
        "ok": False,
        "rollout": {"ok": False, "verdict": "systemic", "message": "x", "follow": "none"},
    }
    (tmp_path / "fleet-rollout-report.json").write_text(json.dumps(leftover))
    argv = [
        "--slugs", "acme,birch", "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA,
        "--poll-interval-seconds", "0.2", "--verify-timeout-seconds", "5",
    ]  # fmt: skip
    run = run_step(main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token)
    assert run.code == 0
    assert json.loads((tmp_path / "fleet-rollout-report.json").read_text()) == leftover  # untouched
    written = json.loads((tmp_path / "fleet-verify-report.json").read_text())
    assert written["verify"]["counts"]["verified"] == 2


# -- --response: a control plane's answer, as a deploy script saved it ----------------------------------


def answer_file(tmp_path, doc) -> str:
    path = tmp_path / "answer.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_response_rows_are_the_tenants_and_its_stragglers_are_quarantined(start, verify, tmp_path):
    sb = start(deployed("acme", "birch", "reno-stars:wedged"))
    rows = [{"slug": s, "phase": "batch-1", "verified_on_target": s != "reno-stars"} for s in sb.slugs]
    doc = {"ok": True, "results": rows, "stragglers": ["reno-stars"]}
    run = verify(sb, "--response", answer_file(tmp_path, doc))
    assert run.code == 0, run.report["verify"]["message"]
    assert states(run) == {"acme": "verified", "birch": "verified", "reno-stars": "quarantined"}
    assert not sb.tenant_hits.get("reno-stars") and sb.cp_calls == []


def test_response_aggregate_of_several_answers_is_read_the_same_way(start, verify, tmp_path):
    # What a deploy script writes after its canary call and its batch calls: all rows, one stragglers list.
    sb = start(deployed("acme", "birch", "cobalt", "dune:wedged"))
    rows = [{"slug": "acme", "phase": "canary"}] + [{"slug": s, "phase": "batch-1"} for s in ("birch", "cobalt")]
    rows.append({"slug": "dune", "phase": "batch-2", "verified_on_target": False, "error": "healthz timeout"})
    run = verify(sb, "--response", answer_file(tmp_path, {"ok": True, "results": rows, "stragglers": ["dune"]}))
    assert run.code == 0
    assert (run.report["verify"]["counts"]["verified"], run.report["verify"]["counts"]["quarantined"]) == (3, 1)
    assert states(run) == {"acme": "verified", "birch": "verified", "cobalt": "verified", "dune": "quarantined"}


def test_response_without_stragglers_quarantines_nobody(start, verify, tmp_path):
    sb = start(deployed("acme", "reno-stars:wedged"))
    doc = {"ok": True, "results": [{"slug": "acme"}, {"slug": "reno-stars"}]}
    run = verify(sb, "--response", answer_file(tmp_path, doc), "--verify-timeout-seconds", "1")
    assert run.code == 1
    assert states(run) == {"acme": "verified", "reno-stars": "unhealthy"}
    assert sb.tenant_hits["reno-stars"]


def test_response_quarantine_is_an_exact_whole_string_match(start, verify, tmp_path):
    sb = start(deployed("reno", "reno-stars:stale"))
    doc = {"ok": True, "results": [{"slug": "reno"}, {"slug": "reno-stars"}], "stragglers": ["reno"]}
    run = verify(sb, "--response", answer_file(tmp_path, doc), "--verify-timeout-seconds", "1")
    assert states(run) == {"reno": "quarantined", "reno-stars": "stale"}  # `reno` never matches `reno-stars`
    assert run.code == 1 and sb.tenant_hits["reno-stars"] and not sb.tenant_hits.get("reno")


def test_response_that_breaks_the_contract_is_refused_before_any_tenant_is_polled(start, verify, tmp_path):
    sb = start(deployed("acme"))
    doc = {"ok": True, "results": [{"slug": "acme"}, {"slug": "acme"}]}
    run = verify(sb, "--response", answer_file(tmp_path, doc))
    assert run.code == 2 and "duplicate slug 'acme'" in run.report["verify"]["message"]
    assert len(run.errors()) == 1 and not any(sb.tenant_hits.values())


def test_verify_polls_the_tenants_health_and_build_paths(start, verify):
    sb = start(deployed("acme"))
    run = verify(sb, "--healthz-path", "/health", "--buildinfo-path", "/buildinfo")
    assert run.code == 0
    assert {h["path"] for h in sb.tenant_hits["acme"]} >= {"health", "buildinfo"}


@pytest.mark.parametrize("path", ["health", "/../cp/admin", "/health?x=1", "/health#top", "//evil.example/x", "/a b"])
def test_tenant_paths_are_checked_before_any_request(start, verify, path):
    sb = start(deployed("acme"))
    run = verify(sb, "--healthz-path", path)
    assert run.code == 2 and "healthz-path must be an absolute path" in run.report["verify"]["message"]
    assert not any(sb.tenant_hits.values())


def test_a_report_that_does_not_exist_is_an_error_never_a_fallback(start, verify, tmp_path):
    sb = start(deployed("acme"))
    missing = str(tmp_path / "no-such-report.json")
    run = run_verify_raw(verify, sb, "--report", missing)
    assert run.code == 2 and len(run.errors()) == 1
    assert "::error::verify: --report '" in run.errors()[0]
    assert run.errors()[0].endswith("does not exist: verify reads the rollout's report from it")
    assert not any(sb.tenant_hits.values())


def run_verify_raw(verify, sb, *flags):
    """Verify with exactly these flags beyond the template and sha (no --slugs added)."""
    return verify(sb, *flags, report=flags[flags.index("--report") + 1])


def test_a_closed_pipe_ends_the_output_quietly_and_the_step_still_writes_its_report(start, tmp_path):
    sb = start(deployed("acme", "birch"))
    report = tmp_path / "piped.json"
    argv = [
        sys.executable, "-m", "verify", "--slugs", "acme,birch", "--tenant-url-template", sb.tenant_url_template,
        "--expected-sha", SHA, "--poll-interval-seconds", "0.2", "--report", str(report),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    env.pop("GITHUB_OUTPUT", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    piped = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$@" | head -n 1', "verify", *argv], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert piped.stderr == ""  # no BrokenPipeError traceback
    assert piped.stdout.startswith("verify: 2 tenants from --slugs")
    assert json.loads(report.read_text())["verify"]["ok"] is True  # the step went on to the end
    helped = subprocess.run(
        ["bash", "-c", '"$@" | head -n 1', "help", sys.executable, "-m", "verify", "--help"], env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert helped.stderr == "" and helped.stdout.startswith("usage: python -m verify")


def test_verify_run_again_on_its_own_report_decides_ok_afresh(start, verify, tmp_path):
    spec = deployed("acme", "birch")
    spec["tenants"][1].update(behaviour="slow", ready_after=1.5)
    sb = start(spec)
    path = str(tmp_path / "again.json")
    first = verify(sb, "--slugs", "acme,birch", "--verify-timeout-seconds", "0.5", report=path)
    assert first.code == 1 and first.outputs["ok"] == "false"
    second = verify(sb, "--slugs", "acme,birch", "--verify-timeout-seconds", "10", report=path)
    assert second.code == 0 and second.outputs["ok"] == "true"  # not the first run's false, read back
    assert second.report["ok"] is True and second.report["message"].startswith("all 2 tenants verified")


def test_next_steps_read_right_for_any_number_of_tenants_and_never_ask_an_untouched_one_to_be_fixed():
    from fleet.vocabulary import Outcome
    from verify.verdict import Seen, next_step

    steps = {
        (state, outcome): next_step(Seen(state, "why"), outcome) for state in State for outcome in [None, *Outcome]
    }
    said = [step for step in steps.values() if step]
    # The summary groups tenants under one next step ("recover: `a`, `b`, `c`"): no "it" that counts them.
    assert said and not any(re.search(r"\bit\b", step) for step in said)
    untouched = next_step(Seen(State.STALE, "old build"), Outcome.NOT_ATTEMPTED)
    assert untouched is not None and untouched.startswith("roll forward") and "nothing to fix" in untouched
