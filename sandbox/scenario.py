"""Sandbox scenarios: loading, validation and defaults, and the build a tenant serves for a tag."""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

PRESETS_DIR = Path(__file__).resolve().parent / "scenarios"

BEHAVIOURS = ("healthy", "wedged", "slow", "stale", "flapping", "unreachable")
FAULTS = ("none", "http_500", "html_error", "slow", "missing_tenant", "ok_despite_unverified")
FAULT_TARGETS = ("redeploy", "list", "both")

DEFAULT_TOKEN = "sandbox-token"  # noqa: S105 - a published token for a loopback simulator
DEFAULT_OLD_TAG = "old-build"
DEFAULT_OLD_SHA = hashlib.sha1(b"old-build", usedforsecurity=False).hexdigest()
DEFAULT_READY_AFTER = 5.0
DEFAULT_SLOW_SECONDS = 3.0
DEFAULT_FLEET_PREFIX = "tenant-"

TOP_KEYS = (
    "name",
    "description",
    "token",
    "latency_ms",
    "old_sha",
    "old_tag",
    "deployed_tag",
    "tenants",
    "fleet",
    "control_plane",
)
TENANT_KEYS = ("slug", "behaviour", "ready_after", "cp_verified")
FLEET_KEYS = ("count", "prefix", "behaviour", "ready_after", "cp_verified")
CP_KEYS = ("fault", "on", "slow_seconds", "missing")

_HEX_TAIL = re.compile(r"[0-9a-fA-F]{7,40}")
_SHA = re.compile(r"[0-9a-fA-F]{7,64}")


def sha_for_tag(tag: str) -> str:
    """The 40-hex git sha a tenant serves after a redeploy to `tag`.

    When the part of the tag after its last '-' or ':' (``sha-0a1b2c3``, ``app:0a1b2c3``, or the
    whole tag) is 7 to 40 hex digits, the sha starts with those digits, lowercased, and is padded to
    40 with the hex of sha1(tag); so ``sha-<40 hex>`` serves exactly that sha. Any other tag serves
    sha1(tag).
    """
    digest = hashlib.sha1(tag.encode("utf-8"), usedforsecurity=False).hexdigest()
    tail = re.split(r"[-:]", tag)[-1]
    if _HEX_TAIL.fullmatch(tail):
        return (tail.lower() + digest)[:40]
    return digest


