"""``python -m sandbox``: serve a simulated control plane, tenant fleet and forge until interrupted.

``python -m sandbox set`` and ``python -m sandbox forge`` change a running sandbox: a tenant's behaviour,
the branch head, the repository's Actions variables and the issue tracker's faults, to rehearse a recovery
or a superseded run. ``python -m sandbox issues`` prints the issues and comments a running sandbox holds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import textwrap
import threading
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .scenario import BEHAVIOURS, FAULTS, load_scenario, preset_names
from .server import FORGE_PATH, REDEPLOY_PATH, STATE_PATH, TENANTS_PATH, Sandbox

SHOW_SLUGS = 5
_SENTENCE_END = re.compile(r"(?<!\.)\.(?=\s+[A-Z])")


def first_sentence(text: str) -> str:
    """The first sentence of a description, on one line."""
    text = " ".join(text.split())
    match = _SENTENCE_END.search(text)
    return text[: match.end()] if match else text


def _presets() -> str:
    names = preset_names()
    width = max((len(n) for n in names), default=0)
    lines = []
    for name in names:
        try:
            description = first_sentence(load_scenario(name)["description"])
        except ValueError as exc:
            description = f"(broken: {exc})"
        lines.append(f"  {name:<{width}}  {description}")
    return "\n".join(lines)


EPILOG = """\
preset scenarios (--scenario NAME):
{presets}

A scenario file is YAML (see sandbox/scenario.py):
  tenants:        slugs, or {{slug, behaviour, ready_after, cp_verified}}; behaviours: {behaviours}
  fleet:          {{count, prefix, behaviour, ...}} generated tenants
  health_paths:   tenant paths that answer health (default [/healthz, /health]); buildinfo is /buildinfo
  control_plane:  {{fault, on: redeploy|dry_run|both, slow_seconds, times, missing, unproven}}
                  faults: {faults}
                  (missing: tenants left out of the rows by missing_tenant; unproven: tenants whose rows
                  lack verified_on_target under the unproven fault, default the missing list; times: how
                  many calls gateway_502 answers 502, default 1; `on` defaults to both for the scope faults)
  forge:          {{token, repository, branch, head, variables, variable_status,
                  after_calls: [{{calls: N, head: SHA}}, {{calls: N, variables: {{NAME: VALUE}}}}],
                  labels, issues: [{{title, body, labels, state, comments}}], pull_requests (N or a list),
                  issues_status, issue_write_status, issues_delay, new_label_status}}
  also:           token, latency_ms, old_sha, old_tag, deployed_tag, name, description

