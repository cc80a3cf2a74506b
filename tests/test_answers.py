"""What the control plane answers, and what verify makes of an answer, as it reaches the user: an answer
that proves nothing never passes verify, the control plane's own words reach the `::error::` and
`::warning::` lines, a row without a slug is skipped in the enumeration and breaks the contract
anywhere else, and each tenant shows the rollout's own step. Over real HTTP: the sandbox, or scripted
loopback servers (tests/faultservers.py)."""

from __future__ import annotations

import json

import pytest
from faultservers import DRY, REDEPLOY, dry_runs, json_reply, redeploy_ok
from support import SHA, TAG, run_step, scenario

from fleet.vocabulary import Outcome, State
from rollout.cli import main as rollout_main
from verify import verdict
from verify.cli import main as verify_main
from verify.verdict import Seen

TOKEN = "cpt-Answers-Sentinel-7b2e"


@pytest.fixture
def verify(tmp_path, capsys, monkeypatch):
    """Verify on its own, from a control plane's answer saved to a file (--response)."""

    def _run(sb, answer: dict):
        path = tmp_path / "answer.json"
        path.write_text(json.dumps(answer))
        argv = [
            "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA, "--response", str(path),
            "--poll-interval-seconds", "0.2", "--verify-timeout-seconds", "2", "--report", str(tmp_path / "v.json"),
        ]  # fmt: skip
        return run_step(verify_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token)

    return _run


@pytest.fixture
def rollout(fault_rollout):
    return fault_rollout(TOKEN)


def deployed(*tenants: str) -> dict:
    return scenario(*tenants, deployed_tag=TAG)


def outcomes(run) -> dict[str, tuple[str, str | None]]:
    return {t["slug"]: (t["outcome"], t["phase"]) for t in run.report["tenants"]}


def real_calls(cp) -> list:
    return [r for r in cp.received("POST") if r.json().get("dry_run") is not True]


# -- verify never passes on an answer that proves nothing ---------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [{"ok": False, "error": "canary failed", "results": []}, {"ok": True, "results": []}],
    ids=["crashed-deploy", "ok-but-empty"],
)
def test_verify_refuses_an_answer_that_names_no_tenant(start, verify, answer):
    # What the real deploy wrote when its script crashed: it refused to call the deploy verified.
    sb = start(deployed("acme"))
    run = verify(sb, answer)
    assert run.code == 1
    [error] = run.errors()
    assert error.startswith(
        "::error::verify: refusing to mark the deploy verified: the control plane's answer names no tenant"
    )
    assert run.report["verify"]["ok"] is False and run.report["ok"] is False and run.outputs["ok"] == "false"
    assert not any(sb.tenant_hits.values())


def test_an_answer_that_says_ok_false_is_surveyed_and_fails(start, verify):
    sb = start(deployed("acme", "birch", "reno-stars:wedged"))
    rows = [{"slug": s, "verified_on_target": s != "reno-stars"} for s in ("acme", "birch", "reno-stars")]
    run = verify(sb, {"ok": False, "error": "canary failed", "results": rows, "stragglers": ["reno-stars"]})
    assert run.code == 1
    section = run.report["verify"]
    assert section["mode"] == "survey" and section["ok"] is False and run.outputs["ok"] == "false"
    # A survey reads every tenant the answer names: its stragglers too, none skipped as quarantined.
    assert {t["slug"]: t["state"] for t in section["tenants"]} == {
        "acme": "verified", "birch": "verified", "reno-stars": "unhealthy",
    }  # fmt: skip
    assert sb.tenant_hits["reno-stars"]
    # No rollout step said it before: this step's one ::error:: names the failure.
    [error] = run.errors()
    assert "survey after a failed rollout (the control plane's answer says ok: false: 'canary failed')" in error
    assert "2 of 3 tenants on the target build; the step stays failed" in error
    assert run.summary.startswith("## ❌ Fleet survey after a failed rollout")


