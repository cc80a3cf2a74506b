"""The rollout step against the sandbox control plane, over real HTTP."""

from __future__ import annotations

import json
import time

import pytest
from support import SHA, TAG, all_bodies, bodies, run_step, scenario

from rollout import plan as planning
from rollout.cli import main
from sandbox import Sandbox, sha_for_tag

EIGHT = ("acme", "birch", "cobalt", "dune", "reno-stars", "ember", "fjord", "harbor")


@pytest.fixture
def rollout(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)

    def _run(sb: Sandbox, *flags: str, token: str | None = "use-sandbox", report: bool = True):
        argv = ["--cp-url", sb.url, "--target-tag", TAG, "--soak-seconds", "0", *flags]
        if report:
            argv += ["--report", str(tmp_path / "report.json")]
        return run_step(
            main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch,
            token=sb.token if token == "use-sandbox" else token,
        )  # fmt: skip

    return _run


def serving(sb: Sandbox, slug: str) -> str:
    return sb.state()["tenants"][slug]["serving_sha"]


def test_clean_rollout_ships_everywhere_and_reports_no_stragglers(start, rollout, tmp_path):
    sb = start(scenario(*EIGHT))
    run = rollout(sb, "--canary-slug", "acme", "--max-stragglers", "1")
    assert run.code == 0
    assert "stragglers" not in run.report
    assert run.outputs["stragglers"] == "[]"
    assert run.outputs["ok"] == "true"
    assert run.outputs["quarantined-count"] == "0"
    assert run.outputs["report-path"] == str(tmp_path / "report.json") and run.outputs["verify"] == "none"
    assert run.report["rollout"]["verdict"] == "shipped"
    assert all(t["outcome"] == "redeployed" for t in run.report["tenants"])
    assert all(serving(sb, s) == SHA for s in EIGHT)
    assert run.warnings() == [] and run.errors() == []
    # the canary as its own strict call, then batches that carry no canary and no soak
    sent = bodies(sb)
    assert sent[0] == {
        "target_tag": TAG, "batch_size": 3, "dry_run": False, "confirm": True, "only_slugs": ["acme"],
        "canary_slug": "acme", "max_stragglers": 0, "soak_seconds": 0,
    }  # fmt: skip
    assert [b["only_slugs"] for b in sent[1:]] == [
        ["birch", "cobalt", "dune"], ["reno-stars", "ember", "fjord"], ["harbor"],
    ]  # fmt: skip
    assert all("canary_slug" not in b and b["soak_seconds"] == 0 and b["confirm"] is True for b in sent[1:])
    # before them: the fleet's enumeration (an unscoped dry run), then the probe of the canary's scope
    enumeration, probe = all_bodies(sb)[:2]
    assert enumeration == {"target_tag": TAG, "batch_size": 3, "dry_run": True, "confirm": True}
    assert probe == sent[0] | {"dry_run": True}
    assert run.summary.startswith("## ✅ Fleet rollout: shipped")


def test_one_straggler_within_tolerance_is_quarantined_and_warned(start, rollout):
    sb = start("incident")
    run = rollout(sb, "--canary-slug", "acme", "--max-stragglers", "1")
    assert run.code == 0
    assert run.outputs["ok"] == "true"
    assert json.loads(run.outputs["stragglers"]) == ["reno-stars"]
    assert run.outputs["quarantined-count"] == "1"
    assert run.report["stragglers"] == ["reno-stars"]
    assert run.warnings() == ["::warning::tenant reno-stars quarantined, needs individual recovery: healthz timeout"]
    assert serving(sb, "harbor") == SHA  # the healthy majority got the build
    assert serving(sb, "reno-stars") != SHA
    assert "| Quarantined stragglers | 1 |" in run.summary
    assert "--slugs reno-stars --max-stragglers 0" in run.summary
    # verdict first
    assert run.summary.splitlines()[0] == "## ⚠️ Fleet rollout: shipped-with-quarantine"


def test_two_stragglers_over_tolerance_fail_naming_the_tolerance(start, rollout):
    sb = start(scenario("acme", "birch:wedged", "cobalt:wedged", "dune"))
    run = rollout(sb, "--max-stragglers", "1", "--batch-size", "4")
    assert run.code == 1
    assert run.outputs["ok"] == "false"
    assert "2 stragglers, max tolerated 1" in run.report["message"]
    assert any("2 stragglers, max tolerated 1" in line for line in run.errors())
    assert json.loads(run.outputs["stragglers"]) == ["birch", "cobalt"]
    assert run.report["rollout"]["verdict"] == "systemic"


