"""The composite action end to end: workflows that run `uses: ./` under nektos/act (host mode, no
Docker) against a sandbox control plane and fleet on loopback.

Each workflow runs the action with continue-on-error, then a step that records the action's outcome,
its outputs and its report into RESULT_DIR, and echoes the token, which must come out masked. The
token reaches the workflow as a plain environment variable, not as an act secret, so only the
action's own masking keeps it out of the log.

The shell of action.yml's first two steps is also run directly with bash, for what act cannot
easily stage (no usable Python on PATH, a pip failure, a multi-line token).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import parse_outputs

from sandbox import Sandbox, load_scenario
from sandbox.act import PROJECT, Act, ActRun, job

ACTION = yaml.safe_load((PROJECT / "action.yml").read_text(encoding="utf-8"))
BASH = shutil.which("bash") or "/bin/bash"

RECORD = """\
printf '%s' "$OUTCOME" > "$RESULT_DIR/outcome"
printf '%s' "$OUTPUTS" > "$RESULT_DIR/outputs.json"
if [ -n "$REPORT" ] && [ -f "$REPORT" ]; then cp "$REPORT" "$RESULT_DIR/report.json"; fi
echo "token seen by a later step: $TOKEN"
"""

FLEET = ["acme", "birch", "cobalt", "dune", "reno-stars", "ember", "fjord", "harbor"]
BATCHES = [["birch", "cobalt", "dune"], ["reno-stars", "ember", "fjord"], ["harbor"]]


# -- act runs (the `act` fixture is in conftest.py) ------------------------------------------------


class Run:
    """One workflow run: act's log, the action's outcome and outputs, and the sandbox's calls."""

    def __init__(self, run: ActRun, sandbox: Sandbox, token: str) -> None:
        self.log = run.log
        self.token = token
        self.cp_calls = sandbox.cp_calls
        self.outcome = run.read("outcome")
        outputs = run.read("outputs.json")
        report = run.read("report.json")
        assert self.outcome is not None and outputs is not None, f"the record step did not run:\n{self.log}"
        self.outputs: dict[str, str] = json.loads(outputs)
        self.report: dict | None = json.loads(report) if report else None

    @property
    def summary(self) -> str:
        """The action step's summary as act prints it: `Summary - ` then raw lines up to the next log line."""
        lines = self.log.splitlines()
        start = max(i for i, line in enumerate(lines) if "Summary - " in line)
        body = [lines[start].split("Summary - ", 1)[1]]
        for line in lines[start + 1 :]:
            if line.startswith("["):
                break
            body.append(line)
        return "\n".join(body)

    @property
    def errors(self) -> list[str]:
        return [line for line in self.log.splitlines() if "::error::" in line]

    @property
    def redeploys(self) -> list[dict]:
        """The real redeploy calls' bodies (not the dry runs), in order."""
        return [c["body"] for c in self.cp_calls if c["method"] == "POST" and not c["body"]["dry_run"]]

    @property
    def dry_runs(self) -> list[dict]:
        return [c["body"] for c in self.cp_calls if c["method"] == "POST" and c["body"]["dry_run"]]

    def assert_token_kept_secret(self) -> None:
        assert self.token not in self.log
        assert "token seen by a later step: ***" in self.log
        assert all(c["authorized"] for c in self.cp_calls)

    def assert_outputs(self, **expected: str) -> None:
        assert set(self.outputs) == {
            "ok", "superseded", "stragglers", "quarantined-count", "verified-count", "failed-count", "report-path",
            "chronic",
        }  # fmt: skip
        assert self.outputs["chronic"] == expected.pop("chronic", "[]"), self.log
        skip = ("report-path", "superseded", "chronic")
        got = {k.replace("-", "_"): v for k, v in self.outputs.items() if k not in skip}
        assert self.outputs["superseded"] == "", self.log
        assert got == expected, self.log
        assert self.outputs["report-path"].endswith(".json")


def act_scenario(act: tuple[Act, str], preset: str, forge: dict | None = None) -> tuple[dict, str]:
    """The preset with a fresh control-plane token; the sandbox plays the forge too: act names the
    repository nektos/act and the branch main."""
    scenario = load_scenario(preset)
    token = "cp-" + secrets.token_hex(16)
    scenario["token"] = token
    scenario["forge"] = {
        **scenario["forge"],
        "repository": "nektos/act",
        "branch": "main",
        "head": act[1],
        **(forge or {}),
    }
    return scenario, token


