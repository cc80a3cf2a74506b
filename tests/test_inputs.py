"""The inputs live in one place: `fleet.inputs.INPUTS`. action.yml's inputs, their defaults and the
`env:` mapping of each step, the steps' flags, and the README's inputs and outputs tables must agree
with it."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import yaml

from fleet.inputs import INPUTS, REQUIRED, env_name
from rollout.cli import NAMES as ROLLOUT_NAMES
from verify.cli import NAMES as VERIFY_NAMES

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


def test_every_step_gets_exactly_its_inputs_through_env():
    # In the action, verify takes its tenants from the rollout's report, never from `slugs`.
    verify_names = [name for name in VERIFY_NAMES if name != "slugs"]
    for step_id, names in (("rollout", ROLLOUT_NAMES), ("verify", verify_names)):
        env = step_env(step_id)
        wanted = {
            env_name(name): f"${{{{ inputs.{name} }}}}" for name in names if INPUTS[name].action_default is not None
        }
        mapped = {
            key: value for key, value in env.items() if key.startswith("GHA_FLEET_") and key != "GHA_FLEET_REPORT"
        }
        assert mapped == wanted, step_id
    assert step_env("rollout")["CP_TOKEN"] == "${{ inputs.cp-token }}"
    assert "CP_TOKEN" not in step_env("verify")  # verify never calls the control plane
    assert step_env("rollout")["API_TOKEN"] == step_env("verify")["API_TOKEN"] == "${{ inputs.api-token }}"


def test_every_action_input_reaches_a_step_and_every_flag_is_an_input():
    flags = set(ROLLOUT_NAMES) | set(VERIFY_NAMES)
    for name in ACTION["inputs"]:
        assert name in flags or name in TOKENS, f"input {name} reaches no step"
    for name in flags:
        assert INPUTS[name].flag, name


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
