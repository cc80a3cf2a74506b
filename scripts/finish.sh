#!/usr/bin/env bash
# The action's last step, run always: the steps' summaries go into the job's one summary (runners keep
# only the last inner step's), then every output is read from the run's report by `fleet.finish`, which
# decides nothing. With no report to read (the rollout never started, or no Python was prepared) the
# outputs say ok=false. Under act and act_runner the outputs the last inner step wrote override the
# action's mapped outputs, so this step writes all of them.
set -euo pipefail
summary=${GITHUB_STEP_SUMMARY:-/dev/null}
if [ -n "${FLEET_STATE:-}" ] && [ -d "$FLEET_STATE" ]; then
  for part in "$FLEET_STATE"/*.md; do
    if [ -s "$part" ]; then cat "$part" >> "$summary"; fi
  done
  rm -rf "$FLEET_STATE"
fi
case "${ROLLOUT_OUTCOME:-}" in
  success | failure | cancelled) ;; # it ran: its own summary part says how it ended
  *) echo "### Fleet rollout did not run: the log of the step that failed before it says why" >> "$summary" ;;
esac

report=${FLEET_REPORT:-}
report=${report//[$'\r\n']/}
if [ -n "${FLEET_PYTHON:-}" ] && [ -n "$report" ]; then
  cd "$GITHUB_ACTION_PATH"
  if PYTHONPATH="$GITHUB_ACTION_PATH" "$FLEET_PYTHON" -m fleet.finish "$report" "${VERIFY_OUTCOME:-}"; then
    exit 0
  fi
fi
printf '%s\n' ok=false superseded= 'stragglers=[]' quarantined-count=0 verified-count= failed-count= \
  "report-path=$report" 'chronic=[]' >> "$GITHUB_OUTPUT"
