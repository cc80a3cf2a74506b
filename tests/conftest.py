"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest

from sandbox import Sandbox


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