def test_budget_is_carried_from_batch_to_batch_and_the_rollout_halts_where_it_is_exceeded(start, rollout):
    tenants = ["c", "a1:wedged", "a2", "b1", "b2", "d1:wedged", "d2", "e1", "e2"]
    sb = start(scenario(*tenants))
    run = rollout(sb, "--canary-slug", "c", "--batch-size", "2", "--max-stragglers", "1")
    assert run.code == 1
    sent = bodies(sb)
    # canary strict, batch 1 gets the whole budget, later batches only what is unspent
    assert [b["max_stragglers"] for b in sent] == [0, 1, 0, 0]
    assert [b["only_slugs"] for b in sent][1:] == [["a1", "a2"], ["b1", "b2"], ["d1", "d2"]]
    # batch 4 (e1, e2) was never called and is named as left on its old build
    outcomes = {t["slug"]: t for t in run.report["tenants"]}
    assert outcomes["e1"]["outcome"] == "not-attempted" and "halted at batch 3" in outcomes["e1"]["reason"]
    assert serving(sb, "e1") != SHA and serving(sb, "b1") == SHA
    assert "halted at batch 3 of 4, 2 tenants left on their old build" in run.report["message"]


def test_failed_canary_fails_whatever_the_budget_and_no_batch_is_called(start, rollout):
    sb = start("canary-fails")
    run = rollout(sb, "--canary-slug", "acme", "--max-stragglers", "50")
    assert run.code == 1
    assert len(bodies(sb)) == 1 and bodies(sb)[0]["only_slugs"] == ["acme"]
    assert run.report["rollout"]["verdict"] == "canary-failed"
    assert "canary acme failed" in run.report["message"]
    others = [t for t in run.report["tenants"] if t["slug"] != "acme"]
    assert others and all(t["outcome"] == "not-attempted" for t in others)


def test_canary_that_turns_unhealthy_while_soaking_fails_the_rollout(start, rollout):
    sb = start(scenario("acme:flapping", "birch", "cobalt"))
    run = rollout(
        sb, "--canary-slug", "acme", "--soak-seconds", "2", "--poll-interval-seconds", "0.1",
        "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA, "--max-stragglers", "5",
    )  # fmt: skip
    assert run.code == 1
    assert "turned unhealthy while soaking" in run.report["message"]
    assert len(bodies(sb)) == 1  # no batch after a failed soak


def test_ok_true_from_the_control_plane_with_an_unverified_tenant_is_a_straggler(start, rollout):
    sb = start(scenario("acme", "birch:wedged", "cobalt", control_plane={"fault": "ok_despite_unverified"}))
    strict = rollout(sb, "--max-stragglers", "0")
    assert strict.code == 1
    assert json.loads(strict.outputs["stragglers"]) == ["birch"]
    tolerant = rollout(sb, "--max-stragglers", "1")
    assert tolerant.code == 0 and tolerant.report["stragglers"] == ["birch"]


def test_a_tenant_missing_from_results_is_a_straggler(start, rollout):
    sb = start(scenario("acme", "birch", "cobalt", control_plane={"fault": "missing_tenant", "missing": ["cobalt"]}))
    run = rollout(sb, "--max-stragglers", "1")
    assert run.code == 0
    assert run.report["stragglers"] == ["cobalt"]
    cobalt = next(t for t in run.report["tenants"] if t["slug"] == "cobalt")
    assert cobalt["reason"] == "no row from the control plane"
    strict = rollout(sb, "--max-stragglers", "0")
    assert strict.code == 1 and "1 straggler, max tolerated 0" in strict.report["message"]


@pytest.mark.parametrize(("budget", "resolved", "code"), [("25%", 2, 0), ("12.5%", 1, 1), ("24.9%", 1, 1)])
def test_percentage_tolerance_resolves_against_the_scope_rounding_down(start, rollout, budget, resolved, code):
    sb = start(scenario("acme", "birch:wedged", "cobalt:wedged", "dune", "ember", "fjord", "harbor", "ivy"))
    run = rollout(sb, "--max-stragglers", budget, "--batch-size", "8")
    assert run.report["plan"]["budget"] == {"requested": budget, "source": "input", "resolved": resolved}
    assert f"straggler budget {resolved} (from input '{budget}')" in run.log
    assert run.code == code


def test_budget_comes_from_the_input_then_the_environment_then_one(start, rollout, monkeypatch):
    sb = start("incident")
    run = rollout(sb)  # nothing given: 1, on the command line as in the action
    assert run.code == 0 and run.report["plan"]["budget"] == {"requested": "1", "source": "default", "resolved": 1}
    monkeypatch.setenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", "0")
    run = rollout(sb)
    assert run.code == 1 and run.report["plan"]["budget"]["source"] == "env"
    assert rollout(sb, "--max-stragglers", "1").code == 0  # the input wins over the environment


