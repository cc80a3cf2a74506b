"""``python -m sandbox``: serve a simulated control plane and tenant fleet until interrupted."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import textwrap
import threading
from collections import defaultdict
from pathlib import Path

from .scenario import preset_names
from .server import STATE_PATH, Sandbox

SHOW_SLUGS = 5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Serve a simulated control plane and tenant fleet on loopback, for trying the "
        "rollout and verify steps without real infrastructure. Runs until Ctrl-C or SIGTERM.",
        epilog=f"Preset scenarios: {', '.join(preset_names())}. A scenario file is YAML with "
        "'tenants' (slug, behaviour: healthy|wedged|slow|stale|flapping|unreachable), and optionally "
        "'fleet', 'latency_ms', 'deployed_tag', 'token' and 'control_plane' faults.",
    )
    parser.add_argument(
        "--scenario",
        required=True,
        metavar="NAME_OR_FILE",
        help="a preset name (e.g. incident) or the path of a scenario YAML file",
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--url-file", metavar="PATH", help="also write the base URL to this file once the sandbox is listening"
    )
    return parser


def _names(slugs: list) -> str:
    shown = ", ".join(str(s) for s in slugs[:SHOW_SLUGS])
    return shown + (f" and {len(slugs) - SHOW_SLUGS} more" if len(slugs) > SHOW_SLUGS else "")


def _describe(sb: Sandbox) -> list[str]:
    scenario = sb.scenario
    by_behaviour: dict[str, list] = defaultdict(list)
    for tenant in scenario["tenants"]:
        by_behaviour[tenant["behaviour"]].append(tenant["slug"])
    lines = []
    title = scenario["name"] or "scenario"
    if scenario["description"]:
        lines += textwrap.wrap(f"{title}: {scenario['description']}", width=100)
    lines += [
        f"  cp-url:              {sb.url}",
        f"  tenant-url-template: {sb.tenant_url_template}",
        f"  token:               export CP_TOKEN={sb.token}",
        f"  tenants ({len(scenario['tenants'])}):",
    ]
    for behaviour, slugs in by_behaviour.items():
        note = ""
        if behaviour == "slow":
            ready = sorted({t["ready_after"] for t in scenario["tenants"] if t["behaviour"] == "slow"})
            note = f" (ready {'/'.join(f'{r:g}' for r in ready)} s after a redeploy)"
        lines.append(f"    {len(slugs):>5} {behaviour}{note}: {_names(slugs)}")
    overrides = [t["slug"] for t in scenario["tenants"] if t["cp_verified"] is not None]
    if overrides:
        lines.append(f"  control plane misreports verification for: {_names(overrides)}")
    if scenario["deployed_tag"]:
        lines.append(f"  every tenant starts redeployed to tag {scenario['deployed_tag']}")
    if scenario["latency_ms"]:
        lines.append(f"  every request is delayed by {scenario['latency_ms']:g} ms")
    fault = scenario["control_plane"]
    if fault["fault"] != "none":
        calls = {"redeploy": "redeploy calls", "list": "fleet listings", "both": "all CP calls"}[fault["on"]]
        lines.append(f"  control plane fault: {fault['fault']} on {calls}")
    lines += [
        f'  try:   curl -H "Authorization: Bearer $CP_TOKEN" {sb.url}/cp/admin/tenants',
        f"  state: curl {sb.url}{STATE_PATH}",
        "Stop with Ctrl-C.",
    ]
    return lines


def _write_url(path: str, url: str) -> None:
    """Write atomically, so a reader polling for the file never sees it half written."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".url-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(url)
    os.replace(tmp, target)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        sb = Sandbox(args.scenario, port=args.port, host=args.host)
    except ValueError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    try:
        sb.start()
    except OSError as exc:
        print(f"sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        print(f"sandbox listening on {sb.url}", flush=True)
        if args.url_file:
            _write_url(args.url_file, sb.url)
        print("\n".join(_describe(sb)), flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sb.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        print("sandbox stopped", flush=True)
    except BrokenPipeError:
        pass  # nobody is reading any more; stopping cleanly is what matters
    return 0


if __name__ == "__main__":
    sys.exit(main())