def run_action(act: tuple[Act, str], tmp_path: Path, preset: str, forge: dict | None = None, **inputs: str) -> Run:
    scenario, token = act_scenario(act, preset, forge)
    with Sandbox(scenario) as sandbox:
        return run_against(act, tmp_path, sandbox, token, **inputs)


def run_against(act: tuple[Act, str], tmp_path: Path, sandbox: Sandbox, token: str, **inputs: str) -> Run:
    """One workflow run of the action against a running sandbox (a sandbox outlives several runs)."""
    runner, head = act
    with_inputs = {
        "cp-url": sandbox.url,
        "cp-token": "${{ env.FLEET_TOKEN }}",
        "api-url": sandbox.github_api_url,
        "api-token": sandbox.forge_token,
        "target-tag": f"sha-{head}",  # tenants then serve `head`, the default expected-sha
        "tenant-url-template": sandbox.tenant_url_template,
        "canary-slug": "acme",
        "soak-seconds": "0",
        "max-stragglers": "1",
        "poll-interval-seconds": "0.2",
        "verify-timeout-seconds": "20",
        **inputs,
    }
    fleet = {"id": "fleet", "uses": "./", "continue-on-error": True, "with": with_inputs}
    record = {
        "name": "Record",
        "if": "always()",
        "env": {
            "OUTCOME": "${{ steps.fleet.outcome }}",
            "OUTPUTS": "${{ toJSON(steps.fleet.outputs) }}",
            "REPORT": "${{ steps.fleet.outputs.report-path }}",
            "TOKEN": "${{ env.FLEET_TOKEN }}",
        },
        "run": RECORD,
    }
    workflow = job(fleet, record)
    done = runner.run(workflow, tmp_path, env={"FLEET_TOKEN": token})
    assert done.returncode == 0, done.log
    return Run(done, sandbox, token)


@pytest.mark.act
def test_clean_rollout_ships_every_tenant_and_verifies_them(act, tmp_path):
    run = run_action(act, tmp_path, "clean", **{"soak-seconds": "1"})

    assert run.outcome == "success", run.errors
    run.assert_outputs(ok="true", stragglers="[]", quarantined_count="0", verified_count="8", failed_count="0")
    # The fleet is enumerated by a dry run, the canary's scope probed by another; then the canary goes
    # alone and strict, and each batch with the budget left. One endpoint throughout.
    assert {(c["method"], c["path"]) for c in run.cp_calls} == {("POST", "/cp/admin/tenants/redeploy-fleet")}
    assert [c["body"]["dry_run"] for c in run.cp_calls] == [True, True, False, False, False, False]
    canary, *batches = run.redeploys
    assert canary["only_slugs"] == ["acme"] and canary["canary_slug"] == "acme" and canary["confirm"] is True
    # The action soaks the canary itself, so the control plane is told not to.
    assert canary["max_stragglers"] == 0 and canary["soak_seconds"] == 0
    assert "soaking canary acme for 1 s" in run.log
    assert [b["only_slugs"] for b in batches] == BATCHES
    assert sorted(slug for body in run.redeploys for slug in body["only_slugs"]) == sorted(FLEET)  # each once
    assert all("canary_slug" not in b and b["max_stragglers"] == 1 for b in batches)
    assert {b["target_tag"] for b in run.redeploys} == {f"sha-{act[1]}"}
    assert not any(b["dry_run"] for b in run.redeploys)
    assert run.report is not None and run.report["ok"] is True and run.report["verify"]["ok"] is True
    # One summary holds both steps' parts; each is printed to the log too, for runners that show none.
    assert "Fleet rollout" in run.summary and "Fleet verify: passed" in run.summary
    assert "| ## ✅ Fleet verify: passed" in run.log
    assert "::error::" not in run.log and "::warning::" not in run.log
    run.assert_token_kept_secret()


