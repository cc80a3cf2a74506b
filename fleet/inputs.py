"""The action's inputs, in one table: flags for the command line, GHA_FLEET_* variables for the action,
and the typed readers that turn their strings into values or a clear error."""

from __future__ import annotations

import argparse
import os
import re
import ssl
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fleet import http, runner
from fleet.contract import ContractError, show
from fleet.tenant import TenantAccess

ENV_PREFIX = "GHA_FLEET_"


@dataclass(frozen=True)
class Input:
    """One input: its flag and GHA_FLEET_* variable (`flag`), its default on the command line, and
    its default in action.yml (`action`: None when it is no action input, "required" when required)."""

    name: str
    default: str
    help: str
    action: str | None = ""
    flag: bool = True  # False: a token, read from the environment only
    switch: bool = False  # a boolean: `--name` alone means true, `--name VALUE` reads VALUE

    @property
    def action_default(self) -> str | None:
        return self.default if self.action == "" else self.action


REQUIRED = "required"

INPUTS: dict[str, Input] = {
    i.name: i
    for i in (
        Input("cp-url", "", "control-plane base URL", REQUIRED),
        Input("cp-token", "", "control-plane admin token (the environment variable CP_TOKEN)", REQUIRED, flag=False),
        Input("target-tag", "", "image tag every tenant in scope moves to", REQUIRED),
        Input("expected-sha", "", "build (git sha, >= 7 hex digits) that buildinfo must report", "${{ github.sha }}"),
        Input("tenant-url-template", "", "tenant base URL with {slug}; empty skips verify"),
        Input("canary-slug", "", "canary tenant, deployed and soaked first; a failed canary always fails"),
        Input("soak-seconds", "60", "how long the canary is watched before the rest move"),
        Input("batch-size", "3", "tenants per batch"),
        Input(
            "max-stragglers",
            "",
            "tolerated stragglers for the whole rollout: an integer or a percentage of the scope (2%%, 2.5%%), "
            "rounded down; empty: PROD_AUTO_DEPLOY_MAX_STRAGGLERS if set, else 1",
        ),
        Input("mode", "scoped", "scoped: one call per canary and batch; fleet: one call, the control plane drives"),
        Input("slugs", "", "limit to these tenants (comma or newline separated)"),
        Input("dry-run", "false", "plan only, deploy nothing", switch=True),
        Input("verify-timeout-seconds", "300", "verify deadline"),
        Input("poll-interval-seconds", "5", "seconds between polls of one tenant"),
        Input("concurrency", "32", "tenants polled at once"),
        Input("healthz-path", "/healthz", "the tenant's health path (the real tenants serve /health)"),
        Input("buildinfo-path", "/buildinfo", "the tenant's build path"),
        Input(
            "api-url",
            "",
            "the forge's API (GitHub: https://api.github.com, Gitea: https://host/api/v1)",
            "${{ github.api_url }}",
        ),
        Input("api-token", "", "the forge's token (the environment variable API_TOKEN)", "${{ github.token }}", False),
        Input(
            "superseded-check",
            "true",
            "stand down when the deployed branch has moved past expected-sha; pass tenants serving its head",
            switch=True,
        ),
        Input(
            "kill-switch-variable",
            "",
            "a repository Actions variable re-read before every real call; true halts the rollout",
        ),
        Input("cp-timeout-seconds", "1200", "how long one control-plane call may take"),
        Input("allow-http", "false", "allow plain http:// to hosts other than loopback", switch=True),
        Input("ca-bundle", "", "CA bundle (PEM file) for TLS verification"),
        # The command line's own.
        Input("report", "", "path of the JSON report", None),
        Input(
            "verify",
            "false",
            "after the rollout, verify its tenants in the same run (the recovery command)",
            None,
            switch=True,
        ),
        Input("stragglers", "", "quarantined tenants to skip (JSON array or comma list), with --slugs", None),
        Input(
            "response",
            "",
            "a redeploy-fleet answer, or a deploy script's aggregate of several: its rows' slugs are the tenants "
            "to verify, its stragglers (absent: none) are quarantined",
            None,
        ),
    )
}


@dataclass(frozen=True)
class StepInputs:
    from_env: bool  # run by action.yml: its inputs arrive as GHA_FLEET_* variables
    values: dict[str, str]
    token: str
    api_token: str  # the forge's, from API_TOKEN

    def check_token(self) -> str:
        """The control-plane token, or an error naming where it comes from: the cp-token input in the
        action, CP_TOKEN on the command line."""
        where = "the cp-token input" if self.from_env else "CP_TOKEN"
        if not self.token:
            raise ContractError(f"{where} is required: the control-plane token")
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in self.token):
            raise ContractError(
                f"{where} holds whitespace or control characters inside it; it cannot be sent as a header"
            )
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