def test_action_fallback_is_one_straggler(start, rollout, monkeypatch):
    sb = start("incident")
    monkeypatch.setenv("FLEET_INPUTS", json.dumps({"cp-url": sb.url, "target-tag": TAG, "max-stragglers": ""}))
    run = rollout(sb)
    assert run.code == 0
    assert run.report["plan"]["budget"] == {"requested": "1", "source": "default", "resolved": 1}


def test_fleet_mode_makes_one_call_that_the_control_plane_drives(start, rollout):
    sb = start("incident")
    run = rollout(sb, "--mode", "fleet", "--canary-slug", "acme", "--max-stragglers", "1", "--soak-seconds", "0")
    assert run.code == 0
    sent = bodies(sb)
    assert len(sent) == 1
    assert sent[0]["canary_slug"] == "acme" and sent[0]["max_stragglers"] == 1 and "only_slugs" not in sent[0]
    assert sent[0]["confirm"] is True and len(all_bodies(sb)) == 2  # the enumeration, then the one call
    assert run.report["stragglers"] == ["reno-stars"]
    systemic = rollout(sb, "--mode", "fleet", "--canary-slug", "acme", "--max-stragglers", "0")
    assert systemic.code == 1 and systemic.report["rollout"]["verdict"] == "systemic"


def test_fleet_mode_failed_canary(start, rollout):
    sb = start("canary-fails")
    run = rollout(sb, "--mode", "fleet", "--canary-slug", "acme", "--max-stragglers", "9")
    assert run.code == 1 and run.report["rollout"]["verdict"] == "canary-failed"
    assert {t["outcome"] for t in run.report["tenants"] if t["slug"] != "acme"} == {"not-attempted"}


@pytest.mark.parametrize("mode", ["scoped", "fleet"])
def test_dry_run_plans_reports_and_deploys_nothing(start, rollout, mode):
    sb = start("incident")
    run = rollout(sb, "--mode", mode, "--canary-slug", "acme", "--dry-run", "true")
    assert run.code == 0
    assert bodies(sb) == [] and len(all_bodies(sb)) >= 2 and all(b["dry_run"] is True for b in all_bodies(sb))
    assert all(serving(sb, s) != SHA for s in EIGHT)
    assert run.report["rollout"]["verdict"] == "planned"
    assert {t["outcome"] for t in run.report["tenants"]} == {"dry-run"}
    assert "stragglers" not in run.report and run.outputs["stragglers"] == "[]"


def test_a_dry_run_prints_its_plan_call_by_call_in_the_log_and_the_summary(start, rollout):
    sb = start("incident")
    run = rollout(sb, "--canary-slug", "acme", "--dry-run", "true")
    calls = [
        "call 1 (canary): acme",
        "call 2 (batch 1): birch, cobalt, dune",
        "call 3 (batch 2): reno-stars, ember, fjord",
        "call 4 (batch 3): harbor",
    ]
    assert [line for line in run.log.splitlines() if line.startswith("plan: call ")] == [f"plan: {c}" for c in calls]
    plan = run.summary.split("### The plan\n\n", 1)[1].split("\n\n", 1)[0]
    assert plan.splitlines() == [f"1. {c}" for c in calls]
    assert "dry run: 8 tenants planned in 4 calls; nothing was deployed" in run.log


def test_counts_of_one_are_singular(start, rollout):
    sb = start(scenario("acme"))
    run = rollout(sb, "--dry-run", "true")
    assert "dry run: 1 tenant planned in 1 call; nothing was deployed" in run.log
    assert "to 1 of 1 tenant;" in run.log and "1 batch of up to 3" in run.log


def test_a_missing_token_names_the_input_in_the_action_and_the_variable_on_the_command_line(
    start, rollout, monkeypatch
):
    sb = start("clean")
    assert rollout(sb, token=None).report["message"] == "CP_TOKEN is required: the control-plane token"
    monkeypatch.setenv("FLEET_INPUTS", json.dumps({"cp-url": sb.url, "target-tag": TAG, "cp-token": ""}))
    run = rollout(sb, token=None)
    assert run.code == 2 and run.report["message"] == "the cp-token input is required: the control-plane token"
    assert sb.cp_calls == []


