"""Benchmark: `python -m verify` against a sequential curl loop over the same sandbox fleet.

    python bench/verify_speed.py [--tenants 1000] [--curl-tenants 300] [--latency-ms 20] [--runs 5]

Starts the sandbox in its own process with every tenant already on the target build and a fixed
per-request latency, then times, in one run and side by side:
  1. verify over --tenants tenants (wall time of the whole process, interpreter start included);
  2. verify and a curl loop (healthz + buildinfo per tenant, one after another, as a shell step
     would) over --curl-tenants tenants, and their ratio;
  3. readiness: one tenant becomes ready T seconds after its redeploy; how long after T verify exits,
     against the bound of one poll interval + 1 s;
  4. start-up: `python -m verify --help`, which imports what a run imports and sends nothing.
Prints medians; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sandbox_process import SandboxProcess

ROOT = Path(__file__).resolve().parent.parent
SHA = "c0ffee" * 6 + "c0ff"
TAG = "sha-" + SHA
TOKEN = "bench-token"  # noqa: S105 - the sandbox's own token


def scenario(count: int, latency_ms: int, deployed: bool = True) -> dict[str, Any]:
    return {
        "description": f"{count} tenants, {latency_ms} ms latency",
        "token": TOKEN,
        "latency_ms": latency_ms,
        "deployed_tag": TAG if deployed else None,
        "tenants": [],
        "fleet": {"count": count, "prefix": "t-", "behaviour": "healthy"},
    }


def fleet(count: int) -> list[str]:
    """The slugs of `scenario(count, ...)`'s generated fleet."""
    return [f"t-{i:04d}" for i in range(1, count + 1)]


def time_verify(sb: SandboxProcess, slugs: list[str], interval: float = 5.0) -> float:
    count = len(slugs)
    report = Path(tempfile.mkdtemp(prefix="fleet-bench-report-")) / "verify.json"
    argv = [
        sys.executable, "-m", "verify", "--slugs", ",".join(slugs), "--tenant-url-template", sb.url + "/t/{slug}",
        "--expected-sha", SHA, "--report", str(report), "--poll-interval-seconds", str(interval),
        "--verify-timeout-seconds", "120",
    ]  # fmt: skip
    env = dict(os.environ, CP_TOKEN=TOKEN, PYTHONPATH=str(ROOT))
    env.pop("GITHUB_STEP_SUMMARY", None)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    took = time.perf_counter() - start
    verified = json.loads(report.read_text())["verify"]["counts"]["verified"]
    shutil.rmtree(report.parent, ignore_errors=True)
    if done.returncode != 0 or verified != count:
        raise SystemExit(f"verify failed ({done.returncode}, {verified}/{count}): {done.stderr.decode()[-300:]}")
    return took


def time_curl(sb: SandboxProcess, count: int) -> float:
    slugs = " ".join(f"t-{i:04d}" for i in range(1, count + 1))
    script = (
        f'for s in {slugs}; do curl -fsS -o /dev/null "{sb.url}/t/$s/healthz" && '
        f'curl -fsS "{sb.url}/t/$s/buildinfo" | grep -q {SHA[:12]} || exit 1; done'
    )
    start = time.perf_counter()
    subprocess.run(["bash", "-c", script], check=True)
    return time.perf_counter() - start


def time_help() -> float:
    """Wall time of `python -m verify --help`: the interpreter's start and verify's imports."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "verify", "--help"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def readiness(ready_after: float, interval: float) -> float:
    """Seconds between the moment the last tenant is ready and verify's exit."""
    spec = scenario(50, 0, deployed=False)
    spec["tenants"] = [{"slug": "late", "behaviour": "slow", "ready_after": ready_after}]
    sb = SandboxProcess(spec)
    try:
        body = json.dumps({"target_tag": TAG, "batch_size": 51, "max_stragglers": 0, "confirm": True}).encode()
        req = urllib.request.Request(
            sb.url + "/cp/admin/tenants/redeploy-fleet", body,
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req) as resp:  # noqa: S310 - loopback sandbox
            resp.read()
        ready_at = time.perf_counter() + ready_after
        time_verify(sb, ["late", *fleet(50)], interval)
        return time.perf_counter() - ready_at
    finally:
        sb.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tenants", type=int, default=1000)
    p.add_argument("--curl-tenants", type=int, default=300)
    p.add_argument("--latency-ms", type=int, default=20)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--curl-runs", type=int, default=3)
    args = p.parse_args()
    if not shutil.which("curl"):
        raise SystemExit("curl is needed for the comparison")

    big = SandboxProcess(scenario(args.tenants, args.latency_ms))
    try:
        big_times = [time_verify(big, fleet(args.tenants)) for _ in range(args.runs)]
    finally:
        big.stop()
    small = SandboxProcess(scenario(args.curl_tenants, args.latency_ms))
    try:
        verify_times, curl_times = [], []
        for _ in range(args.curl_runs):  # interleaved, so both see the same machine
            verify_times.append(time_verify(small, fleet(args.curl_tenants)))
            curl_times.append(time_curl(small, args.curl_tenants))
    finally:
        small.stop()
    late = [readiness(3.0, 2.0) for _ in range(3)]
    starts = [time_help() for _ in range(9)]

    med = statistics.median
    rows = [
        (
            f"verify, {args.tenants} tenants",
            f"{med(big_times):.2f} s",
            f"min {min(big_times):.2f}, max {max(big_times):.2f}",
        ),
        (f"verify, {args.curl_tenants} tenants", f"{med(verify_times):.2f} s", ""),
        (f"curl loop, {args.curl_tenants} tenants", f"{med(curl_times):.2f} s", ""),
        ("curl loop / verify", f"{med(curl_times) / med(verify_times):.1f}x", "ratio of medians"),
        ("exit after last tenant ready (T=3 s, interval 2 s)", f"{med(late):.2f} s", "bound: 3.00 s"),
        ("start-up: `python -m verify --help`", f"{med(starts):.3f} s", "median of 9"),
    ]
    print(
        f"{args.latency_ms} ms per request, {os.cpu_count()} cores, medians of {args.runs} / {args.curl_runs} / 3 runs"
    )
    print("| measure | median | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