@pytest.mark.act
def test_one_wedged_tenant_is_quarantined_within_the_budget(act, tmp_path):
    run = run_action(act, tmp_path, "incident")

    assert run.outcome == "success", run.errors
    run.assert_outputs(
        ok="true", stragglers='["reno-stars"]', quarantined_count="1", verified_count="7", failed_count="0"
    )
    assert "::warning::tenant reno-stars quarantined" in run.log
    # reno-stars spent the budget: the batch after it may lose nobody.
    assert [b["max_stragglers"] for b in run.redeploys] == [0, 1, 1, 0]
    assert [b["only_slugs"] for b in run.redeploys[1:]] == BATCHES
    assert run.report is not None and run.report["stragglers"] == ["reno-stars"]
    assert "reno-stars" in run.summary and "Fleet verify: passed" in run.summary
    run.assert_token_kept_secret()


@pytest.mark.act
def test_systemic_failure_halts_the_rollout_and_fails_the_step(act, tmp_path):
    run = run_action(act, tmp_path, "systemic")

    assert run.outcome == "failure"
    assert run.outputs["ok"] == "false"
    # it touched the fleet, then halted: verify surveyed every tenant (4 on the new build, 4 not)
    assert run.outputs["verified-count"] == "4" and run.outputs["failed-count"] == "4"
    learned = json.loads(run.outputs["stragglers"])
    assert "cobalt" in learned and set(learned) <= {"cobalt", "reno-stars", "fjord"}
    # The batch that broke the budget was the last call: harbor was never touched.
    assert [b["only_slugs"] for b in run.redeploys[1:]] == BATCHES[:2]
    assert not any("harbor" in b["only_slugs"] for b in run.redeploys)
    assert "::error::" in run.log
    assert "Fleet rollout" in run.log and "Fleet survey after a failed rollout" in run.summary
    assert run.report is not None and run.report["verify"]["mode"] == "survey"
    assert run.report is not None and run.report["ok"] is False
    run.assert_token_kept_secret()


@pytest.mark.act
def test_stale_tenant_fails_verify_after_a_clean_rollout(act, tmp_path):
    run = run_action(act, tmp_path, "stale", **{"verify-timeout-seconds": "2"})

    assert run.outcome == "failure"
    run.assert_outputs(ok="false", stragglers="[]", quarantined_count="0", verified_count="7", failed_count="1")
    error = next(line for line in run.log.splitlines() if "::error::" in line and "verify" in line)
    assert "cobalt" in error and "stale" in error
    assert "Fleet verify: failed" in run.summary and "`cobalt` | stale" in run.summary
    assert run.report is not None and run.report["rollout"]["ok"] is True and run.report["verify"]["ok"] is False
    run.assert_token_kept_secret()


@pytest.mark.act
def test_dry_run_plans_only_and_skips_verify(act, tmp_path):
    run = run_action(act, tmp_path, "incident", **{"dry-run": "Yes"})

    assert run.outcome == "success", run.errors
    assert run.outputs["ok"] == "true"
    assert run.outputs["verified-count"] == "" and run.outputs["failed-count"] == ""
    assert run.redeploys == [] and len(run.dry_runs) == 5  # the enumeration, the canary and three batches
    assert "Fleet verify" not in run.log
    run.assert_token_kept_secret()


@pytest.mark.act
def test_selftest_workflow_passes_under_act(act, tmp_path):
    """The repository's selftest workflow, less actions/setup-python, which act would have to fetch."""
    workflow = yaml.safe_load((PROJECT / ".github/workflows/selftest.yml").read_text(encoding="utf-8"))
    workflow["on"] = workflow.pop(True)  # YAML 1.1 reads the key `on` as true
    job = workflow["jobs"]["selftest"]
    job["steps"] = [s for s in job["steps"] if not s.get("uses", "").startswith("actions/setup-python@")]

    runner, _ = act
    done = runner.run(workflow, tmp_path)

    assert done.returncode == 0, [line for line in done.log.splitlines() if "::error::" in line or "Failure" in line]
    for step in ("Check the clean rollout", "Check the quarantined straggler", "Check the systemic failure"):
        assert f"Success - Main {step}" in done.log
    assert "Failure - Main Systemic failure (expected to fail)" in done.log


@pytest.mark.act
def test_a_run_whose_branch_moved_on_stands_down_without_a_real_call(act, tmp_path):
    newer = "cd" * 20
    run = run_action(act, tmp_path, "clean", forge={"head": newer})

    assert run.outcome == "success", run.errors
    assert run.outputs["ok"] == "true" and run.outputs["superseded"] == newer
    assert run.redeploys == []  # nothing deployed: the newer run deploys
    assert run.outputs["verified-count"] == ""  # and nothing to verify
    assert f"now points at {newer[:12]}" in run.log
    run.assert_token_kept_secret()