def test_a_pass_that_verified_no_tenant_says_so_in_a_warning(start, verify):
    sb = start(deployed("acme", "reno-stars:wedged"))
    rows = [{"slug": "acme", "verified_on_target": False}, {"slug": "reno-stars", "verified_on_target": False}]
    run = verify(sb, {"ok": True, "results": rows, "stragglers": ["acme", "reno-stars"]})
    assert run.code == 0 and run.errors() == []
    assert (
        "::warning::nothing was verified: every tenant in scope is quarantined or superseded (acme, reno-stars)"
        in run.warnings()
    )
    assert f"verify: no tenant verified on {SHA[:12]}; 2 quarantined" in run.log
    assert run.summary.startswith("## ⚠️ Fleet verify: passed")
    assert "> nothing was verified" in run.summary


def test_verify_passes_only_when_a_tenant_was_verified_or_every_one_is_held():
    verified, held = Seen(State.VERIFIED), verdict.quarantined()
    newer = Seen(State.SUPERSEDED, "serves the branch's newer head")
    stale = Seen(State.STALE, "serves build 0123")
    decide = verdict.decide
    assert decide({"acme": verified, "reno": held}, SHA, source="--slugs") == verdict.Verdict(
        True, f"the 1 tenant verified on {SHA[:12]}; 1 quarantined"
    )
    nothing = decide({"acme": newer, "reno": held}, SHA, source="--slugs")
    assert nothing.ok and nothing.caution.startswith("nothing was verified")
    assert not decide({}, SHA, source="the rollout's report").ok
    assert not decide({"acme": verified, "birch": stale}, SHA, source="--slugs").ok
    survey = decide({"acme": verified}, SHA, source="x", survey="systemic", outcomes={"acme": Outcome.REDEPLOYED})
    assert not survey.ok and "0 never reached by the rollout" in survey.message


def test_a_saved_answer_with_a_row_without_a_slug_is_refused_before_any_tenant_is_polled(start, verify):
    sb = start(deployed("acme"))
    run = verify(sb, {"ok": True, "results": [{"slug": "acme"}, {"slug": None, "error": "disk full"}]})
    assert run.code == 2
    [error] = run.errors()
    assert "rejected: a row names no tenant (no slug): results[1] (slug null" in error
    assert not any(sb.tenant_hits.values())


# -- what the control plane says reaches the ::error:: and ::warning:: lines ----------------------------


def test_an_unproven_canarys_row_error_and_the_calls_error_reach_the_error_line(rollout, serve, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")  # on a runner, where untrusted text is neutralised
    # An older control plane: no verified_on_target, its reasons in the row's and the answer's `error`.
    answer = {
        "ok": False,
        "error": "canary failed\n::error::forged",
        "results": [{"slug": "acme", "error": "disk full"}],
    }
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: json_reply(answer, 500)})
    run = rollout(cp.url, "--canary-slug", "acme")
    said = "(row error: 'disk full'; the call failed: 'canary failed\\n:\\:error:\\:forged')"
    rollout.fault(run, "canary acme failed: the control plane's row has no verified_on_target", said)
    assert "::warning::tenant acme straggler: the control plane's row has no verified_on_target" in "\n".join(
        run.warnings()
    )
    assert any(said in line for line in run.warnings())
    assert not any(line.startswith("::error::forged") for line in run.log.splitlines())  # neutralised


def test_unproven_stragglers_carry_their_row_errors_to_warnings_and_the_calls_error_to_the_error(rollout, serve):
    rows = [{"slug": "acme", "error": "disk full"}, {"slug": "birch", "error": "image pull failed"}]
    cp = serve(
        {DRY: dry_runs("acme", "birch"), REDEPLOY: json_reply({"ok": False, "error": "2 failed", "results": rows}, 500)}
    )
    run = rollout(cp.url)
    rollout.fault(
        run, "systemic failure: 2 stragglers, max tolerated 0 (acme, birch)", "the control plane said: 2 failed"
    )
    warnings = "\n".join(run.warnings())
    assert "tenant acme straggler: the control plane's row has no verified_on_target" in warnings
    assert "(row error: 'disk full'; the call failed: '2 failed')" in warnings
    assert "(row error: 'image pull failed'; the call failed: '2 failed')" in warnings
    assert "- `birch` (batch 1/1): the control plane's row has no verified\\_on\\_target" in run.summary


