"""Running like the production deploy, against the sandbox and its forge over real HTTP: superseded runs,
the kill switch (the environment's and a repository variable re-read before every real call), recovery
that verifies, and the fleet survey after a rollout that touched the fleet and failed."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from support import SHA, TAG, bodies, run_step, scenario

from rollout.cli import main
from sandbox import Sandbox, load_scenario
from verify.cli import main as verify_main

EIGHT = ("acme", "birch", "cobalt", "dune", "reno-stars", "ember", "fjord", "harbor")
NEWER = "cd" * 20  # a newer commit on the deployed branch
SWITCH = "PROD_AUTO_DEPLOY_DISABLED"


def with_forge(preset_or_spec, **forge) -> dict:
    spec = load_scenario(preset_or_spec) if isinstance(preset_or_spec, str) else preset_or_spec
    spec["forge"] = {"repository": "acme/platform", "branch": "main", "head": SHA, **forge}
    return spec


@pytest.fixture
def as_runner(monkeypatch):
    """The run's context as a runner gives it: repository, branch, and the forge's token."""

    def _set(sb: Sandbox) -> None:
        monkeypatch.setenv("GITHUB_REPOSITORY", "acme/platform")
        monkeypatch.setenv("GITHUB_REF_NAME", "main")
        monkeypatch.setenv("GITHUB_REF_TYPE", "branch")
        monkeypatch.setenv("API_TOKEN", sb.forge_token)

    for name in ("GITHUB_REPOSITORY", "GITHUB_REF_NAME", "GITHUB_REF_TYPE", "GITHUB_REF", "API_TOKEN", SWITCH):
        monkeypatch.delenv(name, raising=False)
    return _set


@pytest.fixture
def rollout(tmp_path, capsys, monkeypatch, as_runner):
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)

    def _run(sb: Sandbox, *flags: str, gitea: bool = False):
        as_runner(sb)
        argv = [
            "--cp-url", sb.url, "--target-tag", TAG, "--expected-sha", SHA, "--soak-seconds", "0",
            "--api-url", sb.gitea_api_url if gitea else sb.github_api_url, "--report", str(tmp_path / "report.json"),
            *flags,
        ]  # fmt: skip
        return run_step(main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token)

    return _run


@pytest.fixture
def verify(tmp_path, capsys, monkeypatch, as_runner):
    def _run(sb: Sandbox, *flags: str, gitea: bool = False):
        as_runner(sb)
        argv = [
            "--tenant-url-template", sb.tenant_url_template, "--expected-sha", SHA, "--poll-interval-seconds", "0.2",
            "--verify-timeout-seconds", "2", "--api-url", sb.gitea_api_url if gitea else sb.github_api_url,
            "--report", str(tmp_path / "verify.json"), *flags,
        ]  # fmt: skip
        return run_step(verify_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=None)

    return _run


def serving(sb: Sandbox, slug: str) -> str:
    return sb.state()["tenants"][slug]["serving_sha"]


def states(run) -> dict[str, str]:
    return {t["slug"]: t["state"] for t in run.report["verify"]["tenants"]}


# -- superseded runs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gitea", [False, True], ids=["github", "gitea"])
def test_a_run_whose_branch_moved_on_stands_down_before_the_first_real_call(start, rollout, gitea):
    sb = start(with_forge("clean", head=NEWER))
    run = rollout(sb, "--canary-slug", "acme", gitea=gitea)
    assert run.code == 0 and run.outputs["ok"] == "true"
    assert run.outputs["superseded"] == NEWER
    assert bodies(sb) == []  # zero real redeploy calls
    assert run.report["rollout"]["verdict"] == "superseded" and run.outputs["verify"] == "none"
    assert f"now points at {NEWER[:12]}" in run.summary and NEWER[:12] in run.log
    assert run.errors() == [] and all(serving(sb, s) != SHA for s in EIGHT)
    assert sb.forge_calls[0]["path"].endswith("/repos/acme/platform/branches/main")
    assert all(c["authorized"] for c in sb.forge_calls)


def test_a_run_on_the_branch_head_deploys_and_says_nothing_is_superseded(start, rollout):
    sb = start(with_forge("clean", head=SHA.upper()[:12]))  # compared by prefix, case-insensitively
    run = rollout(sb)
    assert run.code == 0 and run.outputs["superseded"] == "" and len(bodies(sb)) == 3


@pytest.mark.parametrize("under_runner", [True, False], ids=["runner", "command-line"])
def test_an_unreadable_head_is_not_superseded_and_says_why(start, rollout, monkeypatch, under_runner):
    sb = start(with_forge("clean", head=None))  # the branch is unknown: 404
    if under_runner:
        monkeypatch.setenv("GITHUB_ACTIONS", "true")
    else:
        monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    run = rollout(sb)
    assert run.code == 0 and len(bodies(sb)) == 3
    said = "superseded-check: the branch head could not be read (reading the branch head answered HTTP 404)"
    lines = [line for line in run.log.splitlines() if said in line]
    assert len(lines) == 1 and lines[0].startswith("::notice::" if under_runner else "note: ")


def test_a_tenant_ahead_on_the_branchs_new_head_passes_as_superseded(start, verify):
    spec = with_forge(scenario("acme", "birch", deployed_tag=TAG), head=NEWER)
    sb = start(spec)
    # the run for the newer commit has already rolled birch forward
    answer = requests.post(
        sb.url + "/cp/admin/tenants/redeploy-fleet",
        json={"target_tag": "sha-" + NEWER, "only_slugs": ["birch"], "confirm": True, "batch_size": 1},
        headers={"Authorization": f"Bearer {sb.token}"},
        timeout=10,
    )
    assert answer.status_code == 200 and serving(sb, "birch") == NEWER
    run = verify(sb, "--slugs", "acme,birch", gitea=True)
    assert run.code == 0, run.report["verify"]["message"]
    assert states(run) == {"acme": "verified", "birch": "superseded"}
    assert run.report["verify"]["counts"]["superseded"] == 1
    assert "| Superseded (on the branch's newer head) | 1 |" in run.summary


def test_a_tenant_on_another_sha_while_the_head_is_unchanged_is_stale(start, verify):
    sb = start(with_forge(scenario("acme", "birch:stale", deployed_tag=TAG), head=SHA))
    run = verify(sb, "--slugs", "acme,birch")
    assert run.code == 1 and states(run) == {"acme": "verified", "birch": "stale"}


def test_verify_with_an_unreadable_head_is_strict(start, verify):
    sb = start(with_forge(scenario("acme", "birch:stale", deployed_tag=TAG), head=None))
    run = verify(sb, "--slugs", "acme,birch")
    assert run.code == 1 and states(run)["birch"] == "stale"
    assert any(line.startswith("note: superseded-check") for line in run.log.splitlines())  # a command line


# -- the kill switch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gitea", [False, True], ids=["github", "gitea"])
def test_the_switch_flipped_after_two_calls_halts_before_the_third(start, rollout, gitea):
    spec = with_forge("clean", after_calls=[{"calls": 2, "variables": {SWITCH: "true"}}])
    sb = start(spec)
    run = rollout(sb, "--canary-slug", "acme", "--kill-switch-variable", SWITCH, gitea=gitea)
    assert run.code == 1 and run.report["rollout"]["verdict"] == "halted"
    assert len(bodies(sb)) == 2  # the canary and batch 1; batch 2 never went out
    assert len(run.errors()) == 1
    assert f"halted before the batch 2 call: the kill switch variable {SWITCH} is 'true'" in run.errors()[0]
    untouched = [t["slug"] for t in run.report["tenants"] if t["outcome"] == "not-attempted"]
    assert untouched == ["reno-stars", "ember", "fjord", "harbor"]
    assert all(serving(sb, s) != SHA for s in untouched)
    # read before every real call: 3 reads for 3 real calls asked for
    reads = [c for c in sb.forge_calls if "/actions/variables/" in c["path"]]
    assert len(reads) == 3


def test_a_variable_that_does_not_exist_is_off(start, rollout):
    sb = start(with_forge("clean"))
    run = rollout(sb, "--kill-switch-variable", SWITCH)
    assert run.code == 0 and len(bodies(sb)) == 3


@pytest.mark.parametrize("status", [403, 500])
def test_a_variable_that_cannot_be_read_fails_closed_with_zero_real_calls(start, rollout, status):
    sb = start(with_forge("clean", variable_status=status))
    run = rollout(sb, "--kill-switch-variable", SWITCH)
    assert run.code == 1 and bodies(sb) == [] and run.report["rollout"]["verdict"] == "halted"
    error = run.errors()[0]
    assert f"could not read the kill switch variable {SWITCH}" in error and f"HTTP {status}" in error
    assert "permission to read Actions variables" in error


@pytest.mark.parametrize("value", ["1", "true", "YES", "on", "disable", "Disabled"])
def test_the_environments_switch_deploys_nothing_at_all(start, rollout, monkeypatch, value):
    sb = start(with_forge("clean"))
    monkeypatch.setenv(SWITCH, value)
    run = rollout(sb)
    assert run.code == 1 and sb.cp_calls == []  # not even the enumeration
    assert run.report["rollout"]["verdict"] == "halted"
    assert len(run.errors()) == 1 and f"{SWITCH} is {value!r}" in run.errors()[0]


@pytest.mark.parametrize("value", ["false", "FALSE", " off ", "0", "No", ""])
def test_the_environments_switch_set_false_changes_nothing(start, rollout, monkeypatch, value):
    sb = start(with_forge("clean"))
    monkeypatch.setenv(SWITCH, value)
    assert rollout(sb).code == 0 and len(bodies(sb)) == 3


@pytest.mark.parametrize("value", ["stop", "y", "paused"])
def test_a_switch_value_that_is_neither_on_nor_off_halts_naming_it(start, rollout, monkeypatch, value):
    sb = start(with_forge("clean"))
    monkeypatch.setenv(SWITCH, value)
    run = rollout(sb)
    assert run.code == 1 and sb.cp_calls == [] and run.report["rollout"]["verdict"] == "halted"
    assert len(run.errors()) == 1 and f"{SWITCH} is {value!r}, which is neither on nor off" in run.errors()[0]


@pytest.mark.parametrize("value, halts", [("stop", True), (" Off ", False), ("DISABLED", True)])
def test_the_switch_variable_reads_its_value_like_the_environments(start, rollout, value, halts):
    sb = start(with_forge("clean", variables={SWITCH: value}))
    run = rollout(sb, "--kill-switch-variable", SWITCH)
    if halts:
        assert run.code == 1 and bodies(sb) == [] and run.report["rollout"]["verdict"] == "halted"
        assert f"the kill switch variable {SWITCH} is {value!r}" in run.errors()[0]
    else:
        assert run.code == 0 and len(bodies(sb)) == 3


def test_the_forge_token_stays_out_of_every_artefact(start, rollout, tmp_path):
    sb = start(with_forge("clean", variable_status=500))
    run = rollout(sb, "--kill-switch-variable", SWITCH)
    texts = [run.log, run.summary, (tmp_path / "report.json").read_text(), *run.outputs.values()]
    assert all(sb.forge_token not in text for text in texts)


# -- recovery that verifies ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """The action's package installed with pip, as a user would, outside the checkout."""
    target = tmp_path_factory.mktemp("installed")
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(root)],
        check=True, cwd=target, capture_output=True,
    )  # fmt: skip
    return target


