"""The action's inputs, in one list: each input's name, kind, defaults and the steps that read it. The
command line's flags, the action's environment (FLEET_INPUTS), the typed readers behind the settings and
the recovery command all derive from it."""

from __future__ import annotations

import argparse
import json
import os
import re
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from fleet import http, runner
from fleet.contract import BadInput, ContractError, parse_slug_list, show
from fleet.tenant import TenantAccess

# How action.yml hands a step its inputs: `${{ toJSON(inputs) }}`, every input (tokens included) in one
# JSON object, so that an input needs no line of its own in each step's `env:`.
ACTION_INPUTS = "FLEET_INPUTS"
ROLLOUT, VERIFY = "rollout", "verify"
BOTH = (ROLLOUT, VERIFY)
REQUIRED = "required"
MAX_CONCURRENCY = 512  # two threads per tenant polled at once


class Kind(str, Enum):
    """What an input's string holds, and so how it is read and checked."""

    STRING = "string"
    INTEGER = "integer"
    SECONDS = "seconds"
    NUMBER = "number"  # decimals allowed, e.g. 1.5
    BOOLEAN = "boolean"
    SLUGS = "slug list"
    URL = "URL"
    PATH = "path"  # a path on the tenant, e.g. /healthz
    FILE = "file"  # a file on the runner; in the action a relative one is taken from the workspace


@dataclass(frozen=True)
class Input:
    """One input, as data: everything else about it (flag, help, environment, reader) derives from it."""

    name: str
    kind: Kind
    help: str
    steps: tuple[str, ...]  # the steps that read it: on the command line, the steps that take its flag
    default: str = ""  # the command line's; the action's too unless `required` or `runner_default`
    required: bool = False  # action.yml requires it (the command line's required flags are in Usage)
    runner_default: str = ""  # action.yml's default when the runner supplies it: `${{ github.sha }}`
    action: bool = True  # False: the command line's own, no input of action.yml
    variable: str = ""  # a token: never a flag; on the command line, read from this environment variable
    flag_only: tuple[str, ...] = ()  # steps that read it from a flag only, never from the action's inputs
    minimum: float = 0
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    recovery: bool = False  # the recovery command repeats it when it is not the default

    @property
    def action_default(self) -> str | None:
        """action.yml's default: None for no action input, REQUIRED when it is required."""
        if not self.action:
            return None
        return REQUIRED if self.required else self.runner_default or self.default

    @property
    def switch(self) -> bool:
        """A boolean flag: `--name` alone means true, `--name VALUE` reads VALUE."""
        return self.kind == Kind.BOOLEAN


