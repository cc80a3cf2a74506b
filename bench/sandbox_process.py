"""The sandbox in a process of its own, for the benchmarks: a client timed in this process never shares
its interpreter (or its GIL) with the server it talks to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class SandboxProcess:
    """`python -m sandbox` with this scenario, until `stop`."""

    def __init__(self, scenario: dict[str, Any]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
        (self.dir / "scenario.json").write_text(json.dumps(scenario))  # JSON is YAML
        url_file = self.dir / "url"
        argv = [sys.executable, "-m", "sandbox", "--scenario", str(self.dir / "scenario.json")]
        self.proc = subprocess.Popen(
            [*argv, "--url-file", str(url_file)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        deadline = time.monotonic() + 30
        while not (url_file.exists() and url_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit("the sandbox did not start")
            time.sleep(0.05)
        self.url = url_file.read_text().strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/sandbox/state", timeout=10) as resp:  # noqa: S310 - loopback
            state: dict[str, Any] = json.load(resp)
        return state
