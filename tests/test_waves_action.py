"""Waves under a real runner: the action, under nektos/act, against sandbox control planes; each case is
one `uses: ./` step of one job, and the sizes asserted are the `only_slugs` of the real calls each
control plane received (the canary's call first)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from support import SHA, TAG, scenario

from sandbox import Sandbox
from sandbox.act import job

RECORD = 'printf "%s" "$STEPS" > "$RESULT_DIR/steps.json"'


def fleet(count: int, wedged: tuple[int, ...] = ()) -> dict:
    """`count` tenants, t00 the canary; the numbered ones wedged (they fail their redeploy)."""
    return scenario(*(f"t{i:02d}" + (":wedged" if i in wedged else "") for i in range(count)))


# case: (the fleet, the action's inputs, the sizes of the real calls, canary first)
GROWING = {
    "growth-2": (fleet(40), {"batch-growth": "2"}, [1, 3, 6, 12, 18]),
    "reset-after-a-straggler": (fleet(40, wedged=(5,)), {"batch-growth": "2", "max-stragglers": "2"},
                                [1, 3, 6, 3, 6, 12, 9]),
    "cap-5": (fleet(40), {"batch-growth": "2", "max-batch-size": "5"}, [1, 3, 5, 5, 5, 5, 5, 5, 5, 1]),
    "cap-25-percent": (fleet(40), {"batch-growth": "2", "max-batch-size": "25%"}, [1, 3, 6, 10, 10, 10]),
    "growth-1.5": (fleet(40), {"batch-growth": "1.5"}, [1, 3, 5, 8, 12, 11]),
    # Late and large: batch 4 (24 tenants, t22..t45) breaks the budget of 1; t46..t79 are never sent.
    "systemic-late": (fleet(80, wedged=(30, 31)), {"batch-growth": "2", "max-stragglers": "1"}, [1, 3, 6, 12, 24]),
}  # fmt: skip

REFUSED = {
    "fleet-mode": ({"mode": "fleet", "batch-growth": "2"}, "batch-growth and max-batch-size need mode: scoped"),
    "fleet-mode-cap": ({"mode": "fleet", "max-batch-size": "10"}, "batch-growth and max-batch-size need mode"),
    "growth-0.5": ({"batch-growth": "0.5"}, "batch-growth must be a number >= 1"),
    "growth-abc": ({"batch-growth": "abc"}, "batch-growth must be a number >= 1"),
    "growth-minus-1": ({"batch-growth": "-1"}, "batch-growth must be a number >= 1"),
    "cap-0-percent": ({"max-batch-size": "0%"}, "max-batch-size must be empty, an integer >= 1, or a percentage"),
    "cap-150-percent": ({"max-batch-size": "150%"}, "max-batch-size must be empty, an integer >= 1, or a percentage"),
}


def step(case: str, sandbox: Sandbox, inputs: dict[str, str]) -> dict:
    return {
        "id": case.replace(".", "_"),
        "uses": "./",
        "continue-on-error": True,
        "with": {
            "cp-url": sandbox.url,
            "cp-token": "${{ env.FLEET_TOKEN }}",
            "target-tag": TAG,
            "expected-sha": SHA,
            "canary-slug": "t00",
            "soak-seconds": "0",
            "batch-size": "3",
            "max-stragglers": "0",
            "superseded-check": "false",
            "api-url": "",
            **inputs,
        },
    }


@pytest.fixture(scope="module")
def waves_run(act, tmp_path_factory) -> Iterator[tuple[dict, dict[str, Sandbox], Sandbox, str]]:
    """One job: every case above as a step of its own, each growing case against its own sandbox, the
    refused ones against one sandbox that must receive no call at all."""
    runner, _ = act
    token = "cp-" + secrets.token_hex(16)
    with ExitStack() as stack:
        sandboxes = {
            case: stack.enter_context(Sandbox({**spec, "token": token})) for case, (spec, _, _) in GROWING.items()
        }
        refusing = stack.enter_context(Sandbox({**fleet(4), "token": token}))
        steps = [step(case, sandboxes[case], inputs) for case, (_, inputs, _) in GROWING.items()]
        steps += [step(case, refusing, inputs) for case, (inputs, _) in REFUSED.items()]
        record = {"name": "Record", "if": "always()", "env": {"STEPS": "${{ toJSON(steps) }}"}, "run": RECORD}
        workflow = job(*steps, record)
        where: Path = tmp_path_factory.mktemp("waves")
        done = runner.run(workflow, where, env={"FLEET_TOKEN": token}, timeout=600)
        assert done.returncode == 0, done.log
        recorded = done.read("steps.json")
        assert recorded is not None, done.log
        assert token not in done.log
        yield json.loads(recorded), sandboxes, refusing, done.log


def real_call_sizes(sandbox: Sandbox) -> list[int]:
    return [len(c["body"]["only_slugs"]) for c in sandbox.cp_calls if c["method"] == "POST" and not c["dry_run"]]


@pytest.mark.act
@pytest.mark.parametrize("case", list(GROWING))
def test_each_batch_is_as_large_as_the_waves_allow(waves_run, case):
    steps, sandboxes, _, log = waves_run
    _, inputs, sizes = GROWING[case]
    assert real_call_sizes(sandboxes[case]) == sizes, log
    outcome = steps[case.replace(".", "_")]["outcome"]
    assert outcome == ("failure" if case == "systemic-late" else "success"), log


@pytest.mark.act
def test_a_systemic_break_in_a_large_late_batch_halts_there_and_leaves_the_rest_untouched(waves_run):
    steps, sandboxes, _, log = waves_run
    sandbox = sandboxes["systemic-late"]
    sent = {
        slug for c in sandbox.cp_calls if c["method"] == "POST" and not c["dry_run"] for slug in c["body"]["only_slugs"]
    }
    untouched = [f"t{i:02d}" for i in range(46, 80)]
    assert not sent & set(untouched)
    state = sandbox.state()["tenants"]
    assert all(state[slug]["serving_sha"] != SHA for slug in untouched)
    assert steps["systemic-late"]["outputs"]["ok"] == "false"
    (error,) = [line for line in log.splitlines() if "::error::systemic failure" in line]
    assert "max tolerated 1" in error and "halted at batch 4 of 5, 34 tenants left on their old build" in error


@pytest.mark.act
def test_fleet_mode_and_bad_values_are_refused_before_any_call(waves_run):
    steps, _, refusing, log = waves_run
    assert refusing.cp_calls == []  # not even the enumeration
    for case, (_, said) in REFUSED.items():
        assert steps[case.replace(".", "_")]["outcome"] == "failure", case
        assert steps[case.replace(".", "_")]["outputs"]["ok"] == "false", case
        assert said in log, case