def test_the_recovery_command_redeploys_and_verifies_the_named_tenant_after_it_is_healed(
    start, rollout, installed, tmp_path
):
    sb = start("incident")
    run = rollout(sb, "--canary-slug", "acme", "--max-stragglers", "1", "--tenant-url-template", sb.tenant_url_template)
    assert run.code == 0 and json.loads(run.outputs["stragglers"]) == ["reno-stars"]
    line = next(line for line in run.summary.splitlines() if line.startswith("CP_TOKEN=..."))
    assert run.report["recovery"] == line  # the report holds the same command
    command = shlex.split(line.removeprefix("CP_TOKEN=... "))
    assert command[:3] == ["python", "-m", "rollout"] and "--verify" in command and "--expected-sha" in command
    sb.set_behaviour("reno-stars", "healthy")  # its data volume was recreated
    before = len(bodies(sb))
    where = tmp_path / "elsewhere"
    where.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "PYTHON"))}
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env |= {"CP_TOKEN": sb.token, "PYTHONPATH": os.pathsep.join([str(installed), *deps])}
    done = subprocess.run(
        [sys.executable, *command[1:], "--report", "recovery.json"], cwd=where, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert [b["only_slugs"] for b in bodies(sb)[before:]] == [["reno-stars"]]
    assert bodies(sb)[-1]["max_stragglers"] == 0
    assert serving(sb, "reno-stars") == SHA
    report = json.loads((where / "recovery.json").read_text())
    assert report["verify"]["ok"] is True
    assert [(t["slug"], t["state"]) for t in report["verify"]["tenants"]] == [("reno-stars", "verified")]
    assert "Fleet verify: passed" in done.stdout


def test_a_recovery_of_a_tenant_still_wedged_fails_and_says_so(start, rollout):
    sb = start("incident")
    run = rollout(
        sb, "--slugs", "reno-stars", "--max-stragglers", "0", "--tenant-url-template", sb.tenant_url_template,
        "--verify", "true", "--verify-timeout-seconds", "1", "--poll-interval-seconds", "0.2",
    )  # fmt: skip
    assert run.code == 1 and run.report["rollout"]["verdict"] == "systemic"
    assert run.report["verify"]["mode"] == "survey"  # it touched the fleet, then failed: surveyed


# -- the survey after a failed rollout ------------------------------------------------------------------


def test_a_systemic_halt_is_surveyed_every_tenants_build_reported_and_the_step_still_fails(start, rollout):
    sb = start("systemic")
    run = rollout(
        sb, "--canary-slug", "acme", "--max-stragglers", "1", "--tenant-url-template", sb.tenant_url_template,
        "--verify", "true", "--verify-timeout-seconds", "3", "--poll-interval-seconds", "0.2",
    )  # fmt: skip
    assert run.code == 1 and run.outputs["verify"] == "survey"
    section = run.report["verify"]
    assert section["mode"] == "survey" and section["ok"] is False and run.report["ok"] is False
    tenants = {t["slug"]: t for t in section["tenants"]}
    assert set(tenants) == set(EIGHT)  # every tenant in scope, the stragglers included
    assert all(t["build"] for t in tenants.values())  # each answered with its build
    assert tenants["harbor"]["rollout_outcome"] == "not-attempted" and tenants["harbor"]["build"] != SHA
    assert tenants["harbor"]["next_step"].startswith("roll forward")
    assert tenants["cobalt"]["next_step"].startswith("recover:")
    assert tenants["acme"]["state"] == "verified" and tenants["acme"]["next_step"] is None
    assert "Fleet survey after a failed rollout" in run.summary and "### Who runs which build" in run.summary
    assert "### Next steps" in run.summary
    # one failure, one ::error:: (the rollout's); the survey's verdict is a warning
    assert len(run.errors()) == 1 and "systemic failure" in run.errors()[0]
    assert any("survey after a failed rollout (systemic)" in line for line in run.warnings())


def test_a_rollout_that_failed_before_touching_the_fleet_is_not_surveyed(start, rollout):
    sb = start("ignores-scope")
    run = rollout(sb, "--tenant-url-template", sb.tenant_url_template, "--verify", "true")
    assert run.code == 1 and run.outputs["verify"] == "none" and "verify" not in run.report


def test_a_head_too_short_to_name_a_commit_is_unreadable_not_a_newer_run(start, rollout):
    sb = start(with_forge("clean", head="abc"))
    run = rollout(sb)
    assert run.code == 0 and run.outputs["superseded"] == "" and len(bodies(sb)) == 3
    assert any("no commit sha of 7 to 64 hex digits" in line for line in run.log.splitlines())
