"""Sandbox scenarios: loading, validation and defaults, and the build a tenant serves for a tag.

A scenario is a YAML mapping (every key optional):

- ``tenants``: slugs, or ``{slug, behaviour, ready_after, cp_verified}`` mappings. A behaviour says what a
  tenant does after a redeploy: ``healthy``, ``wedged`` (health 503, keeps its build, the CP reports it
  unverified), ``slow`` (comes up ``ready_after`` seconds later), ``stale`` (healthy on its old build, the
  CP reports it verified), ``flapping`` (health alternates), ``unreachable`` (drops every connection), or
  ``stopped`` (not a rollout candidate: left out of fleet-wide calls and dry runs; health 503 always).
- ``fleet``: ``{count, prefix, behaviour, ready_after, cp_verified}``, generated tenants appended.
- ``token`` (the CP token), ``latency_ms``, ``old_sha``/``old_tag`` (the build every tenant starts on),
  ``deployed_tag`` (start every tenant already redeployed to this tag).
- ``health_paths``: the tenant paths that answer health (default ``/healthz`` and ``/health``).
- ``control_plane``: ``fault`` (see `FAULTS`), ``on`` (``redeploy``: real calls, ``dry_run``: dry runs,
  ``both``; default ``redeploy``, but ``both`` for ``ignores_scope`` and ``rejects_scope``),
  ``slow_seconds`` (for ``slow``), ``times`` (for ``gateway_502``: how many calls get the 502, default 1),
  ``missing`` (for ``missing_tenant``: tenants redeployed but left out of the rows), ``unproven`` (for
  ``unproven``: tenants whose rows have no ``verified_on_target``; ``missing`` is used when it is empty).
- ``forge``: the simulated GitHub/Gitea API, ``{token, repository, branch, head, variables,
  variable_status, after_calls}``; ``after_calls`` is a list of ``{calls: N, head: SHA}`` and/or
  ``{calls: N, variables: {NAME: VALUE}}``, applied when the N-th real redeploy call has been handled.
  Its issue tracker (see ``sandbox/tracker.py``): ``labels`` (names, or ``{name, color, description}``),
  ``issues`` (``{title, body, labels, state, comments}``: ``labels`` names, created when missing,
  ``state`` open or closed, ``comments`` texts), ``pull_requests`` (the same mappings, or a count N: N
  open pull requests labelled ``fleet-quarantine``, so a client listing that label meets them), and its
  faults: ``issues_status`` (every issue, comment and label call answers it), ``issue_write_status``
  (every write does), ``issues_delay`` (seconds every such call waits before answering; a write is done
  first) and ``new_label_status`` (a label created, by name on a GitHub issue or by a label create,
  answers it: a caller without push access).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn, cast

import yaml

PRESETS_DIR = Path(__file__).resolve().parent / "scenarios"

BEHAVIOURS = ("healthy", "wedged", "slow", "stale", "flapping", "unreachable", "stopped")
FAULTS = (
    "none",
    "http_500",
    "html_error",
    "slow",
    "missing_tenant",
    "ok_despite_unverified",
    "ignores_scope",
    "rejects_scope",
    "gateway_502",
    "no_stragglers_key",
    "unproven",
)
FAULT_TARGETS = ("redeploy", "dry_run", "both")
SCOPE_FAULTS = ("ignores_scope", "rejects_scope")  # a CP either knows only_slugs or not: `on` defaults to both

DEFAULT_TOKEN = "sandbox-token"  # noqa: S105 - a published token for a loopback simulator
DEFAULT_FORGE_TOKEN = "forge-token"  # noqa: S105 - likewise
DEFAULT_REPOSITORY = "acme/platform"
DEFAULT_BRANCH = "main"
DEFAULT_OLD_TAG = "old-build"
DEFAULT_OLD_SHA = hashlib.sha1(b"old-build", usedforsecurity=False).hexdigest()
DEFAULT_READY_AFTER = 5.0
DEFAULT_SLOW_SECONDS = 3.0
DEFAULT_FLEET_PREFIX = "tenant-"
DEFAULT_HEALTH_PATHS = ("/healthz", "/health")
BUILDINFO_PATH = "/buildinfo"

TOP_KEYS = (
    "name",
    "description",
    "token",
    "latency_ms",
    "old_sha",
    "old_tag",
    "deployed_tag",
    "health_paths",
    "tenants",
    "fleet",
    "control_plane",
    "forge",
)
TENANT_KEYS = ("slug", "behaviour", "ready_after", "cp_verified")
FLEET_KEYS = ("count", "prefix", "behaviour", "ready_after", "cp_verified")
CP_KEYS = ("fault", "on", "slow_seconds", "times", "missing", "unproven")
FORGE_KEYS = (
    "token",
    "repository",
    "branch",
    "head",
    "variables",
    "variable_status",
    "after_calls",
    "labels",
    "issues",
    "pull_requests",
    "issues_status",
    "issue_write_status",
    "issues_delay",
    "new_label_status",
)
AFTER_CALL_KEYS = ("calls", "head", "variables")
ISSUE_KEYS = ("title", "body", "labels", "state", "comments")
LABEL_KEYS = ("name", "color", "description")
ISSUE_STATES = ("open", "closed")
PULL_REQUEST_LABEL = "fleet-quarantine"  # the quarantine ledger's default label
DEFAULT_LABEL_COLOR = "ededed"

_STATUSES = frozenset(s.value for s in HTTPStatus if 200 <= s.value <= 599)
_HEX_TAIL = re.compile(r"[0-9a-fA-F]{7,40}")
_SHA = re.compile(r"[0-9a-fA-F]{7,64}")
_SEGMENT = re.compile(r"[^/?#\s]+")
_COLOR = re.compile(r"#?[0-9a-fA-F]{6}")


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

    def fail(self, where: str, message: str) -> NoReturn:
        raise ValueError(f"bad scenario {self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
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

    def integer(self, value: Any, where: str, default: int | None, low: int, high: int | None = None) -> int | None:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"from {low} to {high}"
            self.fail(where, f"must be an integer {bounds}, not {value!r}")
        return value

    def status(self, value: Any, where: str) -> int | None:
        """An HTTP status to answer with, or None."""
        if value is not None and value not in _STATUSES:
            self.fail(where, f"must be an HTTP status from 200 to 599 (e.g. 403, 500) or null, not {value!r}")
        return cast("int | None", value)

    def text(self, value: Any, where: str, default: str | None, *, empty: bool = False) -> str | None:
        if value is None:
            return default
        if not isinstance(value, str):
            hint = " (quote it in YAML)" if isinstance(value, (bool, int, float)) else ""
            self.fail(where, f"must be a string, not {value!r}{hint}")
        if not value and not empty:
            self.fail(where, "must not be empty")
        return value

    def choice(self, value: Any, where: str, choices: tuple[str, ...], default: str, hint: str = "") -> str:
        if value is None:
            return default
        if value not in choices:
            self.fail(where, f"{value!r} is not one of {', '.join(choices)}{hint}")
        return cast(str, value)

    def flag(self, value: Any, where: str) -> bool | None:
        if value is not None and not isinstance(value, bool):
            self.fail(where, f"must be true, false or null, not {value!r}")
        return value

    def slugs(self, value: Any, where: str, known: set[str]) -> list[str]:
        value = value or []
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            self.fail(where, "must be a list of slugs")
        for slug in value:
            if slug not in known:
                self.fail(where, f"{slug!r} is not a tenant of this scenario")
        return list(value)

    def variables(self, value: Any, where: str, *, unset: bool) -> dict[str, str | None]:
        """NAME -> string value; with `unset`, a null value means "delete this variable"."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping of NAME: value, not {type(value).__name__}")
        result: dict[str, str | None] = {}
        for name, item in value.items():
            if not isinstance(name, str) or not _SEGMENT.fullmatch(name):
                self.fail(where, f"bad variable name {name!r}")
            if item is None and unset:
                result[name] = None
            else:
                result[name] = self.text(item, f"{where}.{name}", None, empty=True)
                if item is None:
                    self.fail(f"{where}.{name}", "must be a string (leave the variable out to leave it unset)")
        return result

    def tenant(self, value: Any, where: str, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
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

    def health_paths(self, value: Any) -> list[str]:
        if value is None:
            return list(DEFAULT_HEALTH_PATHS)
        if not isinstance(value, list) or not value:
            self.fail("health_paths", "must be a non-empty list of paths such as /health")
        for path in value:
            if (
                not isinstance(path, str)
                or not path.startswith("/")
                or len(path) < 2
                or not all(_SEGMENT.fullmatch(part) for part in path[1:].split("/"))
            ):
                self.fail("health_paths", f"{path!r} is not a path such as /health")
            if path == BUILDINFO_PATH:
                self.fail("health_paths", f"{BUILDINFO_PATH} answers buildinfo, not health")
        if len(set(value)) != len(value):
            self.fail("health_paths", "names a path twice")
        return list(value)

    def forge(self, value: Any) -> dict[str, Any]:
        value = value or {}
        self.mapping(value, "forge", FORGE_KEYS)
        repository = self.text(value.get("repository"), "forge.repository", DEFAULT_REPOSITORY)
        owner, _, repo = str(repository).partition("/")
        if not _SEGMENT.fullmatch(owner) or not _SEGMENT.fullmatch(repo):
            self.fail("forge.repository", f"must be owner/name, not {repository!r}")
        branch = self.text(value.get("branch"), "forge.branch", DEFAULT_BRANCH)
        if not _SEGMENT.fullmatch(str(branch)):
            self.fail("forge.branch", f"must be one path segment (no '/'), not {branch!r}")
        steps = value.get("after_calls") or []
        if not isinstance(steps, list):
            self.fail("forge.after_calls", "must be a list of {calls: N, head: SHA} / {calls: N, variables: {...}}")
        after: list[dict[str, Any]] = []
        for i, step in enumerate(steps):
            where = f"forge.after_calls[{i}]"
            self.mapping(step, where, AFTER_CALL_KEYS)
            if "head" not in step and "variables" not in step:
                self.fail(where, "names neither 'head' nor 'variables'")
            entry: dict[str, Any] = {"calls": self.integer(step.get("calls"), f"{where}.calls", None, 1)}
            if entry["calls"] is None:
                self.fail(f"{where}.calls", "is required (the number of real redeploy calls)")
            if "head" in step:
                entry["head"] = self.text(step["head"], f"{where}.head", None)
            if "variables" in step:
                entry["variables"] = self.variables(step["variables"], f"{where}.variables", unset=True)
            after.append(entry)
        return {
            "token": self.text(value.get("token"), "forge.token", DEFAULT_FORGE_TOKEN),
            "repository": repository,
            "branch": branch,
            "head": self.text(value.get("head"), "forge.head", None),
            "variables": self.variables(value.get("variables"), "forge.variables", unset=False),
            "variable_status": self.status(value.get("variable_status"), "forge.variable_status"),
            "after_calls": after,
            **self.tracker(value),
        }

    def texts(self, value: Any, where: str) -> list[str]:
        value = value or []
        if not isinstance(value, list):
            self.fail(where, "must be a list of strings")
        return [str(self.text(item, f"{where}[{i}]", None)) for i, item in enumerate(value)]

    def label(self, value: Any, where: str) -> dict[str, Any]:
        if isinstance(value, str):
            value = {"name": value}
        self.mapping(value, where, LABEL_KEYS)
        color = self.text(value.get("color"), f"{where}.color", DEFAULT_LABEL_COLOR)
        if not _COLOR.fullmatch(str(color)):
            self.fail(f"{where}.color", f"must be 6 hex digits (#rrggbb), not {color!r}")
        return {
            "name": self.text(value.get("name"), f"{where}.name", None) or self.fail(where, "is missing 'name'"),
            "color": color,
            "description": self.text(value.get("description"), f"{where}.description", "", empty=True),
        }

    def issue(self, value: Any, where: str) -> dict[str, Any]:
        self.mapping(value, where, ISSUE_KEYS)
        return {
            "title": self.text(value.get("title"), f"{where}.title", None) or self.fail(where, "is missing 'title'"),
            "body": self.text(value.get("body"), f"{where}.body", "", empty=True),
            "labels": self.texts(value.get("labels"), f"{where}.labels"),
            "state": self.choice(value.get("state"), f"{where}.state", ISSUE_STATES, "open"),
            "comments": self.texts(value.get("comments"), f"{where}.comments"),
        }

    def issues(self, value: Any, where: str) -> list[dict[str, Any]]:
        value = value or []
        if not isinstance(value, list):
            self.fail(where, "must be a list of {title, body, labels, state, comments}")
        return [self.issue(item, f"{where}[{i}]") for i, item in enumerate(value)]

    def tracker(self, value: dict[str, Any]) -> dict[str, Any]:
        """The issue tracker's keys; a count of pull requests is expanded, so the result normalizes again."""
        labels = value.get("labels") or []
        if not isinstance(labels, list):
            self.fail("forge.labels", "must be a list of names or {name, color, description}")
        pulls = value.get("pull_requests")
        if isinstance(pulls, int) and not isinstance(pulls, bool):
            count = self.integer(pulls, "forge.pull_requests", 0, 0)
            pulls = [{"title": f"pull request {n}", "labels": [PULL_REQUEST_LABEL]} for n in range(1, (count or 0) + 1)]
        delay = self.number(value.get("issues_delay"), "forge.issues_delay", 0)
        named = [self.label(item, f"forge.labels[{i}]") for i, item in enumerate(labels)]
        if len({label["name"] for label in named}) != len(named):
            self.fail("forge.labels", "names a label twice")
        return {
            "labels": named,
            "issues": self.issues(value.get("issues"), "forge.issues"),
            "pull_requests": self.issues(pulls, "forge.pull_requests"),
            "issues_status": self.status(value.get("issues_status"), "forge.issues_status"),
            "issue_write_status": self.status(value.get("issue_write_status"), "forge.issue_write_status"),
            "issues_delay": delay,
            "new_label_status": self.status(value.get("new_label_status"), "forge.new_label_status"),
        }


def normalize(doc: Any, source: str = "scenario", name: str = "") -> dict[str, Any]:
    """A scenario document checked and completed with defaults; raises ValueError naming the problem.

    Generated ``fleet`` tenants are expanded into ``tenants``, so the result can be normalized again.
    """
    check = _Checker(source)
    if doc is None:
        doc = {}
    check.mapping(doc, "(top level)", TOP_KEYS)

    old_sha = check.text(doc.get("old_sha"), "old_sha", DEFAULT_OLD_SHA)
    if not _SHA.fullmatch(str(old_sha)):
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
    if isinstance(cp, dict) and True in cp and "on" not in cp:
        cp = {("on" if key is True else key): value for key, value in cp.items()}  # YAML 1.1 reads `on` as true
    check.mapping(cp, "control_plane", CP_KEYS)
    known = {t["slug"] for t in tenants if isinstance(t["slug"], str)}
    fault = check.choice(cp.get("fault"), "control_plane.fault", FAULTS, "none")
    gone = " ('list' is gone: there is no listing endpoint, the fleet is enumerated by a dry run)"
    on = check.choice(
        cp.get("on"),
        "control_plane.on",
        FAULT_TARGETS,
        "both" if fault in SCOPE_FAULTS else "redeploy",
        gone if cp.get("on") == "list" else "",
    )

    return {
        "name": check.text(doc.get("name"), "name", name, empty=True),
        "description": check.text(doc.get("description"), "description", "", empty=True),
        "token": check.text(doc.get("token"), "token", DEFAULT_TOKEN),
        "latency_ms": check.number(doc.get("latency_ms"), "latency_ms", 0),
        "old_sha": str(old_sha).lower(),
        "old_tag": check.text(doc.get("old_tag"), "old_tag", DEFAULT_OLD_TAG),
        "deployed_tag": check.text(doc.get("deployed_tag"), "deployed_tag", None),
        "health_paths": check.health_paths(doc.get("health_paths")),
        "tenants": tenants,
        "control_plane": {
            "fault": fault,
            "on": on,
            "slow_seconds": check.number(cp.get("slow_seconds"), "control_plane.slow_seconds", DEFAULT_SLOW_SECONDS),
            "times": check.integer(cp.get("times"), "control_plane.times", 1, 1),
            "missing": check.slugs(cp.get("missing"), "control_plane.missing", known),
            "unproven": check.slugs(cp.get("unproven"), "control_plane.unproven", known),
        },
        "forge": check.forge(doc.get("forge")),
    }


def load_scenario(scenario: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    """A scenario, validated and with defaults filled.

    `scenario` is a preset name (``incident``, see `preset_names`), a path to a YAML file (or JSON, which
    is YAML), or an already parsed document. Raises ValueError with a message naming the problem.
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