# The list reads as a table: an input to a line or three.
# fmt: off
INPUTS: dict[str, Input] = {
    i.name: i
    for i in (
        Input("cp-url", Kind.URL, "control-plane base URL", (ROLLOUT,), required=True, recovery=True),
        Input(
            "cp-token", Kind.STRING, "control-plane admin token (the environment variable CP_TOKEN)", (ROLLOUT,),
            required=True, variable="CP_TOKEN",
        ),
        Input(
            "target-tag", Kind.STRING, "image tag every tenant in scope moves to", (ROLLOUT,), required=True,
            recovery=True,
        ),
        Input(
            "expected-sha", Kind.STRING, "build (git sha, >= 7 hex digits) that buildinfo must report", BOTH,
            runner_default="${{ github.sha }}", recovery=True,
        ),
        Input(
            "tenant-url-template", Kind.URL, "tenant base URL with {slug}; empty skips verify", BOTH, recovery=True
        ),
        Input(
            "canary-slug", Kind.STRING, "canary tenant, deployed and soaked first; a failed canary always fails",
            (ROLLOUT,),
        ),
        Input("soak-seconds", Kind.INTEGER, "how long the canary is watched before the rest move", (ROLLOUT,), "60"),
        Input("batch-size", Kind.INTEGER, "tenants in the first batch (and in each batch without growth)",
              (ROLLOUT,), "3", minimum=1),
        Input(
            "batch-growth", Kind.NUMBER,
            "each batch after one that quarantined no straggler is ceil(previous x growth) tenants (>= 1; 1: fixed)",
            (ROLLOUT,), "1", minimum=1,
        ),
        Input(
            "max-batch-size", Kind.STRING,
            "the largest batch: an integer, or a percentage of the scope (25%%, rounded down, at least 1); "
            "empty: no cap",
            (ROLLOUT,),
        ),
        Input(
            "max-stragglers", Kind.STRING,
            "tolerated stragglers for the whole rollout: an integer or a percentage of the scope (2%%, 2.5%%), "
            "rounded down; empty: PROD_AUTO_DEPLOY_MAX_STRAGGLERS if set, else 1",
            (ROLLOUT,),
        ),
        Input(
            "mode", Kind.STRING, "scoped: one call per canary and batch; fleet: one call, the control plane drives",
            (ROLLOUT,), "scoped", choices=("scoped", "fleet"),
        ),
        # In the action, verify takes its tenants from the rollout's report, never from `slugs`.
        Input(
            "slugs", Kind.SLUGS, "limit to these tenants (comma or newline separated)", BOTH, flag_only=(VERIFY,)
        ),
        Input("dry-run", Kind.BOOLEAN, "plan only, deploy nothing", (ROLLOUT,), "false"),
        Input("verify-timeout-seconds", Kind.SECONDS, "verify deadline", BOTH, "300"),
        Input(
            "poll-interval-seconds", Kind.SECONDS, "seconds between polls of one tenant", BOTH, "5", minimum=0.05
        ),
        Input("concurrency", Kind.INTEGER, "tenants polled at once", BOTH, "32", minimum=1, maximum=MAX_CONCURRENCY),
        Input(
            "healthz-path", Kind.PATH, "the tenant's health path (the real tenants serve /health)", BOTH, "/healthz",
            recovery=True,
        ),
        Input("buildinfo-path", Kind.PATH, "the tenant's build path", BOTH, "/buildinfo", recovery=True),
        Input(
            "api-url", Kind.URL, "the forge's API (GitHub: https://api.github.com, Gitea: https://host/api/v1)",
            BOTH, runner_default="${{ github.api_url }}",
        ),
        Input(
            "api-token", Kind.STRING, "the forge's token (the environment variable API_TOKEN)", BOTH,
            runner_default="${{ github.token }}", variable="API_TOKEN",
        ),
        Input(
            "superseded-check", Kind.BOOLEAN,
            "stand down when the deployed branch has moved past expected-sha; pass tenants serving its head",
            BOTH, "true",
        ),
        Input(
            "kill-switch-variable", Kind.STRING,
            "a repository Actions variable re-read before every real call; true halts the rollout", (ROLLOUT,),
        ),
        Input(
            "cp-timeout-seconds", Kind.SECONDS, "how long one control-plane call may take", (ROLLOUT,), "1200",
            minimum=1, recovery=True,
        ),
        Input(
            "allow-http", Kind.BOOLEAN, "allow plain http:// to hosts other than loopback", BOTH, "false",
            recovery=True,
        ),
        Input("ca-bundle", Kind.FILE, "CA bundle (PEM file) for TLS verification", BOTH, recovery=True),
        # The quarantine ledger: the rollout opens and comments, the step that ends a successful run closes.
        Input(
            "quarantine-issues", Kind.BOOLEAN,
            "keep one open issue per quarantined tenant in this repository (needs issues: write)", BOTH, "false",
            recovery=True,
        ),
        Input(
            "quarantine-label", Kind.STRING, "the label that marks the ledger's issues; created if missing", BOTH,
            "fleet-quarantine", recovery=True,
        ),
        Input(
            "max-quarantine-streak", Kind.STRING,
            "N: a tenant quarantined by N rollouts in a row fails the step, after the rest shipped; "
            "empty: never escalate",
            (ROLLOUT,),
        ),
        # The command line's own.
        Input("report", Kind.FILE, "path of the JSON report", BOTH, action=False),
        Input(
            "verify", Kind.BOOLEAN, "after the rollout, verify its tenants in the same run (the recovery command)",
            (ROLLOUT,), "false", action=False,
        ),
        Input(
            "stragglers", Kind.STRING, "quarantined tenants to skip (JSON array or comma list), with --slugs",
            (VERIFY,), action=False,
        ),
        Input(
            "response", Kind.FILE,
            "a redeploy-fleet answer, or a deploy script's aggregate of several: its rows' slugs are the tenants "
            "to verify, its stragglers (absent: none) are quarantined",
            (VERIFY,), action=False,
        ),
    )
}
# fmt: on


