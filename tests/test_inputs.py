"""The inputs live in one place: `fleet.inputs.INPUTS`. action.yml's inputs and their defaults, the
README's inputs and outputs tables, the steps' flags, the environment the action hands each step (one
JSON object) and the recovery command must agree with it."""

from __future__ import annotations

import json
import re
import shlex
import textwrap
from pathlib import Path

import certifi
import pytest
import yaml

from fleet import inputs, runner
from fleet.inputs import INPUTS, REQUIRED, Kind, Typed
from rollout.cli import NAMES as ROLLOUT_NAMES
from rollout.cli import Rollout
from rollout.plan import settings_from
from rollout.summary import recovery_command
from verify.cli import NAMES as VERIFY_NAMES
from verify.cli import Verify

ROOT = Path(__file__).resolve().parent.parent
ACTION = yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))
TOKENS = {"cp-token": "CP_TOKEN", "api-token": "API_TOKEN"}  # read from the environment, never a flag


def action_default(name: str) -> str:
    spec = ACTION["inputs"][name]
    return REQUIRED if spec.get("required") else str(spec.get("default", ""))


def step_env(step_id: str) -> dict[str, str]:
    return next(s for s in ACTION["runs"]["steps"] if s.get("id") == step_id)["env"]


def readme_table(heading: str) -> dict[str, str]:
    """The README table under `heading`: its first column (a `name`) to its second."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([a-z-]+)` \| (.*?) \|", section, flags=re.M)
    return dict(rows)


def test_action_inputs_are_the_inputs_table_with_the_same_defaults():
    in_table = {name: i.action_default for name, i in INPUTS.items() if i.action_default is not None}
    assert {name: action_default(name) for name in ACTION["inputs"]} == in_table
    assert all(ACTION["inputs"][name]["description"].strip() for name in ACTION["inputs"])


def test_each_step_gets_every_input_in_one_json_object_and_no_input_elsewhere():
    for step_id in ("rollout", "verify"):
        env = step_env(step_id)
        assert env["FLEET_INPUTS"] == "${{ toJSON(inputs) }}", step_id
        assert not {"CP_TOKEN", "API_TOKEN"} & set(env), step_id  # the tokens travel in FLEET_INPUTS only
    # No input reaches a step any other way: not in another variable, never as `${{ }}` inside a script.
    for step in ACTION["runs"]["steps"]:
        for value in [*step.get("env", {}).values(), step["run"], str(step.get("if", ""))]:
            assert "inputs." not in str(value), step["name"]
    assert "FLEET_INPUTS" not in step_env("result")  # the last step never holds a token


def test_every_action_input_reaches_a_step_and_every_flag_is_an_input():
    flags = set(ROLLOUT_NAMES) | set(VERIFY_NAMES)
    for name in ACTION["inputs"]:
        assert name in flags or name in TOKENS, f"input {name} reaches no step"
    for name, variable in TOKENS.items():
        assert INPUTS[name].variable == variable and name not in flags


def test_every_default_reads_as_its_kind():
    readers = {
        Kind.STRING: Typed.text, Kind.INTEGER: Typed.integer, Kind.SECONDS: Typed.seconds, Kind.NUMBER: Typed.number,
        Kind.BOOLEAN: Typed.boolean, Kind.SLUGS: Typed.slugs, Kind.PATH: Typed.path, Kind.FILE: Typed.file,
    }  # fmt: skip
    for name, item in INPUTS.items():
        read = Typed({name: item.default})
        if item.kind == Kind.URL:
            read.url(name, allow_http=False)
        else:
            readers[item.kind](read, name)


def test_the_readme_lists_every_input_with_its_default_and_every_output():
    table = readme_table("## Inputs")
    assert list(table) == list(ACTION["inputs"])  # the same inputs, in the same order
    for name, default in table.items():
        expected = action_default(name)
        shown = expected if expected else '""'
        assert default == (REQUIRED if expected == REQUIRED else f"`{shown}`"), name
    assert list(readme_table("## Outputs")) == list(ACTION["outputs"])


def test_the_readmes_recovery_snippet_is_as_strict_as_the_recovery_workflow():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Recovery\n", 1)[1].split("\n## ", 1)[0]
    snippet = yaml.safe_load(textwrap.dedent(section.split("```yaml\n", 1)[1].split("```", 1)[0]))
    readme = snippet[0]["with"]
    workflow = yaml.safe_load((ROOT / "examples" / "recover-stragglers.yml").read_text(encoding="utf-8"))
    example = next(s for s in workflow["jobs"]["recover"]["steps"] if s.get("id") == "recover")["with"]
    for name in ("canary-slug", "soak-seconds", "max-stragglers", "superseded-check"):
        assert readme[name] == example[name], name
    assert "pip install" in section  # how to run the printed command outside a checkout


# -- one path for the command line and the action ------------------------------------------------------


ACTION_VALUES = {
    "cp-url": "https://cp.example.com", "target-tag": "sha-1", "batch-size": "7", "slugs": "acme",
    "cp-token": "cp-Sentinel-one\ncp-Sentinel-two", "api-token": "api-Sentinel-3", "not-an-input": "x",
}  # fmt: skip


def read_step(step, argv, monkeypatch, **environ: str):
    for name in ("FLEET_INPUTS", "CP_TOKEN", "API_TOKEN", "FLEET_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return inputs.read(step.usage, step.names, argv)


def test_the_action_environment_gives_each_step_its_inputs_and_a_given_flag_wins(monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    action = json.dumps(ACTION_VALUES)
    rollout = read_step(Rollout, [], monkeypatch, FLEET_INPUTS=action, CP_TOKEN="cp-from-the-command-line")
    assert rollout.action and rollout.values["batch-size"] == "7" and rollout.values["slugs"] == "acme"
    assert rollout.values["mode"] == "scoped"  # absent from the object: the list's default
    assert rollout.token == "cp-Sentinel-one\ncp-Sentinel-two" and rollout.api_token == "api-Sentinel-3"
    given = read_step(Rollout, ["--batch-size", "9", "--dry-run"], monkeypatch, FLEET_INPUTS=action)
    assert given.values["batch-size"] == "9" and given.values["dry-run"] == "true"

    capsys.readouterr()
    runner._SECRETS.clear()  # a new process: verify registers the tokens afresh
    verify = read_step(Verify, [], monkeypatch, FLEET_INPUTS=action)
    # In the action verify takes its tenants from the rollout's report, never from `slugs`, and the
    # control-plane token in its environment is masked but never handed to it.
    assert verify.values["slugs"] == "" and verify.token == "" and verify.api_token == "api-Sentinel-3"
    masks = capsys.readouterr().out.splitlines()
    assert {"::add-mask::cp-Sentinel-one", "::add-mask::cp-Sentinel-two", "::add-mask::api-Sentinel-3"} <= set(masks)


def test_on_the_command_line_the_tokens_come_from_their_variables_and_no_check_is_forced(monkeypatch):
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    given = read_step(Rollout, ["--dry-run", "false"], monkeypatch, CP_TOKEN=" cp-1 \n", API_TOKEN="api-2")
    assert not given.action and (given.token, given.api_token) == ("cp-1", "api-2")
    assert given.values["dry-run"] == "false" and given.values["batch-size"] == "3"
    assert given.values["superseded-check"] == "false"  # no forge named: a check that cannot be made is off
    asked = json.dumps({"superseded-check": "true", "api-url": ""})  # the action's: asked for, so kept
    assert read_step(Rollout, [], monkeypatch, FLEET_INPUTS=asked).values["superseded-check"] == "true"


def test_a_relative_file_input_of_the_action_is_taken_from_the_workspace(monkeypatch, tmp_path):
    action = json.dumps({"ca-bundle": "certs/ca.pem"})
    given = read_step(Verify, [], monkeypatch, FLEET_INPUTS=action, FLEET_WORKSPACE=str(tmp_path))
    assert given.values["ca-bundle"] == str(tmp_path / "certs" / "ca.pem")
    flag = read_step(Verify, ["--ca-bundle", "certs/ca.pem"], monkeypatch, FLEET_WORKSPACE=str(tmp_path))
    assert flag.values["ca-bundle"] == "certs/ca.pem"  # the command line's own directory


@pytest.mark.parametrize("broken", ['{"cp-token": "cp-Sentinel-9"', '["cp-Sentinel-9"]'])
def test_fleet_inputs_that_is_no_json_object_is_bad_input_and_never_shown(monkeypatch, capsys, broken):
    with pytest.raises(SystemExit) as stopped:
        read_step(Rollout, [], monkeypatch, FLEET_INPUTS=broken)
    assert stopped.value.code == runner.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "FLEET_INPUTS must hold the action's inputs as a JSON object" in err and "Sentinel" not in err


def test_the_recovery_command_repeats_each_recovery_input_given_another_value():
    values = {name: item.default for name, item in INPUTS.items() if name in ROLLOUT_NAMES}
    values |= {"cp-url": "http://127.0.0.1:9", "target-tag": "sha-1"}
    plain = shlex.split(recovery_command(settings_from(values, {}), ["reno"]).removeprefix("CP_TOKEN=... "))
    assert plain == [
        "python", "-m", "rollout", "--cp-url", "http://127.0.0.1:9", "--target-tag", "sha-1", "--slugs", "reno",
        "--max-stragglers", "0", "--soak-seconds", "0",
    ]  # fmt: skip
    others = {
        "expected-sha": "abcdef1", "tenant-url-template": "https://{slug}.example.com", "healthz-path": "/health",
        "buildinfo-path": "/build", "cp-timeout-seconds": "90.5", "allow-http": "yes", "ca-bundle": certifi.where(),
        "batch-size": "5", "quarantine-issues": "true", "quarantine-label": "stuck", "api-url": "https://forge.example",
    }  # fmt: skip
    command = shlex.split(recovery_command(settings_from(values | others, {}), ["reno"]))
    # with the ledger kept, the forge's API too: the recovery closes the tenant's issue
    repeated = {name for name, item in INPUTS.items() if item.recovery} - {"cp-url", "target-tag"} | {"api-url"}
    for name in repeated:
        shown = "true" if name in ("allow-http", "quarantine-issues") else others[name]
        assert command[command.index(f"--{name}") + 1] == shown, name
    assert "--batch-size" not in command  # not a recovery input: the recovery's own batches
    assert command[-2:] == ["--verify", "true"]