@pytest.mark.act
def test_the_kill_switch_flipped_mid_rollout_halts_before_the_next_call(act, tmp_path):
    flip = [{"calls": 2, "variables": {"PROD_AUTO_DEPLOY_DISABLED": "true"}}]
    run = run_action(
        act, tmp_path, "clean", forge={"after_calls": flip}, **{"kill-switch-variable": "PROD_AUTO_DEPLOY_DISABLED"}
    )

    assert run.outcome == "failure"
    assert run.outputs["ok"] == "false"
    assert len(run.redeploys) == 2  # the canary and batch 1, then the switch
    assert any(
        "halted before the batch 2 call: the kill switch variable PROD_AUTO_DEPLOY_DISABLED" in e for e in run.errors
    )
    assert run.report is not None and run.report["rollout"]["verdict"] == "halted"
    # it touched the fleet, then stopped: verify surveyed who runs which build, and the step stays failed
    assert run.report["verify"]["mode"] == "survey" and "Fleet survey after a failed rollout" in run.log
    run.assert_token_kept_secret()


# -- the quarantine ledger ----------------------------------------------------------------------------

LEDGER = {"quarantine-issues": "true"}
TITLE = "fleet-rollout: tenant reno-stars is quarantined"


def api_of(sandbox: Sandbox, dialect: str) -> str:
    return sandbox.github_api_url if dialect == "github" else sandbox.gitea_api_url


def assert_no_token_in_the_ledger(run: Run, sandbox: Sandbox) -> None:
    run.assert_token_kept_secret()
    for text in (run.log, json.dumps(run.report), json.dumps(sandbox.issues), json.dumps(sandbox.forge_calls)):
        assert run.token not in text and sandbox.forge_token not in text


@pytest.mark.act
@pytest.mark.parametrize("dialect", ["github", "gitea"])
def test_the_ledger_opens_comments_escalates_and_closes_across_runs(act, tmp_path, dialect):
    scenario, token = act_scenario(act, "incident", {"token": "forge-" + secrets.token_hex(12)})
    with Sandbox(scenario) as sb:
        inputs = {**LEDGER, "api-url": api_of(sb, dialect), "max-quarantine-streak": "2"}

        first = run_against(act, tmp_path / "first", sb, token, **inputs)

        assert first.outcome == "success", first.errors
        first.assert_outputs(
            ok="true", stragglers='["reno-stars"]', quarantined_count="1", verified_count="7", failed_count="0"
        )
        (issue,) = sb.issues
        assert issue["title"] == TITLE and issue["labels"] == ["fleet-quarantine"] and issue["state"] == "open"
        assert "quarantined by 1 rollout in a row" in issue["body"] and "actions/runs/" in issue["body"]
        assert "CP_TOKEN=... python -m rollout" in issue["body"] and "--slugs reno-stars" in issue["body"]
        creates = [c for c in sb.forge_calls if c["method"] == "POST" and c["path"].split("?")[0].endswith("/issues")]
        labels = creates[0]["body"]["labels"]
        assert labels == (["fleet-quarantine"] if dialect == "github" else [sb.labels[0]["id"]])  # Gitea: ids
        assert "Quarantine ledger" in first.log and first.report["ledger"]["streaks"] == {"reno-stars": 1}
        assert_no_token_in_the_ledger(first, sb)

        second = run_against(act, tmp_path / "second", sb, token, **inputs)

        # The same issue, a comment, streak 2: at the limit, the step fails after shipping to the rest.
        assert second.outcome == "failure"
        second.assert_outputs(
            ok="false", stragglers='["reno-stars"]', quarantined_count="1", verified_count="7", failed_count="0",
            chronic='["reno-stars"]',
        )  # fmt: skip
        (issue,) = sb.issues
        assert [c["body"].startswith("Quarantined again by") for c in issue["comments"]] == [True]
        assert "quarantined by 2 rollouts in a row" in issue["comments"][0]["body"]
        assert "quarantined by 2 rollouts in a row" in issue["body"] and "streak=2 -->" in issue["body"]
        second_calls = [b["only_slugs"] for b in second.redeploys[len(first.redeploys) :]]
        assert sorted(s for slugs in second_calls for s in slugs) == sorted(FLEET)  # every tenant again
        (error,) = [e for e in second.errors if "max-quarantine-streak" in e]
        assert "tenant reno-stars has been quarantined by 2 rollouts in a row" in error
        assert issue["html_url"] in error
        assert second.report is not None and second.report["rollout"]["verdict"] == "shipped-with-chronic-straggler"
        assert second.report["verify"]["ok"] is True  # the fleet it shipped was verified
        assert_no_token_in_the_ledger(second, sb)

        sb.set_behaviour("reno-stars", "healthy")  # its data volume was recreated
        third = run_against(act, tmp_path / "third", sb, token, **inputs)

        assert third.outcome == "success", third.errors
        third.assert_outputs(ok="true", stragglers="[]", quarantined_count="0", verified_count="8", failed_count="0")
        (issue,) = sb.issues
        assert issue["state"] == "closed" and act[1] in issue["comments"][-1]["body"]
        assert third.report is not None and [e["action"] for e in third.report["ledger"]["issues"]] == ["closed"]
        assert_no_token_in_the_ledger(third, sb)