commands for a running sandbox (no token: it is a loopback simulator):
  python -m sandbox set --url URL --tenant SLUG --behaviour healthy
  python -m sandbox forge --url URL --head SHA --variable PROD_AUTO_DEPLOY_DISABLED=true
  python -m sandbox forge --url URL --issues-status 403     # every issue API call answers 403 (0: off)
  python -m sandbox issues --url URL                        # the issues and their comments
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="Serve a simulated control plane, tenant fleet and forge API (GitHub and Gitea) on\n"
        "loopback, for trying the rollout and verify steps without real infrastructure. Runs until\n"
        "Ctrl-C or SIGTERM.",
        epilog=EPILOG.format(
            presets=_presets(),
            behaviours=", ".join(BEHAVIOURS),
            faults=textwrap.fill(", ".join(FAULTS[1:]), width=74, subsequent_indent=" " * 26),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario", metavar="NAME_OR_FILE", help="a preset name (e.g. incident) or the path of a scenario YAML file"
    )
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--url-file", metavar="PATH", help="also write the base URL to this file once the sandbox is listening"
    )
    commands = parser.add_subparsers(dest="command", metavar="{set,forge,issues}", title="commands")
    change = commands.add_parser(
        "set",
        help="change a tenant's behaviour in a running sandbox",
        description="Change a tenant's behaviour "
        "in a running sandbox: e.g. make a wedged tenant healthy, so that its next redeploy lands.",
    )
    change.add_argument("--url", required=True, help="the sandbox's base URL (what it printed)")
    change.add_argument("--tenant", required=True, metavar="SLUG")
    change.add_argument("--behaviour", "--behavior", required=True, choices=BEHAVIOURS)
    forge = commands.add_parser(
        "forge",
        help="move the branch head or set variables in a running sandbox",
        description="Move the simulated forge's branch head or set/unset its repository Actions variables.",
    )
    forge.add_argument("--url", required=True, help="the sandbox's base URL (what it printed)")
    head = forge.add_mutually_exclusive_group()
    head.add_argument("--head", metavar="SHA", help="the branch's new head commit")
    head.add_argument("--unknown-head", action="store_true", help="make the branch unknown (reads answer 404)")
    forge.add_argument("--variable", action="append", default=[], metavar="NAME=VALUE", help="set a variable")
    forge.add_argument("--unset", action="append", default=[], metavar="NAME", help="unset a variable")
    for flag, what in (("--issues-status", "every issue API call"), ("--issue-write-status", "every issue API write")):
        forge.add_argument(flag, type=int, metavar="STATUS", help=f"the status {what} answers (0: none)")
    forge.add_argument(
        "--issues-delay", type=float, metavar="SECONDS", help="how long every issue API call waits before answering"
    )
    forge.set_defaults(subparser=forge)  # its usage errors show its own usage line
    issues = commands.add_parser(
        "issues",
        help="print the issues and comments of a running sandbox",
        description="Print the simulated forge's issues (open and closed), each with its labels, body and comments.",
    )
    issues.add_argument("--url", required=True, help="the sandbox's base URL (what it printed)")
    issues.add_argument("--pull-requests", action="store_true", help="list the pull requests too")
    issues.add_argument("--json", action="store_true", help="print them as JSON")
    return parser


def _names(slugs: list[str]) -> str:
    shown = ", ".join(str(s) for s in slugs[:SHOW_SLUGS])
    return shown + (f" and {len(slugs) - SHOW_SLUGS} more" if len(slugs) > SHOW_SLUGS else "")


def _describe(sb: Sandbox) -> list[str]:
    scenario = sb.scenario
    by_behaviour: dict[str, list[str]] = defaultdict(list)
    for tenant in scenario["tenants"]:
        by_behaviour[tenant["behaviour"]].append(tenant["slug"])
    lines = []
    title = scenario["name"] or "scenario"
    if scenario["description"]:
        lines += textwrap.wrap(f"{title}: {scenario['description']}", width=100)
    forge = scenario["forge"]
    lines += [
        f"  cp-url:              {sb.url}",
        f"  tenant-url-template: {sb.tenant_url_template}",
        f"  health paths:        {', '.join(scenario['health_paths'])} (buildinfo: /buildinfo)",
        f"  token:               export CP_TOKEN={sb.token}",
        f"  api-url:             {sb.github_api_url} (GitHub) or {sb.gitea_api_url} (Gitea)",
        f"  api-token:           {sb.forge_token}  (repository {sb.repository}, branch {sb.branch}, "
        f"head {forge['head'] or 'unknown'})",
        f"  tenants ({len(scenario['tenants'])}):",
    ]
    for behaviour, slugs in by_behaviour.items():
        note = ""
        if behaviour == "slow":
            ready = sorted({t["ready_after"] for t in scenario["tenants"] if t["behaviour"] == "slow"})
            note = f" (ready {'/'.join(f'{r:g}' for r in ready)} s after a redeploy)"
        elif behaviour == "stopped":
            note = " (not rollout candidates)"
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
        calls = {"redeploy": "real redeploy calls", "dry_run": "dry runs", "both": "every CP call"}[fault["on"]]
        lines.append(f"  control plane fault: {fault['fault']} on {calls}")
    if forge["variables"]:
        lines.append(f"  forge variables: {', '.join(f'{k}={v}' for k, v in forge['variables'].items())}")
    if forge["variable_status"] is not None:
        lines.append(f"  every variable read answers {forge['variable_status']}")
    if forge["issues"] or forge["pull_requests"]:
        lines.append(f"  forge issues: {len(forge['issues'])}, pull requests: {len(forge['pull_requests'])}")
    for key in ("issues_status", "issue_write_status", "new_label_status"):
        if forge[key] is not None:
            lines.append(f"  forge fault: {key} {forge[key]}")
    if forge["issues_delay"]:
        lines.append(f"  every issue API call waits {forge['issues_delay']:g} s")
    dry_run = '{"target_tag":"x","dry_run":true,"confirm":true}'
    lines += [
        f"  try:   curl -H \"Authorization: Bearer $CP_TOKEN\" -d '{dry_run}' {sb.url}{REDEPLOY_PATH}",
        f"  state: curl {sb.url}{STATE_PATH}",
        f"  fix:   python -m sandbox set --url {sb.url} --tenant SLUG --behaviour healthy",
        f"  issues: python -m sandbox issues --url {sb.url}",
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


def _post(url: str, doc: dict[str, Any]) -> int:
    """POST `doc` to a running sandbox and print its answer; 0 when it took the change."""
    if not url.startswith(("http://", "https://")):
        print(f"sandbox: --url must be an http:// URL, not {url!r}", file=sys.stderr)
        return 2
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
        url,
        data=json.dumps(doc).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the scheme is checked above
            print(json.dumps(json.loads(response.read()), indent=2))
            return 0
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        try:
            detail = json.loads(detail)["error"]
        except (ValueError, KeyError, TypeError):
            pass
        print(f"sandbox: {exc.code}: {detail}", file=sys.stderr)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"sandbox: cannot reach the sandbox at {url}: {exc}", file=sys.stderr)
    return 1


