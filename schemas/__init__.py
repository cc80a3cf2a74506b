"""The contract's JSON Schemas (2020-12), loaded by name and resolved against each other."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

NAMES = ("slug", "redeploy-request", "redeploy-response", "buildinfo", "report")


@cache
def load(name: str) -> dict[str, Any]:
    """The schema document ``schemas/<name>.schema.json``."""
    schema: dict[str, Any] = json.loads((HERE / f"{name}.schema.json").read_text(encoding="utf-8"))
    return schema
