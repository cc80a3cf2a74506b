"""A fleet of 20,000 tenants: GitHub refuses a step summary over 1 MiB, so every list in a summary and
in the plan is cut short with `… and N more, see the report`, and the report keeps all of it."""

from __future__ import annotations

import json

import pytest
from faultservers import DRY, REDEPLOY, ClosedPort, dry_runs, json_reply
from support import SHA, TAG, run_step

from fleet import markdown, runner
from fleet.inputs import INPUTS
from fleet.vocabulary import State
from rollout.cli import NAMES
from rollout.cli import main as rollout_main
from rollout.plan import make_plan, plan_lines, settings_from
from verify import summary as verify_summary
from verify.cli import main as verify_main
from verify.verdict import Seen, counts

FLEET = [f"tenant-{i:05d}" for i in range(20_000)]
MIB = 1024 * 1024
LINE = 64 * 1024


def within_the_runners_limits(summary: str) -> None:
    """Under 1 MiB, no line over 64 KiB, and by the summary's own caps: the runner's cut never needed."""
    assert len(summary.encode()) < MIB and max(map(len, summary.splitlines())) < LINE
    assert runner.SUMMARY_CUT not in summary


def every_tenant_failed(conn) -> None:
    rows = [{"slug": s, "phase": "batch-1", "verified_on_target": False, "error": "ssm timed out"} for s in FLEET]
    json_reply({"ok": False, "error": "more stragglers than max_stragglers", "results": rows}, status=500)(conn)


@pytest.mark.parametrize(
    "flags, code, shown",
    [
        (["--mode", "fleet", "--dry-run", "true"], 0, ["1. call 1 (fleet, the control plane drives): 20000 tenants",
                                                       "tenant-00049 … and 19950 more, see the report"]),
        (["--batch-size", "300", "--dry-run", "true"], 0, ["1. call 50 (batch 50): tenant-14700, ",
                                                           "tenant-14749 … and 250 more, see the report",
                                                           "1. … and 17 more calls, see the report"]),
        (["--mode", "fleet", "--max-stragglers", "0"], 1, ["- `tenant-00049` (fleet): ssm timed out",
                                                           "- … and 19950 more, see the report",
                                                           "for all 20000 is in the report, under `recovery`",
                                                           "| … 19000 more rows in the report |"]),
    ],
    ids=["fleet-dry-run", "scoped-dry-run", "20000-stragglers"],
)  # fmt: skip
def test_a_fleet_of_20000_keeps_the_rollout_summary_under_the_runners_limit(
    serve, tmp_path, capsys, monkeypatch, flags, code, shown
):
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)
    cp = serve({DRY: dry_runs(*FLEET), REDEPLOY: every_tenant_failed})
    path = tmp_path / "report.json"
    argv = ["--cp-url", cp.url, "--target-tag", TAG, "--soak-seconds", "0", "--report", str(path), *flags]
    run = run_step(rollout_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token="cpt-Scale-1")
    assert run.code == code, run.errors()
    within_the_runners_limits(run.summary)
    for text in shown:
        assert text in run.summary, text
    assert "tenant-00050`" not in run.summary.split("<summary>Tenants (")[0]  # past 50: named in the report only
    assert len(run.report["tenants"]) == len(FLEET)  # the report has every one
    if code:
        assert len(run.report["stragglers"]) == len(FLEET) and "tenant-19999" in run.report["recovery"]
        # The ::error:: line names the first stragglers and counts the rest: one line, not the whole fleet.
        (error,) = run.errors()
        assert len(error) < 4096 and "and 19990 more" in error


def test_a_fleet_of_20000_quarantined_keeps_the_verify_summary_under_the_runners_limit(tmp_path, capsys, monkeypatch):
    answer, path, port = tmp_path / "answer.json", tmp_path / "verify.json", ClosedPort()
    answer.write_text(json.dumps({"ok": True, "results": [{"slug": s} for s in FLEET], "stragglers": FLEET}))
    argv = [
        "--response", str(answer), "--tenant-url-template", port.url + "/t/{slug}", "--expected-sha", SHA,
        "--verify-timeout-seconds", "1", "--report", str(path),
    ]  # fmt: skip
    try:
        run = run_step(verify_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=None)
    finally:
        port.close()
    assert run.code == 0
    within_the_runners_limits(run.summary)
    assert "`tenant-00049` … and 19950 more, see the report" in run.summary  # the next step's list
    assert "| … 19000 more rows in the report |" in run.summary
    assert len(run.report["verify"]["tenants"]) == len(FLEET)


def test_a_survey_of_20000_names_the_first_of_each_build_and_counts_the_rest():
    """The survey's build table and the verified list: one line per build, however many run it."""
    seen = {s: Seen(State.VERIFIED, None, SHA) for s in FLEET[:15_000]}
    seen |= {s: Seen(State.STALE, "serves build cdcdcdcdcdcd", "cd" * 20) for s in FLEET[15_000:]}
    steps = {s: "investigate: healthy but on another build" for s in FLEET[15_000:]}
    text = verify_summary.render(False, "survey", seen, counts(seen), steps, survey="the rollout failed")
    within_the_runners_limits(text)
    assert "| 15000 | `tenant-00000`, " in text and "`tenant-00049` … and 14950 more, see the report |" in text
    assert "| 5000 | `tenant-15000`, " in text and "`tenant-15049` … and 4950 more, see the report" in text
    assert "<details><summary>Verified (15000)</summary>" in text


def test_the_plan_names_50_calls_of_50_tenants_at_most():
    values = {name: INPUTS[name].default for name in NAMES}
    values |= {"cp-url": "http://127.0.0.1:1", "target-tag": TAG, "expected-sha": "", "canary-slug": "tenant-00000",
               "batch-size": "1", "dry-run": "true", "api-url": ""}  # fmt: skip
    settings = settings_from(values, {})
    lines = plan_lines(settings, make_plan(settings, FLEET))
    assert len(lines) == 1 + markdown.SHOWN + 1
    assert lines[0] == "call 1 (canary): tenant-00000" and lines[-1] == "… and 19949 more calls, see the report"
    wide = settings_from(values | {"batch-size": "5000"}, {})
    lines = plan_lines(wide, make_plan(wide, FLEET))
    assert lines[1].endswith("tenant-00050 … and 4950 more, see the report") and len(lines) == 5


def test_a_summary_past_the_runners_limit_is_cut_at_a_line_and_says_so(tmp_path, monkeypatch, capsys):
    path = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(path))
    huge = "\n".join(["## verdict", "x" * (300 * 1024), *(f"| row {i} | {'é' * 100} |" for i in range(20_000))])
    runner.write_summary(huge)
    written = path.read_text(encoding="utf-8")
    assert len(written.encode()) <= runner.MAX_SUMMARY_BYTES < MIB
    lines = written.rstrip("\n").splitlines()
    assert lines[0] == "## verdict" and len(lines[1]) == runner.MAX_SUMMARY_LINE and lines[1].endswith("…")
    assert lines[-1] == runner.SUMMARY_CUT and lines[-3].startswith("| row ")
    assert runner.SUMMARY_CUT in capsys.readouterr().out  # the log shows the same summary