def read(usage: Usage, names: Sequence[str], argv: Sequence[str] | None) -> StepInputs:
    """A step's inputs from its flags (or the action's variables) and the tokens from CP_TOKEN and
    API_TOKEN, registered for masking and scrubbing before anything is printed: the one place they are."""
    token, api_token = (_secret(os.environ.get(name, "")) for name in ("CP_TOKEN", "API_TOKEN"))
    args = parser(usage, names).parse_args(argv)
    values = gather(args, names)
    if (
        "superseded-check" in values
        and not args.from_env
        and getattr(args, "superseded-check") is None
        and not values.get("api-url")
        and not runner.under_runner()
    ):
        # On a command line with no forge named, a check nobody asked for cannot be made: off, and quiet.
        values["superseded-check"] = "false"
    return StepInputs(args.from_env, values, token, api_token)


def _secret(raw: str) -> str:
    runner.register_secret(raw)
    # A pasted secret often ends in a newline; the token is what lies between the blanks.
    token = raw.strip()
    runner.register_secret(token)
    return token


def ca_bundle(text: str) -> str | None:
    """A CA bundle that exists, can be read and holds at least one PEM certificate, or None for the
    default CA set. Checked before any call: a bad bundle found only at the first TLS handshake would
    fail every tenant's verify after the fleet had moved."""
    if not text:
        return None
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise ContractError(f"ca-bundle {show(text)} is not a readable file")
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=text)
    except (ssl.SSLError, OSError, ValueError):
        certificates = 0
    else:
        certificates = context.cert_store_stats()["x509"]
    if not certificates:
        raise ContractError(f"ca-bundle {show(text)} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return text


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper().replace("-", "_")


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
    p.add_argument(
        "--from-env",
        action="store_true",
        help=f"read every input from {ENV_PREFIX}* variables (how action.yml calls this step)",
    )
    return p


def gather(args: argparse.Namespace, names: Sequence[str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Each input as the string an action would see; given flags win over the action's variables."""
    values: dict[str, str] = {}
    for name in names:
        given = getattr(args, name)
        if given is None and args.from_env:
            given = environ.get(env_name(name))
        values[name] = (given if given is not None else INPUTS[name].default).strip()
    return values


# -- typed readers -----------------------------------------------------------------------------


def integer(name: str, text: str, minimum: int = 0, maximum: int | None = None) -> int:
    if not re.fullmatch(r"\d{1,9}", text) or int(text) < minimum or (maximum is not None and int(text) > maximum):
        span = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ContractError(f"{name} must be an integer {span}: got {show(text)}")
    return int(text)


def seconds(name: str, text: str, minimum: float = 0.0) -> float:
    if not re.fullmatch(r"\d{1,7}(\.\d{1,3})?", text) or float(text) < minimum:
        raise ContractError(f"{name} must be a number of seconds >= {minimum:g}: got {show(text)}")
    return float(text)


def boolean(name: str, text: str) -> bool:
    low = text.lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off", ""):
        return False
    raise ContractError(f"{name} must be true or false: got {show(text)}")


def choice(name: str, text: str, options: Sequence[str]) -> str:
    if text not in options:
        raise ContractError(f"{name} must be one of {', '.join(options)}: got {show(text)}")
    return text


def expected_sha(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{7,64}", text):
        raise ContractError(f"expected-sha must be at least 7 hex digits: got {show(text)}")
    return text.lower()


def variable_name(name: str, text: str) -> str:
    """An Actions variable's name: letters, digits and _, not starting with a digit; "" is none."""
    if text and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", text):
        raise ContractError(f"{name} must be a variable name (letters, digits, _): got {show(text)}")
    return text


def tenant_path(name: str, text: str) -> str:
    """A path on the tenant: absolute, no '..' segment, no query or fragment, nothing to escape."""
    if (
        not text.startswith("/")
        or text.startswith("//")
        or any(part == ".." for part in text.split("/"))
        or re.search(r"[?#%\\\s\x00-\x1f\x7f]", text)
    ):
        raise ContractError(
            f"{name} must be an absolute path like /healthz (no '..', query or fragment): got {show(text)}"
        )
    return text


def tenant_access(values: Mapping[str, str]) -> TenantAccess | None:
    """How tenants are reached, every part checked once; None when no template is given."""
    allow_http = boolean("allow-http", values["allow-http"])
    access = TenantAccess(
        template=tenant_template(values["tenant-url-template"]),
        healthz_path=tenant_path("healthz-path", values["healthz-path"]),
        buildinfo_path=tenant_path("buildinfo-path", values["buildinfo-path"]),
        allow_http=allow_http,
        ca_bundle=ca_bundle(values["ca-bundle"]),
    )
    if not access.template:
        return None
    http.check_url(access.template.replace("{slug}", "canary"), "tenant-url-template", allow_http)
    return access


def required(name: str, text: str) -> str:
    if not text:
        raise ContractError(f"{name} is required")
    return text


def tenant_template(text: str) -> str:
    rest = text.replace("{slug}", "")
    if text and (rest == text or "{" in rest or "}" in rest):
        raise ContractError(f"tenant-url-template must hold {{slug}} and no other placeholder: got {show(text)}")
    return text
