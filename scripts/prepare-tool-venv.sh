#!/usr/bin/env bash
# The action's "Prepare the Python tool environment" step: finds Python >= 3.10 and prepares the venv
# the later steps run in. The venv is keyed by the interpreter and the lock file's hash and lives
# outside the caller's checkout, so later runs on the runner reuse it. It is built in a temporary
# directory and renamed into place only when complete. Writes `state` (a new directory for this run)
# and `python` (the venv's interpreter) to GITHUB_OUTPUT.
#
# Cold start: the venv is made without pip (ensurepip alone takes seconds) and the base interpreter's
# own pip installs the hash-locked set into it, the way `pip --python VENV` does (pip >= 22.3) but
# without starting the base interpreter a second time. A base without such a pip falls back to
# ensurepip in the venv, then the venv's pip.
set -euo pipefail

action=${GITHUB_ACTION_PATH:?is not set: this script runs as a step of the action}
: "${GITHUB_OUTPUT:?is not set: this script runs as a step of the action}"

state=$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/fleet-rollout-XXXXXXXX")
echo "state=$state" >> "$GITHUB_OUTPUT"

# From here on the working directory is the action's own, so nothing in the caller's checkout can
# shadow a module that the probe or pip imports.
cd "$action"
requirements="$PWD/requirements.txt"

# One call per candidate: its version, then (when recent enough) the venv key (the interpreter's tag
# and the lock file's hash), its real path (past any shim, which costs a process per call), and the
# pip runner that `pip --python` uses (pip >= 22.3), when the base interpreter has one.
probe='import sys
print("%d.%d.%d" % tuple(sys.version_info[:3]))
if sys.version_info < (3, 10):
    sys.exit(1)
import hashlib, os
with open(sys.argv[1], "rb") as lock:
    print(sys.implementation.cache_tag + "-" + hashlib.sha256(lock.read()).hexdigest()[:16])
print(sys.executable)
runner = ""
try:
    import pip
    if tuple(int(part) for part in pip.__version__.split(".")[:2]) >= (22, 3):
        runner = os.path.join(os.path.dirname(os.path.abspath(pip.__file__)), "__pip-runner__.py")
except Exception:
    pass
print(runner if runner and os.path.isfile(runner) else "")'
found=""
py=""
for candidate in python3 python; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  answer=""
  if answer=$("$path" -c "$probe" "$requirements" 2>/dev/null); then
    py=$path
    break
  fi
  found="$found $path (${answer:-does not run})"
done
if [ -z "$py" ]; then
  echo "::error::fleet-rollout needs Python >= 3.10 on PATH as python3 or python; found:${found:- neither}. Add actions/setup-python before this action."
  exit 1
fi
# $(...) drops trailing empty lines: the last two may be missing.
executable=""
runner=""
{ read -r version; read -r key; read -r executable || true; read -r runner || true; } <<< "$answer"
py=${executable:-$py}
root="${RUNNER_TOOL_CACHE:-$HOME/.cache}/fleet-rollout"
venv="$root/venv-$key"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c '' 2>/dev/null; then
  echo "fleet-rollout: Python $version at $py; reusing $venv"
else
  echo "fleet-rollout: Python $version at $py; building $venv"
  mkdir -p "$root"
  if [ -e "$venv" ]; then
    # Unusable (its base interpreter is gone): set it aside and build anew.
    stale=$(mktemp -d "$root/.stale-XXXXXXXX")
    { mv "$venv" "$stale/" && rm -rf "$stale"; } || true
  fi
  build=$(mktemp -d "$root/.build-XXXXXXXX")
  trap 'rm -rf "$build"' EXIT
  if ! out=$("$py" -m venv --without-pip "$build" 2>&1); then
    printf '%s\n' "$out"
    echo "::error::$py -m venv failed: on Debian/Ubuntu install python3-venv, or add actions/setup-python before this action."
    exit 1
  fi
  # No colour: a runner shows pip's escape codes as text, and a trailing reset code would glue itself to
  # the next workflow command (`\x1b[0m::endgroup::`), which the runner then ignores.
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_COLOR=1
  if [ -n "$runner" ]; then
    pip=("$build/bin/python" "$runner")
  else
    echo "fleet-rollout: $py has no pip >= 22.3; installing pip into the venv with ensurepip"
    if ! out=$("$build/bin/python" -m ensurepip 2>&1); then
      printf '%s\n' "$out"
      echo "::error::$py has no pip >= 22.3 and ensurepip failed: on Debian/Ubuntu install python3-venv, or add actions/setup-python before this action."
      exit 1
    fi
    pip=("$build/bin/python" -m pip)
  fi
  # --no-compile: compiling every installed module costs about 1 s; the first run compiles only the
  # modules it imports (about 0.25 s) and writes them into the venv for the runs after it.
  echo "::group::pip install --require-hashes --no-deps -r requirements.txt"
  # pip's output is captured and printed with a final newline, so each workflow command after it starts a
  # fresh line whatever pip's last line was.
  status=0
  out=$("${pip[@]}" install --no-color --quiet --no-input --no-compile --require-hashes --no-deps -r "$requirements" 2>&1) ||
    status=$?
  if [ -n "$out" ]; then printf '%s\n' "$out"; fi
  echo "::endgroup::"
  if [ "$status" -ne 0 ]; then
    echo "::error::pip could not install the action's hash-locked requirements (its message is above); the first run on a runner needs PyPI or the index PIP_INDEX_URL names"
    exit 1
  fi
  # rename(2) refuses a non-empty target: when another job got there first, its venv is kept.
  if ! "$py" -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' "$build" "$venv" 2>/dev/null &&
    ! "$venv/bin/python" -c '' 2>/dev/null; then
    echo "::error::could not install the tool venv at $venv"
    exit 1
  fi
fi
echo "python=$venv/bin/python" >> "$GITHUB_OUTPUT"