# -- rows without a slug ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nameless, given",
    [({}, "missing"), ({"slug": None}, "null"), ({"slug": ""}, "''")],
    ids=["missing", "null", "empty"],
)
def test_enumeration_rows_without_a_slug_are_skipped_with_a_warning(rollout, serve, nameless, given):
    def enumeration(conn):
        if "only_slugs" in conn.request.json():
            return dry_runs()(conn)
        rows = [{"slug": "acme", "phase": "canary"}, nameless | {"phase": "batch-1", "plan": "pro"}, {"slug": "birch"}]
        json_reply({"ok": True, "results": rows})(conn)

    cp = serve({DRY: enumeration, REDEPLOY: redeploy_ok})
    run = rollout(cp.url)
    assert run.code == 0, run.log
    assert run.report["plan"]["scope"] == ["acme", "birch"]
    assert run.warnings() == [
        f"::warning::the fleet's enumeration names no tenant in results[1] (slug {given}; its other fields: "
        '{"phase": "batch-1", "plan": "pro"}): skipped'
    ]


@pytest.mark.parametrize(
    "slugs, cause",
    [(["acme", None, "acme"], "duplicate slug 'acme'"), (["acme", "", "Reno"], "results[2].slug is not a valid slug")],
    ids=["duplicate", "invalid"],
)
def test_beside_a_row_without_a_slug_an_invalid_or_duplicate_slug_is_still_refused(rollout, serve, slugs, cause):
    cp = serve({DRY: json_reply({"ok": True, "results": [{"slug": s} for s in slugs]}), REDEPLOY: redeploy_ok})
    run = rollout(cp.url)
    rollout.fault(run, cause)
    assert run.code == 1 and real_calls(cp) == []  # a bad answer, and no real call


def test_a_fleet_with_a_tenant_without_a_slug_is_rolled_out_and_verified(start, tmp_path, capsys, monkeypatch):
    # The sandbox serves the slugs as given: its dry run answers rows with a null and an empty slug.
    spec = scenario("acme", "birch", "cobalt")
    spec["tenants"][1:1] = [{"slug": None}, {"slug": ""}]
    sb = start(spec)
    report = str(tmp_path / "r.json")
    argv = [
        "--cp-url", sb.url, "--target-tag", TAG, "--soak-seconds", "0", "--canary-slug", "acme", "--report", report,
        "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA, "--verify", "true",
        "--poll-interval-seconds", "0.2",
    ]  # fmt: skip
    run = run_step(rollout_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token)
    assert run.code == 0, run.log
    assert run.report["plan"]["scope"] == ["acme", "birch", "cobalt"]
    assert len(run.warnings()) == 2 and all("names no tenant" in w for w in run.warnings())
    assert run.report["verify"]["counts"]["verified"] == 3


def test_a_real_calls_row_without_a_slug_leaves_the_tenants_without_a_row_unknown(rollout, serve):
    rows = [{"slug": "acme", "phase": "batch-1", "verified_on_target": True}, {"verified_on_target": True}]
    cp = serve({DRY: dry_runs("acme", "birch", "cobalt"), REDEPLOY: json_reply({"ok": True, "results": rows})})
    run = rollout(cp.url, "--max-stragglers", "1")
    rollout.fault(
        run,
        "the control plane's answer to the batch 1 call breaks the contract: a row names no tenant (no slug): "
        "results[1] (slug missing",
    )
    assert run.code == 1 and len(real_calls(cp)) == 1  # broken off there: no batch 2
    assert outcomes(run) == {
        "acme": ("redeployed", "batch 1/2"), "birch": ("unknown", "batch 1/2"), "cobalt": ("not-attempted", None),
    }  # fmt: skip


def test_a_scoped_dry_run_that_answers_a_row_without_a_slug_cannot_scope(rollout, serve):
    def probe(conn):
        body = conn.request.json()
        rows = [{"slug": s} for s in body.get("only_slugs") or ("acme", "birch")]
        json_reply({"ok": True, "results": rows + ([{"slug": None}] if "only_slugs" in body else [])})(conn)

    cp = serve({DRY: probe, REDEPLOY: redeploy_ok})
    run = rollout(cp.url)
    rollout.fault(run, "cannot scope a call", "answered a row without a slug: results[2] (slug null", "use mode: fleet")
    assert real_calls(cp) == [] and run.report["rollout"]["verdict"] == "cannot-scope"