def test_slugs_limit_the_rollout_and_unknown_names_fail_before_any_call(start, rollout):
    sb = start("incident")
    run = rollout(sb, "--slugs", "reno-stars,\nharbor", "--canary-slug", "acme", "--max-stragglers", "0")
    sent = bodies(sb)
    assert [b["only_slugs"] for b in sent] == [["reno-stars", "harbor"]]  # canary outside the scope: not redeployed
    assert "canary acme is outside the scope" in run.log
    assert serving(sb, "acme") != SHA
    assert run.code == 1  # reno-stars is still wedged and the recovery is strict
    before = len(sb.cp_calls)
    bad = rollout(sb, "--slugs", "harbor,reno")
    assert bad.code == 2
    assert "slugs names tenants that are not in the control plane's fleet: reno" in bad.report["message"]
    assert [c["body"]["dry_run"] for c in sb.cp_calls[before:]] == [True]  # the enumeration only


def test_report_and_outputs_are_written_when_the_input_is_bad(start, rollout):
    sb = start("clean")
    run = rollout(sb, "--max-stragglers", "lots")
    assert run.code == 2
    assert run.outputs["ok"] == "false"
    assert "max-stragglers must be an integer >= 0 or a percentage" in run.report["message"]
    assert run.errors() and sb.cp_calls == []


def test_missing_token_is_a_clear_error(start, rollout):
    sb = start("clean")
    run = rollout(sb, token=None)
    assert run.code == 2 and run.report["message"] == "CP_TOKEN is required: the control-plane token"


@pytest.mark.parametrize(
    ("text", "scope", "expected"),
    [("0", 10, 0), ("3", 1, 3), ("2%", 100, 2), ("2%", 49, 0), ("2.5%", 80, 2), ("100%", 7, 7), ("33.3333%", 3, 0)],
)
def test_budget_resolution(text, scope, expected):
    assert planning.parse_budget(text, "input").resolve(scope) == expected


@pytest.mark.parametrize("text", ["-1", "1.5", "101%", "%", "2 %", "two", "1e3"])
def test_budget_rejects_what_is_not_a_count_or_percentage(text):
    with pytest.raises(ValueError, match="max-stragglers must be"):
        planning.parse_budget(text, "input")


def test_sandbox_tag_to_sha():
    assert sha_for_tag(TAG) == SHA