@pytest.mark.act
@pytest.mark.parametrize(("dialect", "status"), [("github", 403), ("gitea", 500)])
def test_a_failing_issue_tracker_is_one_warning_and_the_verdict_stands(act, tmp_path, dialect, status):
    scenario, token = act_scenario(act, "incident", {"issues_status": status})
    with Sandbox(scenario) as sb:
        run = run_against(act, tmp_path, sb, token, **LEDGER, **{"api-url": api_of(sb, dialect)},
                          **{"max-quarantine-streak": "1"})  # fmt: skip

        assert run.outcome == "success", run.errors
        run.assert_outputs(
            ok="true", stragglers='["reno-stars"]', quarantined_count="1", verified_count="7", failed_count="0"
        )
        # one warning (act echoes each workflow command it reads, so a line may come twice)
        (warning,) = {
            line.split("::warning::", 1)[1] for line in run.log.splitlines() if "::warning::the quarantine" in line
        }
        assert f"HTTP {status}" in warning and warning.endswith("the max-quarantine-streak check was skipped")
        assert sb.issues == []
        assert_no_token_in_the_ledger(run, sb)


@pytest.mark.act
@pytest.mark.parametrize("dialect", ["github", "gitea"])
def test_the_ledger_finds_its_issue_past_the_first_page(act, tmp_path, dialect):
    # The tenant's issue is the oldest of 130 with the label, among 120 labelled pull requests.
    mine = {"title": TITLE, "labels": ["fleet-quarantine"], "body": "<!-- fleet-rollout:streak=3 -->"}
    others = [
        {"title": f"fleet-rollout: tenant t{n} is quarantined", "labels": ["fleet-quarantine"]} for n in range(129)
    ]
    scenario, token = act_scenario(act, "incident", {"issues": [mine, *others], "pull_requests": 120})
    with Sandbox(scenario) as sb:
        run = run_against(act, tmp_path, sb, token, **LEDGER, **{"api-url": api_of(sb, dialect)})

        assert run.outcome == "success", run.errors
        assert len(sb.issues) == 130 + 120  # no second issue
        assert sb.issues[0]["comments"] and "streak=4 -->" in sb.issues[0]["body"]
        lists = [c for c in sb.forge_calls if c["method"] == "GET" and c["path"].split("?")[0].endswith("/issues")]
        assert len(lists) >= 2 and all(c["status"] == 200 for c in lists)
        assert run.report is not None and run.report["ledger"]["streaks"] == {"reno-stars": 4}


# -- action.yml's shell, run directly -------------------------------------------------------------


def step_script(name: str) -> str:
    return next(s["run"] for s in ACTION["runs"]["steps"] if s["name"] == name)


def test_the_tokens_are_masked_line_by_line_before_anything_else_under_a_runner_only():
    """The action has no masking step of its own: each step's Python registers the tokens first thing."""
    token = "first-line\r\nsecond%0Aline\n   \nthird"
    env = {"CP_TOKEN": token, "API_TOKEN": "api-one\napi-two", "PATH": os.environ["PATH"], "PYTHONPATH": str(PROJECT)}
    step = [sys.executable, "-m", "rollout", "--cp-url", "http://127.0.0.1:9", "--target-tag", "x", "--batch-size", "0"]

    masked = subprocess.run(
        step, env={**env, "GITHUB_ACTIONS": "true"}, capture_output=True, text=True, cwd=PROJECT, timeout=60
    )
    lines = masked.stdout.splitlines()
    masks = [line for line in lines if line.startswith("::add-mask::")]
    assert lines[: len(masks)] == masks  # before anything else
    for line in ("first-line", "second%250Aline", "third", "api-one", "api-two"):  # '%' escaped: masked literally
        assert f"::add-mask::{line}" in masks
    assert "::add-mask::   " not in masks  # a blank line is not a secret

    plain = subprocess.run(step, env=env, capture_output=True, text=True, cwd=PROJECT, timeout=60)
    assert "::add-mask::" not in plain.stdout and "first-line" not in plain.stdout


