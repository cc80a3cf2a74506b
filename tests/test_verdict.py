"""The run's verdict, decided once (fleet/verdict.py): every rollout verdict and every verify verdict
through the one function, and each step's report carrying exactly its answer at the top."""

from __future__ import annotations

import json

import pytest
from support import SHA, TAG, run_step

from fleet.verdict import RolloutEnd, RunVerdict, VerifyEnd, run_verdict
from fleet.vocabulary import Follow, RolloutVerdict, VerifyVerdict
from rollout.cli import main as rollout_main
from sandbox import Sandbox
from verify.cli import main as verify_main

V = RolloutVerdict
# Each rollout verdict: whether it holds, and what follows it when a real call went out (and when not).
TABLE = {
    V.SHIPPED: (True, Follow.CHECK, Follow.CHECK),
    V.SHIPPED_WITH_QUARANTINE: (True, Follow.CHECK, Follow.CHECK),
    V.SHIPPED_WITH_CHRONIC: (False, Follow.CHECK, Follow.CHECK),  # the fleet shipped: verify checks it
    V.PLANNED: (True, Follow.NONE, Follow.NONE),
    V.SUPERSEDED: (True, Follow.NONE, Follow.NONE),
    V.CANARY_FAILED: (False, Follow.SURVEY, Follow.NONE),
    V.SYSTEMIC: (False, Follow.SURVEY, Follow.NONE),
    V.FAILED: (False, Follow.SURVEY, Follow.NONE),
    V.CANNOT_SCOPE: (False, Follow.SURVEY, Follow.NONE),
    V.WIDENED: (False, Follow.SURVEY, Follow.NONE),
    V.HALTED: (False, Follow.SURVEY, Follow.NONE),
    V.CANCELLED: (False, Follow.NONE, Follow.NONE),  # a cancelled job starts nothing new
}


def test_the_table_names_every_rollout_verdict():
    assert set(TABLE) == set(RolloutVerdict)


@pytest.mark.parametrize("verdict", list(RolloutVerdict), ids=str)
@pytest.mark.parametrize("touched", [True, False], ids=["touched", "untouched"])
def test_each_rollout_verdict_decides_ok_and_what_follows(verdict, touched):
    ok, after_a_real_call, otherwise = TABLE[verdict]
    follow = after_a_real_call if touched else otherwise
    assert run_verdict(RolloutEnd(verdict, "said", touched), None) == RunVerdict(verdict, "said", ok, follow, follow)


@pytest.mark.parametrize("verdict", [V.SHIPPED, V.SYSTEMIC], ids=str)
def test_without_a_tenant_url_template_nothing_runs_next_but_the_report_keeps_the_follow_up(verdict):
    run = run_verdict(RolloutEnd(verdict, "said", touched=True, tenants_known=False), None)
    assert (run.follow, run.next) == (TABLE[verdict][1], Follow.NONE)


@pytest.mark.parametrize(
    ("rollout", "verify", "verdict", "message", "ok"),
    [
        (V.SHIPPED, VerifyVerdict.PASSED, V.SHIPPED, "rolled", True),
        (V.SHIPPED_WITH_QUARANTINE, VerifyVerdict.PASSED, V.SHIPPED_WITH_QUARANTINE, "rolled", True),
        (V.SHIPPED, VerifyVerdict.FAILED, VerifyVerdict.FAILED, "verified", False),
        (V.SYSTEMIC, VerifyVerdict.SURVEY, VerifyVerdict.SURVEY, "verified", False),
        (V.CANCELLED, VerifyVerdict.FAILED, VerifyVerdict.FAILED, "verified", False),
        # a verify that passes never makes a rollout that failed hold
        (V.FAILED, VerifyVerdict.PASSED, V.FAILED, "rolled", False),
    ],
    ids=str,
)
def test_each_verify_verdict_after_a_rollout(rollout, verify, verdict, message, ok):
    run = run_verdict(RolloutEnd(rollout, "rolled", True), VerifyEnd(verify, "verified"))
    assert (run.verdict, run.message, run.ok) == (verdict, message, ok)


@pytest.mark.parametrize("verify", list(VerifyVerdict), ids=str)
def test_verify_on_its_own_is_the_runs_verdict(verify):
    run = run_verdict(None, VerifyEnd(verify, "verified"))
    assert run == RunVerdict(verify, "verified", verify == VerifyVerdict.PASSED)


def test_a_run_with_neither_step_has_no_verdict():
    with pytest.raises(ValueError, match="needs the rollout's outcome"):
        run_verdict(None, None)


# -- the reports carry exactly its answer ------------------------------------------------------------


@pytest.fixture
def rollout(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)

    def _run(sb: Sandbox, *flags: str):
        argv = ["--cp-url", sb.url, "--target-tag", TAG, "--soak-seconds", "0", "--report", str(tmp_path / "r.json")]
        return run_step(rollout_main, [*argv, *flags], tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch,
                        token=sb.token)  # fmt: skip

    return _run


def decided(report: dict) -> RunVerdict:
    """The one function's answer for what the report says happened."""
    part = report["rollout"]
    ended = RolloutEnd(RolloutVerdict(part["verdict"]), part["message"], part["touched"])
    section = report.get("verify")
    return run_verdict(ended, VerifyEnd(VerifyVerdict(section["verdict"]), section["message"]) if section else None)


VERIFY = ("--expected-sha", SHA, "--verify", "true", "--verify-timeout-seconds", "3", "--poll-interval-seconds", "0.2")


@pytest.mark.parametrize(
    ("preset", "flags", "verdict", "follow"),
    [
        ("clean", ("--canary-slug", "acme", *VERIFY), "shipped", "check"),
        ("systemic", ("--canary-slug", "acme", "--max-stragglers", "1", *VERIFY), "survey", "survey"),
        ("clean", ("--dry-run", "true"), "planned", "none"),
        ("ignores-scope", VERIFY, "cannot-scope", "none"),
    ],
    ids=["shipped-and-verified", "systemic-and-surveyed", "planned", "cannot-scope"],
)
def test_the_reports_top_is_the_one_functions_answer(start, rollout, preset, flags, verdict, follow):
    sb = start(preset)
    run = rollout(sb, *flags, *(("--tenant-url-template", sb.tenant_url_template) if "--verify" in flags else ()))
    report = run.report
    assert report is not None
    run_ = decided(report)
    assert (report["ok"], report["verdict"], report["message"]) == (run_.ok, run_.verdict, run_.message)
    assert (report["verdict"], report["rollout"]["follow"]) == (verdict, follow)
    assert run.outputs["ok"] == ("true" if run_.ok else "false")


def test_a_report_that_does_not_say_what_follows_the_rollout_is_refused(start, tmp_path, capsys, monkeypatch):
    sb = start("clean")
    plan = {"mode": "scoped", "target_tag": TAG, "dry_run": False, "budget": {"source": "default"}, "scope": ["acme"]}
    rollout = {"ok": True, "verdict": "shipped", "message": "shipped", "touched": True}
    older = tmp_path / "older.json"
    older.write_text(json.dumps({"schema_version": 1, "ok": True, "plan": plan, "rollout": rollout}))
    argv = ["--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA, "--report", str(older)]
    run = run_step(verify_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=None)
    assert run.code == 2 and not any(sb.tenant_hits.values())
    assert run.report is not None and run.report["verify"]["message"].startswith(
        "the report's rollout does not say what follows it (a report from an older version)"
    )
