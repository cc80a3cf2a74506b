"""A newcomer's first hour on the command line: flags that read as they look, help that says what is
required and where tokens come from, and a refused input that leaves the last good report alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import SHA, TAG, bodies, run_step

from rollout.cli import main
from sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def rollout(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)

    def _run(sb: Sandbox, *flags: str):
        argv = ["--cp-url", sb.url, "--target-tag", TAG, "--soak-seconds", "0", *flags]
        return run_step(main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token)

    return _run


@pytest.mark.parametrize("flags", [["--dry-run"], ["--dry-run", "true"], ["--dry-run", "--mode", "fleet"]])
def test_dry_run_works_as_a_bare_flag_and_with_a_value(start, rollout, flags):
    sb = start("clean")
    run = rollout(sb, *flags)
    assert run.code == 0 and "dry run:" in run.log and bodies(sb) == []


def test_a_switch_given_false_is_false(start, rollout):
    sb = start("clean")
    run = rollout(sb, "--dry-run", "false")
    assert run.code == 0 and len(bodies(sb)) == 3


def test_allow_http_and_verify_work_as_bare_flags(start, rollout):
    sb = start("clean")
    run = rollout(sb, "--allow-http", "--verify", "--tenant-url-template", sb.tenant_url_template,
                  "--expected-sha", SHA, "--slugs", "acme", "--max-stragglers", "0",
                  "--poll-interval-seconds", "0.2")  # fmt: skip
    assert run.code == 0 and "Fleet verify: passed" in run.log


def help_text(*command: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=60, cwd=cwd,
        env=env or {**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
    return " ".join(done.stdout.split())  # argparse wraps lines: compare words


def test_rollout_help_marks_what_is_required():
    text = help_text(sys.executable, "-m", "rollout")
    assert text.startswith("usage: python -m rollout")
    assert "--cp-url VALUE control-plane base URL (required)" in text
    assert "--target-tag VALUE image tag every tenant in scope moves to (required)" in text
    assert "CP_TOKEN (required)" in text
    assert "--dry-run [true|false]" in text


def test_verify_help_speaks_of_no_control_plane_token():
    text = help_text(sys.executable, "-m", "verify")
    assert text.startswith("usage: python -m verify")
    assert "CP_TOKEN" not in text and "control-plane token" not in text
    assert "(required)" in text and "--report, --response or --slugs" in text


def test_an_installed_console_script_names_itself(tmp_path):
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(ROOT)],
        check=True, cwd=tmp_path, capture_output=True,
    )  # fmt: skip
    deps = [p for p in sys.path if p.endswith("site-packages")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *deps])}
    for script in ("fleet-rollout", "fleet-verify"):
        assert help_text(str(target / "bin" / script), cwd=tmp_path, env=env).startswith(f"usage: {script} ")


def test_a_refused_input_leaves_the_last_good_report_alone(start, tmp_path, monkeypatch, capsys):
    sb = start("clean")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RUNNER_TEMP", raising=False)
    monkeypatch.setenv("CP_TOKEN", sb.token)
    assert main(["--cp-url", sb.url, "--target-tag", TAG, "--soak-seconds", "0"]) == 0
    good = (tmp_path / "fleet-rollout-report.json").read_text()
    assert json.loads(good)["ok"] is True
    capsys.readouterr()
    assert main(["--cp-url", sb.url, "--target-tag", TAG, "--batch-size", "zero"]) == 2
    out = capsys.readouterr().out
    assert (tmp_path / "fleet-rollout-report.json").read_text() == good
    refused = json.loads((tmp_path / "fleet-rollout-report.refused.json").read_text())
    assert refused["ok"] is False and "batch-size" in refused["message"]
    assert "report: fleet-rollout-report.refused.json" in out


def test_no_superseded_noise_on_a_command_line_without_a_forge(start, rollout, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    sb = start("clean")
    run = rollout(sb, "--api-url", "")
    assert run.code == 0 and "branch head" not in run.log and "superseded" not in run.log


def test_superseded_check_asked_for_without_a_forge_is_said_once_in_plain_text(start, rollout, monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    sb = start("clean")
    run = rollout(sb, "--superseded-check", "--expected-sha", SHA, "--tenant-url-template", sb.tenant_url_template,
                  "--verify", "--slugs", "acme", "--max-stragglers", "0", "--poll-interval-seconds", "0.2")  # fmt: skip
    said = [line for line in run.log.splitlines() if "the branch head could not be read (api-url is empty)" in line]
    assert run.code == 0 and len(said) == 1 and said[0].startswith("note: superseded-check")