def prepare_script() -> str:
    """The script the "Prepare the Python tool environment" step runs, checked to be what the step calls."""
    step = step_script("Prepare the Python tool environment")
    assert step.split() == ["bash", '"$GITHUB_ACTION_PATH/scripts/prepare-tool-venv.sh"']
    return str(PROJECT / "scripts" / "prepare-tool-venv.sh")


def test_prepare_step_names_the_pythons_it_found_when_none_is_recent_enough(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fakes = {"python3": "echo 3.8.10\nexit 1", "python": "exit 127"}  # too old; broken
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        (bin_dir / name).chmod(0o755)
    for tool in ("mktemp", "tr"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    output = tmp_path / "output"

    done = subprocess.run(
        [BASH, prepare_script()],
        env={"PATH": str(bin_dir), "GITHUB_OUTPUT": str(output), "RUNNER_TEMP": str(tmp_path),
             "GITHUB_ACTION_PATH": str(PROJECT)},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1] == (
        "::error::fleet-rollout needs Python >= 3.10 on PATH as python3 or python; found: "
        f"{bin_dir}/python3 (3.8.10) {bin_dir}/python (does not run). Add actions/setup-python before this action."
    )


def test_prepare_step_leaves_no_venv_behind_when_pip_fails(tmp_path):
    action = tmp_path / "action"
    action.mkdir()
    (action / "requirements.txt").write_text("requests==2.34.2\n", encoding="utf-8")  # no hash: refused
    tools = tmp_path / "tools"

    done = subprocess.run(
        [BASH, prepare_script()],
        # FORCE_COLOR makes pip colour its messages even into a pipe, as it does under some runners.
        env={"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(tmp_path / "output"), "RUNNER_TEMP": str(tmp_path),
             "RUNNER_TOOL_CACHE": str(tools), "GITHUB_ACTION_PATH": str(action), "FORCE_COLOR": "1"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("::error::pip could not install the action's hash-locked")
    assert "--require-hashes" in done.stdout + done.stderr  # pip's own reason is shown
    assert list((tools / "fleet-rollout").iterdir()) == []  # neither a venv nor a half-built one
    # Every workflow command starts its own line, and no colour code is there to glue itself to one.
    assert "\x1b" not in done.stdout + done.stderr
    commands = [line for line in done.stdout.splitlines() if "::endgroup::" in line or "::error::" in line]
    assert commands and all(line.startswith("::") for line in commands)


def finish(tmp_path: Path, **env: str) -> tuple[dict[str, str], str, str]:
    """The "Summary and outputs" step's script, run as the step runs it: its outputs, summary and log."""
    assert step_script("Summary and outputs").split() == ["bash", '"$GITHUB_ACTION_PATH/scripts/finish.sh"']
    output, summary = tmp_path / "output", tmp_path / "summary.md"
    output.write_text("")
    summary.write_text("")
    done = subprocess.run(
        [BASH, str(PROJECT / "scripts" / "finish.sh")],
        env={"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary),
             "GITHUB_ACTION_PATH": str(PROJECT), "GITHUB_ACTIONS": "true", **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    text = output.read_text()
    # Python writes `name<<delimiter` blocks; the shell, with no Python, `name=value` lines.
    plain = dict(line.split("=", 1) for line in text.splitlines()) if "<<" not in text else {}
    return plain or parse_outputs(text), summary.read_text(), done.stdout


def run_report(tmp_path: Path, ok: bool = True, **fields) -> str:
    path = tmp_path / "report.json"
    rollout = {"ok": True, "verdict": "shipped-with-quarantine", "message": "shipped", "superseded": ""}
    path.write_text(json.dumps({"schema_version": 1, "ok": ok, "rollout": rollout, **fields}))
    return str(path)


VERIFIED = {
    "ok": True, "verdict": "passed", "message": "7 verified", "tenants": [],
    "counts": {"verified": 7, "quarantined": 1, "stale": 0, "unhealthy": 0, "unreachable": 0, "failed": 0},
}  # fmt: skip


def test_the_last_step_without_a_prepared_python_says_the_rollout_did_not_run_and_ok_is_false(tmp_path):
    outputs, summary, _ = finish(tmp_path, FLEET_PYTHON="", FLEET_STATE="", FLEET_REPORT="", ROLLOUT_OUTCOME="skipped")
    assert outputs == {
        "ok": "false", "superseded": "", "stragglers": "[]", "quarantined-count": "0", "verified-count": "",
        "failed-count": "", "report-path": "", "chronic": "[]",
    }  # fmt: skip
    assert summary == "### Fleet rollout did not run: the log of the step that failed before it says why\n"


def test_the_last_step_reads_the_runs_verdict_from_the_report_and_decides_nothing(tmp_path):
    python = sys.executable
    report = run_report(tmp_path, stragglers=["reno-stars"], verify=VERIFIED)
    outputs, _, _ = finish(tmp_path, FLEET_PYTHON=python, FLEET_REPORT=report, ROLLOUT_OUTCOME="success",
                           VERIFY_OUTCOME="success")  # fmt: skip
    assert outputs == {
        "ok": "true", "superseded": "", "stragglers": '["reno-stars"]', "quarantined-count": "1",
        "verified-count": "7", "failed-count": "0", "report-path": report, "chronic": "[]",
    }  # fmt: skip
    # The chronic tenants are the quarantine ledger's, as the report holds them.
    ledger = {"label": "l", "issues": [], "streaks": {"reno-stars": 3}, "chronic": ["reno-stars"], "warnings": []}
    report = run_report(tmp_path, ok=False, stragglers=["reno-stars"], ledger=ledger)
    outputs, _, _ = finish(tmp_path, FLEET_PYTHON=python, FLEET_REPORT=report, ROLLOUT_OUTCOME="failure")
    assert outputs["chronic"] == '["reno-stars"]' and outputs["ok"] == "false"
    # The report's `ok` is the verdict, whatever the steps' outcomes were.
    report = run_report(tmp_path, ok=False, verify=VERIFIED)
    outputs, _, _ = finish(tmp_path, FLEET_PYTHON=python, FLEET_REPORT=report, ROLLOUT_OUTCOME="success",
                           VERIFY_OUTCOME="success")  # fmt: skip
    assert outputs["ok"] == "false" and outputs["verified-count"] == "7"
    # A verify step killed before it wrote its section leaves the run not ok; skipped, it changes nothing.
    report = run_report(tmp_path)
    for outcome, ok in (("cancelled", "false"), ("failure", "false"), ("skipped", "true"), ("", "true")):
        outputs, _, _ = finish(tmp_path, FLEET_PYTHON=python, FLEET_REPORT=report, ROLLOUT_OUTCOME="success",
                               VERIFY_OUTCOME=outcome)  # fmt: skip
        assert (outputs["ok"], outputs["verified-count"]) == (ok, ""), outcome


def test_the_last_step_says_ok_false_and_why_when_the_report_cannot_be_read(tmp_path):
    missing = str(tmp_path / "gone.json")
    outputs, _, log = finish(tmp_path, FLEET_PYTHON=sys.executable, FLEET_REPORT=missing, ROLLOUT_OUTCOME="failure")
    assert outputs["ok"] == "false" and outputs["report-path"] == missing
    assert log.startswith("::warning::the run's outputs say ok=false: cannot read report")


@pytest.mark.act
def test_the_demo_keeps_the_report_it_names(act, tmp_path, capsys):
    from sandbox import demo

    keep = tmp_path / "kept"
    assert demo.main(["--keep", str(keep)]) == 0
    out = capsys.readouterr().out
    named = [line.split("report: ", 1)[1].strip() for line in out.splitlines() if "| report: " in line]
    kept = list(keep.iterdir())
    assert len(kept) == 1 and named and all(path == str(kept[0]) for path in named)
    assert f"kept at {kept[0]}" in out
    report = json.loads(kept[0].read_text())
    assert report["stragglers"] == ["reno-stars"] and report["verify"]["ok"] is True
