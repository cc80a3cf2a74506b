"""Benchmark: the action's cold start, against a plain venv and pip install of the same lock.

    python bench/cold_start.py [--runs 5]

Each round times, in alternating order:
  (a) the action's "Prepare the Python tool environment" step (scripts/prepare-tool-venv.sh) with an
      empty tool cache (RUNNER_TOOL_CACHE) and an empty pip cache (PIP_CACHE_DIR);
  (b) `python3 -m venv X && X/bin/pip install -r requirements.txt`, with an empty pip cache.
Both download the locked wheels from the index pip is configured with, and both run with
PIP_DISABLE_PIP_VERSION_CHECK=1 (which spares (b) a request). Prints each round, the medians and the
ratio a/b.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PREPARE = PROJECT / "scripts" / "prepare-tool-venv.sh"
REQUIREMENTS = PROJECT / "requirements.txt"
IMPORTS = "import certifi, jsonschema, referencing"


def _run(command: list[str], env: dict[str, str], what: str) -> float:
    """Runs `command` and returns its wall time; exits with its output when it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return elapsed


def _check(python: Path, env: dict[str, str], what: str) -> None:
    """The environment `what` built imports the action's runtime set (untimed)."""
    _run([str(python), "-c", IMPORTS], env, f"{what}: importing the runtime set")


def action_cold_start(scratch: Path, env: dict[str, str]) -> float:
    """(a): the action's prepare step, with an empty tool cache and an empty pip cache."""
    output = scratch / "github-output"
    output.touch()
    tools = scratch / "tool-cache"
    step_env = env | {
        "GITHUB_ACTION_PATH": str(PROJECT),
        "GITHUB_OUTPUT": str(output),
        "RUNNER_TEMP": str(scratch),
        "RUNNER_TOOL_CACHE": str(tools),
        "PIP_CACHE_DIR": str(scratch / "pip-cache"),
    }
    elapsed = _run(["bash", str(PREPARE)], step_env, "the prepare step")
    outputs = dict(line.split("=", 1) for line in output.read_text(encoding="utf-8").splitlines())
    python = Path(outputs["python"])
    if tools not in python.parents:
        raise SystemExit(f"the prepare step's python is not in the empty tool cache: {python}")
    _check(python, env, "the prepare step")
    return elapsed


def plain_venv(scratch: Path, env: dict[str, str], base: str) -> float:
    """(b): `python3 -m venv X && X/bin/pip install -r requirements.txt`, with an empty pip cache."""
    venv = scratch / "venv"
    script = 'python="$1"; venv="$2"; "$python" -m venv "$venv" && "$venv/bin/pip" install -r "$3"'
    command = ["bash", "-c", script, "plain", base, str(venv), str(REQUIREMENTS)]
    elapsed = _run(command, env | {"PIP_CACHE_DIR": str(scratch / "pip-cache")}, "python -m venv + pip install")
    _check(venv / "bin" / "python", env, "python -m venv + pip install")
    return elapsed


def _describe(base: str, env: dict[str, str]) -> str:
    version = subprocess.run(
        [base, "-c", "import sys, pip; print(sys.version.split()[0], sys.executable, 'pip', pip.__version__)"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; Python {version}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="rounds of (a) and (b) (default 5)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    base = shutil.which("python3", path=env.get("PATH")) or shutil.which("python", path=env.get("PATH"))
    if base is None:
        raise SystemExit("no python3 or python on PATH")
    print(f"machine: {_describe(base, env)}")
    print(f"(a) bash {PREPARE.relative_to(PROJECT)}  [empty RUNNER_TOOL_CACHE and PIP_CACHE_DIR]")
    print(f"(b) {Path(base).name} -m venv X && X/bin/pip install -r requirements.txt  [empty PIP_CACHE_DIR]")

    timings: dict[str, list[float]] = {"a": [], "b": []}
    for round_ in range(args.runs):
        order = ("a", "b") if round_ % 2 == 0 else ("b", "a")
        for which in order:
            with tempfile.TemporaryDirectory(prefix=f"fleet-cold-{which}-") as scratch:
                if which == "a":
                    timings[which].append(action_cold_start(Path(scratch), env))
                else:
                    timings[which].append(plain_venv(Path(scratch), env, base))
        print(f"round {round_ + 1}: (a) {timings['a'][-1]:.2f} s  (b) {timings['b'][-1]:.2f} s", flush=True)

    a, b = statistics.median(timings["a"]), statistics.median(timings["b"])
    print(f"median (a) action cold start: {a:.2f} s")
    print(f"median (b) plain venv + pip:  {b:.2f} s")
    print(f"ratio a/b: {a / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