def flags(step: str) -> tuple[str, ...]:
    """The inputs a step takes as flags, in the list's order: every one it reads but the tokens."""
    return tuple(i.name for i in INPUTS.values() if step in i.steps and not i.variable)


def action_flags(step: str) -> tuple[str, ...]:
    """The flags a step reads from the action's inputs."""
    return tuple(name for name in flags(step) if INPUTS[name].action and step not in INPUTS[name].flag_only)


@dataclass(frozen=True)
class StepInputs:
    action: bool  # run by action.yml: its inputs came from FLEET_INPUTS
    values: dict[str, str]
    token: str  # the control plane's, for a step that reads it
    api_token: str  # the forge's

    def check_token(self) -> str:
        """The control-plane token, or an error naming where it comes from: the cp-token input in the
        action, CP_TOKEN on the command line."""
        where = "the cp-token input" if self.action else "CP_TOKEN"
        if not self.token:
            raise BadInput(f"{where} is required: the control-plane token")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in self.token):
            raise BadInput(f"{where} holds whitespace or control characters inside it; it cannot be sent as a header")
        return self.token


@dataclass(frozen=True)
class Usage:
    """How a step's command line presents itself: its name (`python -m rollout`, or the console script's
    when run as one), what it does, what it requires, and where its tokens come from."""

    prog: str
    description: str
    script: str  # the console script's name (pyproject's [project.scripts])
    required: Sequence[str] = ()
    epilog: str = ""

    def name(self, argv0: str) -> str:
        return self.script if os.path.basename(argv0) == self.script else self.prog

    @property
    def step(self) -> str:
        """The step this command line runs: its module, `python -m STEP`."""
        return self.prog.rsplit(" ", 1)[-1]


@dataclass(frozen=True)
class Environment:
    """The inputs a step's environment gives: in the action every input, from FLEET_INPUTS; on the
    command line only the tokens, from CP_TOKEN and API_TOKEN."""

    values: dict[str, str]
    action: bool


def environment(environ: Mapping[str, str]) -> Environment:
    """Every token in the environment is registered for masking and scrubbing here, before anything is
    printed, also one the step never reads (verify's environment holds the cp-token, never sent)."""
    text = environ.get(ACTION_INPUTS)
    given = _action_inputs(text, environ) if text is not None else {}
    values: dict[str, str] = {}
    for item in INPUTS.values():
        if item.variable:
            values[item.name] = _secret(given[item.name] if item.name in given else environ.get(item.variable, ""))
        elif item.name in given:
            values[item.name] = given[item.name]
    return Environment(values, text is not None)


def _action_inputs(text: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The action's inputs from `toJSON(inputs)`: each as its string (a runner may hand a YAML boolean
    or number on), a relative file taken from the directory the step started in."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):  # its text is never shown: it holds the tokens
        raise BadInput(f"{ACTION_INPUTS} must hold the action's inputs as a JSON object (toJSON(inputs))")
    values: dict[str, str] = {}
    for name, value in data.items():
        item = INPUTS.get(name)
        if item is None or not item.action:
            continue
        text = value if isinstance(value, str) else "" if value is None else json.dumps(value)
        if item.kind == Kind.FILE and text.strip() and not os.path.isabs(text.strip()):
            text = os.path.join(environ.get("FLEET_WORKSPACE") or os.getcwd(), text.strip())
        values[name] = text
    return values


