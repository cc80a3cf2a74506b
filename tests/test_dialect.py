"""The real control plane's dialect, against the sandbox over real HTTP: the fleet enumerated by a dry
run, calls scoped by only_slugs and confirmed, free-form phases, bare dry-run rows, rows without proof,
no stragglers key, gateway flakes sent again, the tenants' real health path, and both halves of scope
safety: a control plane that cannot scope is caught before anything is deployed, and one that widens
a real call is halted right after it."""

from __future__ import annotations

import json

import pytest
from support import SHA, TAG, all_bodies, bodies, run_step, scenario

from fleet import cp as cp_module
from rollout.cli import main
from sandbox import Sandbox, load_scenario
from verify.cli import main as verify_main

EIGHT = ("acme", "birch", "cobalt", "dune", "reno-stars", "ember", "fjord", "harbor")


@pytest.fixture
def rollout(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)

    def _run(sb: Sandbox, *flags: str):
        argv = ["--cp-url", sb.url, "--target-tag", TAG, "--soak-seconds", "0", "--report", str(tmp_path / "r.json")]
        return run_step(
            main, [*argv, *flags], tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token
        )

    return _run


def serving(sb: Sandbox, slug: str) -> str:
    return sb.state()["tenants"][slug]["serving_sha"]


def test_the_fleet_is_what_an_unscoped_confirmed_dry_run_answers(start, rollout):
    sb = start(scenario("acme", "birch", "gone:stopped", "cobalt"))
    run = rollout(sb, "--batch-size", "2")
    assert run.code == 0, run.report["message"]
    first = sb.cp_calls[0]
    assert first["method"] == "POST" and first["path"] == "/cp/admin/tenants/redeploy-fleet"
    assert first["body"]["dry_run"] is True and first["body"]["confirm"] is True and "only_slugs" not in first["body"]
    assert run.report["plan"]["scope"] == ["acme", "birch", "cobalt"]  # a stopped tenant is no candidate
    assert run.report["calls"][0]["kind"] == "enumerate"
    assert all("slugs" not in c["body"] for c in sb.cp_calls)  # never the draft's field
    assert all(c["body"]["confirm"] is True for c in sb.cp_calls)


def test_each_tenant_shows_the_rollouts_own_step_and_keeps_the_control_planes_phase(start, rollout):
    # Every scoped call is the control plane's `batch-1`: the step the log names is the one that answers
    # "which batch was it in?".
    sb = start("clean")
    run = rollout(sb, "--canary-slug", "acme", "--batch-size", "3")
    assert run.code == 0
    steps = {t["slug"]: (t["phase"], t["cp_phase"]) for t in run.report["tenants"]}
    assert steps["acme"] == ("canary", "canary")
    assert steps["birch"] == ("batch 1/3", "batch-1") and steps["harbor"] == ("batch 3/3", "batch-1")
    assert "batch 3/3: harbor" in run.log
    assert "| tenant | step | outcome | reason |" in run.summary
    assert "| `harbor` | batch 3/3 | redeployed |" in run.summary


def test_a_dry_run_rollout_accepts_bare_rows_and_deploys_nothing(start, rollout):
    sb = start("incident")
    run = rollout(sb, "--canary-slug", "acme", "--dry-run", "true")
    assert run.code == 0 and run.report["rollout"]["verdict"] == "planned"
    rows = [row for c in run.report["calls"] for row in c["response"]["results"]]
    assert rows and all(set(row) == {"slug", "phase", "ssm_status"} and row["ssm_status"] == "DryRun" for row in rows)
    assert bodies(sb) == [] and all(serving(sb, s) != SHA for s in EIGHT)


def test_a_real_row_without_verified_on_target_proves_nothing_and_is_a_straggler(start, rollout):
    sb = start(scenario("acme", "birch", "cobalt", control_plane={"fault": "unproven", "unproven": ["birch"]}))
    run = rollout(sb, "--max-stragglers", "1")
    assert run.code == 0
    assert run.report["stragglers"] == ["birch"]
    birch = next(t for t in run.report["tenants"] if t["slug"] == "birch")
    assert birch["outcome"] == "quarantined" and "no verified_on_target" in birch["reason"]
    assert rollout(sb, "--max-stragglers", "0").code == 1  # strict: the unproven tenant fails the rollout


def test_a_control_plane_that_never_sends_stragglers_still_gets_them_rederived(start, rollout):
    sb = start("no-stragglers-key")
    run = rollout(sb, "--canary-slug", "acme", "--max-stragglers", "1")
    assert all("stragglers" not in c["response"] for c in run.report["calls"])
    assert run.code == 0 and json.loads(run.outputs["stragglers"]) == ["reno-stars"]
    assert "::warning::tenant reno-stars quarantined, needs individual recovery: healthz timeout" in run.warnings()


