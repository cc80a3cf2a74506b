#!/usr/bin/env bash
# Runs one step of the action (`rollout` or `verify`) with the tool venv's Python; further arguments go
# to the step as flags. Inputs arrive as one JSON object in FLEET_INPUTS, the tokens included, never as
# arguments. The working directory is the action's own, so nothing in the caller's checkout can shadow
# its packages; FLEET_WORKSPACE keeps the directory the step started in, where a relative file input
# (ca-bundle) is found. The step's summary goes to a file of its own in FLEET_STATE: the action's last
# step writes them all, since runners keep only the last inner step's.
# Python replaces this shell (exec), as the step's `exec bash` replaced the runner's: a cancelled job's
# SIGINT and SIGTERM go to the one PID the runner started, and Python must be that process.
set -euo pipefail
step=$1
order=$2
shift 2
export FLEET_WORKSPACE="$PWD"
cd "$GITHUB_ACTION_PATH"
GITHUB_STEP_SUMMARY="$FLEET_STATE/$order-$step.md" PYTHONPATH="$GITHUB_ACTION_PATH" \
  exec "$FLEET_PYTHON" -m "$step" "$@"