def _set(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + TENANTS_PATH + quote(args.tenant, safe="")
    return _post(url, {"behaviour": args.behaviour})


def _forge(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    doc: dict[str, Any] = {}
    if args.head is not None or args.unknown_head:
        doc["head"] = None if args.unknown_head else args.head
    variables: dict[str, str | None] = {}
    for item in args.variable:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--variable wants NAME=VALUE, not {item!r}")
        variables[name] = value
    for name in args.unset:
        variables[name] = None
    if variables:
        doc["variables"] = variables
    for name in ("issues_status", "issue_write_status"):
        status = getattr(args, name)
        if status is not None:
            doc[name] = status or None
    if args.issues_delay is not None:
        doc["issues_delay"] = args.issues_delay
    if not doc:
        parser.error("forge: give --head, --unknown-head, --variable, --unset or an issue fault")
    return _post(args.url.rstrip("/") + FORGE_PATH, doc)


def _indented(text: str, prefix: str = "    ") -> list[str]:
    return [prefix + line for line in (text.splitlines() or [""])]


def show_issues(issues: list[dict[str, Any]]) -> list[str]:
    """The issues as text: a heading line each (number, state, title, labels, address), body, comments."""
    lines: list[str] = []
    for issue in issues:
        kind = " (pull request)" if issue["pull_request"] else ""
        labels = f"  [{', '.join(issue['labels'])}]" if issue["labels"] else ""
        lines.append(f"#{issue['number']} {issue['state']}{kind}: {issue['title']}{labels}  {issue['html_url']}")
        lines += _indented(issue["body"])
        for comment in issue["comments"]:
            lines.append(f"  comment {comment['id']}:")
            lines += _indented(comment["body"])
    return lines or ["no issues"]


def _issues(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        print(f"sandbox: --url must be an http:// URL, not {args.url!r}", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(url + STATE_PATH, timeout=10) as response:  # noqa: S310 - the scheme is checked above
            issues = json.loads(response.read())["issues"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        print(f"sandbox: cannot read the issues of the sandbox at {url}: {exc}", file=sys.stderr)
        return 1
    shown = [issue for issue in issues if args.pull_requests or not issue["pull_request"]]
    print(json.dumps(shown, indent=2) if args.json else "\n".join(show_issues(shown)))
    return 0


def _serve(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "set":
        return _set(args)
    if args.command == "forge":
        return _forge(args, args.subparser)
    if args.command == "issues":
        return _issues(args)
    if not args.scenario:
        parser.error("--scenario is required (a preset name or a scenario file)")
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
