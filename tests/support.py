"""Running a step the way a runner would: `main(argv)` in-process, with GITHUB_OUTPUT and
GITHUB_STEP_SUMMARY pointed at files, so every line the runner would see can be asserted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet import contract

SHA = "ab" * 20
TAG = "sha-" + SHA
OLD_SHA_HINT = "old build"


def scenario(*tenants: str, **extra: Any) -> dict:
    """A scenario from 'slug' or 'slug:behaviour' strings."""
    specs = []
    for item in tenants:
        slug, _, behaviour = item.partition(":")
        specs.append({"slug": slug, "behaviour": behaviour or "healthy"})
    return {"description": "test fleet", "tenants": specs, **extra}


@dataclass
class StepRun:
    code: int
    log: str
    outputs: dict[str, str]
    summary: str
    report: dict | None

    def warnings(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.startswith("::warning::")]

    def errors(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.startswith("::error::")]


def parse_outputs(text: str) -> dict[str, str]:
    """GITHUB_OUTPUT as a runner reads it: `name<<delimiter` blocks, lines split on \\n only."""
    outputs: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        name, _, delimiter = line.partition("<<")
        value = []
        for inner in lines:
            if inner == delimiter:
                break
            value.append(inner)
        outputs[name] = "\n".join(value)
    return outputs


def run_step(main, argv: list[str], *, tmp_path: Path, capsys, monkeypatch, token: str | None) -> StepRun:
    """Run a step's main() as the action would; the report is validated against its schema."""
    out, summary = tmp_path / "github_output", tmp_path / "step_summary"
    out.write_text("")
    summary.write_text("")
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    if token is None:
        monkeypatch.delenv("CP_TOKEN", raising=False)
    else:
        monkeypatch.setenv("CP_TOKEN", token)
    capsys.readouterr()
    code = main(argv)
    log = capsys.readouterr().out
    report = None
    if "--report" in argv:
        # The step names where it wrote its report: a refused input never overwrites an earlier one.
        written = [line.removeprefix("report: ") for line in log.splitlines() if line.startswith("report: ")]
        path = Path(written[-1] if written else argv[argv.index("--report") + 1])
        if path.exists():
            report = json.loads(path.read_text())
            contract.validate("report", report, "report")
    return StepRun(code, log, parse_outputs(out.read_bytes().decode()), summary.read_text(), report)


def all_bodies(sandbox) -> list[dict]:
    """Every redeploy-fleet body the control plane received, dry runs included, in order."""
    return [c["body"] for c in sandbox.cp_calls if c["method"] == "POST"]


def bodies(sandbox) -> list[dict]:
    """The bodies of the real redeploy calls (not dry runs) the control plane received, in order."""
    return [b for b in all_bodies(sandbox) if not b.get("dry_run")]
