"""Benchmark: a rollout's wall time and real calls, fixed batches against growing ones (waves).

    python bench/rollout_time.py [--fleets 100,300,1000] [--call-seconds 0.2] [--batch-size 3] [--growth 2]

Each real redeploy call takes --call-seconds in the sandbox (its `slow` control-plane fault on real
calls), as the control plane's own redeploy and health wait would. For each fleet size, side by side in
one run: `python -m rollout` with fixed batches of --batch-size (batch-growth 1), then with
batch-growth --growth from the same size, no canary, each against a fresh sandbox in its own process.
Prints the real calls (counted by the sandbox), the wall time of each and their ratio; nothing is
asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox_process import SandboxProcess

ROOT = Path(__file__).resolve().parent.parent
TAG = "sha-" + "c0ffee" * 6 + "c0ff"
TOKEN = "bench-token"  # noqa: S105 - the sandbox's own token


def scenario(count: int, call_seconds: float) -> dict[str, Any]:
    return {
        "description": f"{count} healthy tenants; every real call takes {call_seconds} s",
        "token": TOKEN,
        "fleet": {"count": count, "prefix": "tenant"},
        "control_plane": {"fault": "slow", "on": "redeploy", "slow_seconds": call_seconds},
    }


def rollout(count: int, call_seconds: float, batch_size: int, growth: str) -> tuple[int, float]:
    """One rollout against a fresh sandbox: its real calls and wall time."""
    sandbox = SandboxProcess(scenario(count, call_seconds))
    try:
        argv = [
            sys.executable, "-m", "rollout", "--cp-url", sandbox.url, "--target-tag", TAG,
            "--batch-size", str(batch_size), "--batch-growth", growth, "--max-stragglers", "0",
            "--soak-seconds", "0", "--superseded-check", "false",
            "--report", str(sandbox.dir / "report.json"),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
        began = time.monotonic()
        done = subprocess.run(
            argv, cwd=ROOT, env={**env, "CP_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
        )
        took = time.monotonic() - began
        if done.returncode != 0:
            raise SystemExit(f"the rollout failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        calls = sum(1 for c in sandbox.state()["cp_calls"] if c["method"] == "POST" and not c["dry_run"])
        return calls, took
    finally:
        sandbox.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", default="100,300,1000", help="fleet sizes, comma separated")
    parser.add_argument("--call-seconds", type=float, default=0.2, help="how long each real call takes")
    parser.add_argument("--batch-size", type=int, default=3)
    parser.add_argument("--growth", default="2", help="batch-growth of the growing run")
    args = parser.parse_args()
    print(f"each real call takes {args.call_seconds:g} s; batch-size {args.batch_size}; no canary")
    print()
    grown = f"growth {args.growth}"
    print(f"| tenants | fixed: calls | fixed: wall | {grown}: calls | {grown}: wall | ratio |")
    print("|---|---|---|---|---|---|")
    for count in (int(n) for n in args.fleets.split(",")):
        fixed_calls, fixed_wall = rollout(count, args.call_seconds, args.batch_size, "1")
        grown_calls, grown_wall = rollout(count, args.call_seconds, args.batch_size, args.growth)
        print(
            f"| {count} | {fixed_calls} | {fixed_wall:.1f} s | {grown_calls} | {grown_wall:.1f} s | "
            f"{fixed_wall / grown_wall:.1f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