def read(usage: Usage, names: Sequence[str], argv: Sequence[str] | None) -> StepInputs:
    """A step's inputs: each flag given wins, then the environment, then the list's default. The one path
    for the command line and the action alike."""
    p = parser(usage, names)
    try:
        env = environment(os.environ)
    except ContractError as exc:
        p.error(str(exc))
    readable = set(action_flags(usage.step)) if env.action else set(names)
    p.set_defaults(**{name: env.values[name] for name in names if name in env.values and name in readable})
    args = p.parse_args(argv)
    values = {name: (getattr(args, name) if getattr(args, name) is not None else INPUTS[name].default).strip()
              for name in names}  # fmt: skip
    if "superseded-check" in values and getattr(args, "superseded-check") is None:
        values["superseded-check"] = _unasked_check(values)
    token, api_token = (env.values[n] if usage.step in INPUTS[n].steps else "" for n in ("cp-token", "api-token"))
    return StepInputs(env.action, values, token, api_token)


def _unasked_check(values: Mapping[str, str]) -> str:
    # On a command line with no forge named, a check nobody asked for cannot be made: off, and quiet.
    return "false" if not values.get("api-url") and not runner.under_runner() else values["superseded-check"]


def _secret(raw: str) -> str:
    runner.register_secret(raw)
    # A pasted secret often ends in a newline; the token is what lies between the blanks.
    token = raw.strip()
    runner.register_secret(token)
    return token