def preset_names() -> list[str]:
    """The scenarios shipped in ``sandbox/scenarios/``, by name."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yml"))


class _Checker:
    """Collects the source name so every error says which scenario and which field is wrong."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> None:
        raise ValueError(f"bad scenario {self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping, not {type(value).__name__}")
        unknown = [k for k in value if k not in allowed]
        if unknown:
            self.fail(where, f"unknown key {unknown[0]!r} (allowed: {', '.join(allowed)})")
        return value

    def number(self, value: Any, where: str, default: float) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, f"must be a number, not {value!r}")
        if value < 0:
            self.fail(where, f"must be >= 0, not {value!r}")
        return value

    def text(self, value: Any, where: str, default: str | None, *, empty: bool = False) -> str | None:
        if value is None:
            return default
        if not isinstance(value, str):
            hint = " (quote it in YAML)" if isinstance(value, (int, float)) else ""
            self.fail(where, f"must be a string, not {value!r}{hint}")
        if not value and not empty:
            self.fail(where, "must not be empty")
        return value

    def choice(self, value: Any, where: str, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if value not in choices:
            self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def flag(self, value: Any, where: str) -> bool | None:
        if value is not None and not isinstance(value, bool):
            self.fail(where, f"must be true, false or null, not {value!r}")
        return value

    def tenant(self, value: Any, where: str, defaults: dict | None = None) -> dict:
        """One tenant entry. The slug is served as given, even when it is not a valid slug."""
        if isinstance(value, str):
            value = {"slug": value}
        self.mapping(value, where, TENANT_KEYS)
        if "slug" not in value:
            self.fail(where, "is missing 'slug'")
        defaults = defaults or {}
        behaviour = value.get("behaviour", defaults.get("behaviour"))
        return {
            "slug": value["slug"],
            "behaviour": self.choice(behaviour, f"{where}.behaviour", BEHAVIOURS, "healthy"),
            "ready_after": self.number(
                value.get("ready_after", defaults.get("ready_after")),
                f"{where}.ready_after",
                DEFAULT_READY_AFTER,
            ),
            "cp_verified": self.flag(value.get("cp_verified", defaults.get("cp_verified")), f"{where}.cp_verified"),
        }


def normalize(doc: Any, source: str = "scenario", name: str = "") -> dict:
    """A scenario document checked and completed with defaults; raises ValueError naming the problem.

    Generated ``fleet`` tenants are expanded into ``tenants``, so the result can be normalized again.
    """
    check = _Checker(source)
    if doc is None:
        doc = {}
    check.mapping(doc, "(top level)", TOP_KEYS)

    old_sha = check.text(doc.get("old_sha"), "old_sha", DEFAULT_OLD_SHA)
    if not _SHA.fullmatch(old_sha):
        check.fail("old_sha", f"must be 7 to 64 hex digits, not {old_sha!r}")

    raw_tenants = doc.get("tenants") or []
    if not isinstance(raw_tenants, list):
        check.fail("tenants", "must be a list")
    tenants = [check.tenant(t, f"tenants[{i}]") for i, t in enumerate(raw_tenants)]

    fleet = doc.get("fleet")
    if fleet is not None:
        check.mapping(fleet, "fleet", FLEET_KEYS)
        count = fleet.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            check.fail("fleet.count", f"must be an integer >= 0, not {count!r}")
        prefix = check.text(fleet.get("prefix"), "fleet.prefix", DEFAULT_FLEET_PREFIX, empty=True)
        width = max(4, len(str(count)))
        for i in range(1, count + 1):
            tenants.append(check.tenant({"slug": f"{prefix}{i:0{width}d}"}, "fleet", fleet))

    cp = doc.get("control_plane") or {}
    check.mapping(cp, "control_plane", CP_KEYS)
    missing = cp.get("missing") or []
    if not isinstance(missing, list) or not all(isinstance(m, str) for m in missing):
        check.fail("control_plane.missing", "must be a list of slugs")
    known = {t["slug"] for t in tenants if isinstance(t["slug"], str)}
    for slug in missing:
        if slug not in known:
            check.fail("control_plane.missing", f"{slug!r} is not a tenant of this scenario")

    return {
        "name": check.text(doc.get("name"), "name", name, empty=True),
        "description": check.text(doc.get("description"), "description", "", empty=True),
        "token": check.text(doc.get("token"), "token", DEFAULT_TOKEN),
        "latency_ms": check.number(doc.get("latency_ms"), "latency_ms", 0),
        "old_sha": old_sha.lower(),
        "old_tag": check.text(doc.get("old_tag"), "old_tag", DEFAULT_OLD_TAG),
        "deployed_tag": check.text(doc.get("deployed_tag"), "deployed_tag", None),
        "tenants": tenants,
        "control_plane": {
            "fault": check.choice(cp.get("fault"), "control_plane.fault", FAULTS, "none"),
            "on": check.choice(cp.get("on"), "control_plane.on", FAULT_TARGETS, "redeploy"),
            "slow_seconds": check.number(cp.get("slow_seconds"), "control_plane.slow_seconds", DEFAULT_SLOW_SECONDS),
            "missing": list(missing),
        },
    }


def load_scenario(scenario: str | os.PathLike | dict) -> dict:
    """A scenario, validated and with defaults filled.

    `scenario` is a preset name (``incident``, see `preset_names`), a path to a YAML file, or an
    already parsed document. Raises ValueError with a message naming the problem.
    """
    if isinstance(scenario, dict):
        return normalize(scenario, "scenario", str(scenario.get("name") or ""))
    text = os.fspath(scenario)
    path = Path(text)
    if not path.is_file():
        stem = text[: -len(path.suffix)] if path.suffix in (".yml", ".yaml") else text
        preset = PRESETS_DIR / f"{stem}.yml"
        if os.sep in text or "/" in text or not preset.is_file():
            raise ValueError(
                f"unknown scenario {text!r}: no such file, and not a preset (presets: {', '.join(preset_names())})"
            )
        path = preset
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"bad scenario {path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"bad scenario {path}: not valid YAML: {exc}") from None
    return normalize(doc, str(path), path.stem)