def test_a_gateway_502_on_a_real_call_is_sent_again_and_the_rollout_goes_on(start, rollout, monkeypatch):
    monkeypatch.setattr(cp_module, "RETRY", cp_module.RetryPolicy(delays=(0.2, 0.4, 0.8), jitter=0.0))
    sb = start("gateway-flake")
    run = rollout(sb, "--canary-slug", "acme")
    assert run.code == 0, run.report["message"]
    assert [c["status"] for c in sb.cp_calls if not c["body"]["dry_run"]][:2] == [502, 200]
    assert bodies(sb)[0] == bodies(sb)[1]  # the same canary call, sent again
    assert run.warnings() == ["::warning::control plane answered HTTP 502 (attempt 1 of 4); sending it again in 0.2 s"]
    assert all(serving(sb, s) == SHA for s in EIGHT)


def test_the_retry_schedule_is_three_retries_about_5_10_and_20_s_apart():
    policy = cp_module.RETRY
    assert policy.statuses == {429, 502, 503, 504} and policy.attempts == 4
    waits = [policy.wait(n) for n in range(4)]
    assert waits[3] is None
    for wait, nominal in zip(waits, (5, 10, 20), strict=False):
        assert wait is not None and 0.8 * nominal <= wait <= nominal
    assert policy.wait(0, retry_after=7.0) == 7.0  # Retry-After wins


# -- scope safety --------------------------------------------------------------------------------------


def test_a_control_plane_that_ignores_only_slugs_gets_zero_real_calls(start, rollout):
    sb = start("ignores-scope")
    run = rollout(sb, "--canary-slug", "acme")
    assert run.code == 1 and run.report["rollout"]["verdict"] == "cannot-scope"
    assert bodies(sb) == []  # zero real redeploy calls
    assert [b["dry_run"] for b in all_bodies(sb)] == [True, True]  # the enumeration and the probe
    assert len(run.errors()) == 1
    error = run.errors()[0]
    assert "only_slugs acme" in error and "answered for birch, cobalt" in error and "use mode: fleet" in error
    assert all(serving(sb, s) != SHA for s in EIGHT)
    assert {t["outcome"] for t in run.report["tenants"]} == {"not-attempted"}


def test_a_control_plane_that_rejects_only_slugs_is_quoted_and_fleet_mode_works_with_it(start, rollout):
    sb = start("rejects-scope")
    run = rollout(sb, "--canary-slug", "acme")
    assert run.code == 1 and bodies(sb) == []
    assert "'unknown field: only_slugs'" in run.errors()[0] and "use mode: fleet" in run.errors()[0]
    fleet = rollout(sb, "--canary-slug", "acme", "--mode", "fleet")
    assert fleet.code == 0, fleet.report["message"]
    assert all(serving(sb, s) == SHA for s in EIGHT)


def test_fleet_mode_with_slugs_probes_the_scope_too(start, rollout):
    sb = start("ignores-scope")
    run = rollout(sb, "--mode", "fleet", "--slugs", "birch")
    assert run.code == 1 and run.report["rollout"]["verdict"] == "cannot-scope" and bodies(sb) == []


def test_a_control_plane_that_widens_a_real_call_is_halted_after_that_call(start, rollout):
    # Its dry runs honour only_slugs, so the probe passes; its real calls ignore it.
    spec = load_scenario("clean")
    spec["control_plane"] = {**spec["control_plane"], "fault": "ignores_scope", "on": "redeploy"}
    sb = start(spec)
    run = rollout(sb, "--canary-slug", "acme", "--max-stragglers", "5")
    assert run.code == 1 and run.report["rollout"]["verdict"] == "widened"
    assert len(bodies(sb)) == 1  # the canary call widened: no batch followed
    assert run.report["outside_scope"] == [s for s in EIGHT if s != "acme"]
    assert "widened the canary call" in run.errors()[0] and "birch, cobalt" in run.errors()[0]
    assert "Touched outside the call's scope" in run.summary and "`harbor`" in run.summary


# -- the tenants' real health path ----------------------------------------------------------------------


def test_the_real_tenants_health_path_is_used_by_the_soak_and_by_verify(start, rollout, tmp_path, capsys, monkeypatch):
    sb = start("real")
    run = rollout(
        sb, "--canary-slug", "acme", "--soak-seconds", "1", "--poll-interval-seconds", "0.3",
        "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA, "--healthz-path", "/health",
    )  # fmt: skip
    assert run.code == 0, run.report["message"]
    assert {h["path"] for h in sb.tenant_hits["acme"]} == {"health"}
    argv = [
        "--report", str(tmp_path / "r.json"), "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA,
        "--poll-interval-seconds", "0.2", "--verify-timeout-seconds", "5",
    ]  # fmt: skip
    checked = run_step(
        verify_main, [*argv, "--healthz-path", "/health"], tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch,
        token=None,
    )  # fmt: skip
    assert checked.code == 0 and checked.outputs["verified-count"] == "8"
    # the default /healthz is a 404 on these tenants: unhealthy, with the reason
    alone = [
        "--report",
        str(tmp_path / "alone.json"),
        "--slugs",
        "acme",
        *argv[2:-2],
        "--verify-timeout-seconds",
        "0.5",
    ]
    wrong = run_step(verify_main, alone, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=None)
    assert wrong.code == 1 and wrong.report["verify"]["message"] == (
        "1 of 1 tenant failed verification: acme (unhealthy: healthz answered HTTP 404)"
    )