@pytest.mark.parametrize(
    ("flag", "value", "why"),
    [
        ("--concurrency", "0", "concurrency must be an integer from 1 to 512"),
        ("--verify-timeout-seconds", "soon", "verify-timeout-seconds must be a number of seconds"),
        ("--expected-sha", "abc", "expected-sha must be at least 7 hex digits"),
    ],
)
def test_verify_inputs_fail_before_the_fleet_moves(start, rollout, flag, value, why):
    sb = start("clean")
    # with a tenant URL template, verify follows: its inputs are checked before anything is sent
    run = rollout(sb, "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA, flag, value)
    assert run.code == 2 and why in run.report["message"]
    assert sb.cp_calls == []


def test_soak_that_stays_healthy_lets_the_batches_go(start, rollout):
    sb = start(scenario("acme", "birch", "cobalt"))
    run = rollout(
        sb, "--canary-slug", "acme", "--soak-seconds", "1", "--poll-interval-seconds", "0.3",
        "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA,
    )  # fmt: skip
    assert run.code == 0, run.report["message"]
    assert "soaking canary acme for 1 s" in run.log
    assert len(sb.tenant_hits["acme"]) >= 3  # watched through the soak
    assert len(bodies(sb)) == 2


def test_a_pasted_token_with_a_trailing_newline_works_and_a_broken_one_is_refused(start, rollout):
    sb = start("clean")
    assert rollout(sb, token=sb.token + "\n").code == 0
    bad = rollout(sb, token="two words")
    assert bad.code == 2 and "CP_TOKEN holds whitespace" in bad.report["message"]
    assert "two words" not in bad.log and sb.cp_calls[-1]["method"] == "POST"  # the refused run sent nothing


def test_a_missing_ca_bundle_fails_before_any_call(start, rollout, tmp_path):
    sb = start("clean")
    run = rollout(sb, "--ca-bundle", str(tmp_path / "nowhere.pem"))
    assert run.code == 2 and "is not a readable file" in run.report["message"]
    assert sb.cp_calls == []


@pytest.mark.parametrize(
    "content",
    ["not a certificate\n", "", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"],
    ids=["text", "empty", "broken-pem"],
)
def test_a_ca_bundle_without_a_pem_certificate_fails_before_any_call(start, rollout, tmp_path, content):
    sb = start("clean")
    bundle = tmp_path / "private-ca.pem"
    bundle.write_text(content)
    run = rollout(sb, "--ca-bundle", str(bundle), "--tenant-url-template", sb.tenant_url_template)
    assert run.code == 2 and sb.cp_calls == []
    assert "holds no PEM certificate" in run.report["message"] and "private-ca.pem" in run.report["message"]
    assert len(run.errors()) == 1 and "private-ca.pem" in run.errors()[0]


@pytest.mark.parametrize("mode", ["scoped", "fleet"])
def test_a_dry_run_the_control_plane_rejects_fails(start, rollout, mode):
    sb = start(scenario("acme", "birch", control_plane={"fault": "http_500", "on": "dry_run"}))
    run = rollout(sb, "--mode", mode, "--dry-run", "true")
    assert run.code == 1 and run.outputs["ok"] == "false"
    assert "internal error" in run.report["message"]


def test_tenants_missing_from_a_failed_scoped_call_are_stragglers(start, rollout):
    spec = scenario("a1:wedged", "a2", "a3", control_plane={"fault": "missing_tenant", "missing": ["a3"]})
    sb = start(spec)
    run = rollout(sb, "--batch-size", "3", "--max-stragglers", "0")
    assert run.code == 1
    assert run.report["stragglers"] == ["a1", "a3"]
    assert "2 stragglers, max tolerated 0" in run.report["message"]


def test_the_recovery_command_keeps_the_connection_settings(start, rollout):
    sb = start("incident")
    run = rollout(sb, "--max-stragglers", "1", "--allow-http", "true", "--cp-timeout-seconds", "90")
    assert run.code == 0
    line = next(line for line in run.summary.splitlines() if line.startswith("CP_TOKEN=..."))
    assert "--slugs reno-stars --max-stragglers 0" in line
    assert "--allow-http true" in line and "--cp-timeout-seconds 90" in line


def test_a_token_that_breaks_over_lines_is_refused_and_the_report_stays_valid_json(start, rollout):
    sb = start("clean")
    run = rollout(sb, token="sometoken-123\nfalse")
    assert run.code == 2 and "CP_TOKEN holds whitespace" in run.report["message"]
    assert run.report["ok"] is False  # parsed: scrubbing never touches the JSON's own words
    assert "sometoken-123" not in run.log


@pytest.mark.parametrize(
    ("flags", "verify"),
    [
        (["--tenant-url-template", "http://127.0.0.1:9/t/{slug}", "--expected-sha", SHA], "check"),
        (["--tenant-url-template", "http://127.0.0.1:9/t/{slug}", "--expected-sha", SHA, "--dry-run", "true"], "none"),
        ([], "none"),
        (["--tenant-url-template", " "], "none"),
    ],
)
def test_the_rollout_says_whether_verify_follows(start, rollout, flags, verify):
    sb = start("clean")
    run = rollout(sb, *flags)
    assert run.code == 0
    assert run.outputs["verify"] == verify


def test_the_action_refuses_a_template_without_an_expected_sha_before_the_fleet_moves(start, rollout, monkeypatch):
    sb = start("clean")
    action = {"cp-url": sb.url, "target-tag": TAG, "tenant-url-template": sb.tenant_url_template, "expected-sha": ""}
    monkeypatch.setenv("FLEET_INPUTS", json.dumps(action))
    run = rollout(sb)
    assert run.code == 2 and run.report["message"] == "expected-sha is required"
    assert sb.cp_calls == []


def test_the_rollout_has_a_deadline_that_no_call_outlives(start, rollout):
    sb = start("incident")
    run = rollout(sb, "--canary-slug", "acme", "--cp-timeout-seconds", "100", "--soak-seconds", "0")
    # the scope probe, canary + 3 batches, each up to cp-timeout, plus the margin
    assert run.report["plan"]["deadline_seconds"] == 5 * 100 + planning.RUN_MARGIN_SECONDS
    assert "so the rollout ends at the latest 560 s from now" in run.log


def test_a_call_past_the_rollouts_deadline_is_not_sent(start):
    from fleet.cp import ControlPlane, CPError

    sb = start("clean")
    cp = ControlPlane(sb.url, sb.token, timeout=30)
    cp.deadline = time.monotonic() - 1
    with pytest.raises(CPError, match="deadline passed before POST /cp/admin/tenants/redeploy-fleet"):
        cp.enumerate({"target_tag": TAG, "confirm": True})
    assert sb.cp_calls == []


def test_a_contract_break_after_a_redeploy_is_a_failed_rollout_not_bad_input(start, rollout, monkeypatch):
    from rollout import coverage

    def broken(expected, answer, **kw):
        raise coverage.BadAnswer("redeploy answer rejected: two results for slug 'acme'")

    sb = start("clean")
    monkeypatch.setattr(coverage, "assess", broken)
    run = rollout(sb)
    assert run.code == 1 and "two results" in run.report["message"]
