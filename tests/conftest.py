"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
from faultservers import FaultServer

from fleet import forge, runner
from sandbox import Sandbox


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