def parser(usage: Usage, names: Sequence[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=usage.name(sys.argv[0]), description=usage.description, epilog=usage.epilog)
    for name in names:
        item = INPUTS[name]
        default = f" (default: {item.default!r})" if item.default else ""
        required = " (required)" if name in usage.required else ""
        if item.switch:
            p.add_argument(
                f"--{name}", dest=name, default=None, nargs="?", const="true", metavar="true|false",
                help=f"{item.help}; alone, true{default}",
            )  # fmt: skip
        else:
            p.add_argument(f"--{name}", dest=name, default=None, metavar="VALUE", help=item.help + required + default)
    return p


# -- typed readers -----------------------------------------------------------------------------


class Typed:
    """The inputs' strings read by each one's kind, with the bounds and choices the list gives it; a bad
    one is a ContractError naming it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values

    def _text(self, name: str, kind: Kind) -> str:
        if INPUTS[name].kind != kind:
            raise TypeError(f"{name} is a {INPUTS[name].kind.value} input, not a {kind.value} one")
        return self.values[name]

    def text(self, name: str) -> str:
        item, text = INPUTS[name], self._text(name, Kind.STRING)
        return choice(name, text, item.choices) if item.choices else text

    def integer(self, name: str) -> int:
        item = INPUTS[name]
        return integer(name, self._text(name, Kind.INTEGER), int(item.minimum), item.maximum)

    def seconds(self, name: str) -> float:
        return seconds(name, self._text(name, Kind.SECONDS), INPUTS[name].minimum)

    def number(self, name: str) -> Decimal:
        return number(name, self._text(name, Kind.NUMBER), INPUTS[name].minimum)

    def boolean(self, name: str) -> bool:
        return boolean(name, self._text(name, Kind.BOOLEAN))

    def slugs(self, name: str) -> list[str] | None:
        """The tenants named, or None when the input is empty."""
        text = self._text(name, Kind.SLUGS)
        if not text:
            return None
        slugs = parse_slug_list(text, name)
        if not slugs:
            raise BadInput(f"{name} names no tenant")
        return slugs

    def url(self, name: str, allow_http: bool) -> str:
        text = self._text(name, Kind.URL)
        return http.check_url(text, name, allow_http) if text else ""

    def path(self, name: str) -> str:
        return tenant_path(name, self._text(name, Kind.PATH))

    def file(self, name: str) -> str:
        return self._text(name, Kind.FILE)


def value_of(name: str, text: str) -> object:
    """An input's value as its kind compares it: `yes` is `true`, `90.0` is `90`."""
    kind = INPUTS[name].kind
    if kind == Kind.BOOLEAN:
        return boolean(name, text)
    if kind in (Kind.INTEGER, Kind.SECONDS):
        return seconds(name, text)
    return text


def integer(name: str, text: str, minimum: int = 0, maximum: int | None = None) -> int:
    if not re.fullmatch(r"\d{1,9}", text) or int(text) < minimum or (maximum is not None and int(text) > maximum):
        span = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise BadInput(f"{name} must be an integer {span}: got {show(text)}")
    return int(text)


def seconds(name: str, text: str, minimum: float = 0.0) -> float:
    if not re.fullmatch(r"\d{1,7}(\.\d{1,3})?", text) or float(text) < minimum:
        raise BadInput(f"{name} must be a number of seconds >= {minimum:g}: got {show(text)}")
    return float(text)


def number(name: str, text: str, minimum: float = 0) -> Decimal:
    """A decimal number, exactly as written (`1.5` stays 1.5, so growth rounds the same everywhere)."""
    if not re.fullmatch(r"\d{1,6}(\.\d{1,3})?", text) or Decimal(text) < Decimal(str(minimum)):
        raise BadInput(f"{name} must be a number >= {minimum:g}, decimals allowed (such as 1.5): got {show(text)}")
    return Decimal(text)


def boolean(name: str, text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off", ""):
        return False
    raise BadInput(f"{name} must be true or false: got {show(text)}")


def choice(name: str, text: str, options: Sequence[str]) -> str:
    if text not in options:
        raise BadInput(f"{name} must be one of {', '.join(options)}: got {show(text)}")
    return text


def ca_bundle(text: str) -> str | None:
    """A CA bundle that exists, can be read and holds at least one PEM certificate, or None for the
    default CA set. Checked before any call: a bad bundle found only at the first TLS handshake would
    fail every tenant's verify after the fleet had moved."""
    if not text:
        return None
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise BadInput(f"ca-bundle {show(text)} is not a readable file")
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=text)
    except (ssl.SSLError, OSError, ValueError):
        certificates = 0
    else:
        certificates = context.cert_store_stats()["x509"]
    if not certificates:
        raise BadInput(f"ca-bundle {show(text)} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return text


def expected_sha(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{7,64}", text):
        raise BadInput(f"expected-sha must be at least 7 hex digits: got {show(text)}")
    return text.lower()


def variable_name(name: str, text: str) -> str:
    """An Actions variable's name: letters, digits and _, not starting with a digit; "" is none."""
    if text and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", text):
        raise BadInput(f"{name} must be a variable name (letters, digits, _): got {show(text)}")
    return text


def tenant_path(name: str, text: str) -> str:
    """A path on the tenant: absolute, no '..' segment, no query or fragment, nothing to escape."""
    if (
        not text.startswith("/")
        or text.startswith("//")
        or any(part == ".." for part in text.split("/"))
        or re.search(r"[?#%\\\s\x00-\x1f\x7f]", text)
    ):
        raise BadInput(f"{name} must be an absolute path like /healthz (no '..', query or fragment): got {show(text)}")
    return text


def tenant_access(values: Mapping[str, str]) -> TenantAccess | None:
    """How tenants are reached, every part checked once; None when no template is given."""
    read = Typed(values)
    allow_http = read.boolean("allow-http")
    access = TenantAccess(
        template=tenant_template(values["tenant-url-template"]),
        healthz_path=read.path("healthz-path"),
        buildinfo_path=read.path("buildinfo-path"),
        allow_http=allow_http,
        ca_bundle=ca_bundle(read.file("ca-bundle")),
    )
    if not access.template:
        return None
    http.check_url(access.template.replace("{slug}", "canary"), "tenant-url-template", allow_http)
    return access


def required(name: str, text: str) -> str:
    if not text:
        raise BadInput(f"{name} is required")
    return text


def tenant_template(text: str) -> str:
    rest = text.replace("{slug}", "")
    if text and (rest == text or "{" in rest or "}" in rest):
        raise BadInput(f"tenant-url-template must hold {{slug}} and no other placeholder: got {show(text)}")
    return text
