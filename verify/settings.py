"""Verify's inputs as typed settings, each checked once, and the tenants it covers: from the rollout's
report, a control plane's answer (--response), or --slugs with --stragglers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import contract, inputs, report, runner
from fleet.contract import BadInput, show
from fleet.tenant import TenantAccess
from fleet.vocabulary import Follow, Outcome


@dataclass(frozen=True)
class Settings:
    expected_sha: str
    tenant_access: TenantAccess
    timeout: float
    interval: float
    concurrency: int
    superseded_check: bool
    api_url: str


def settings_from(values: Mapping[str, str]) -> Settings:
    """Typed settings; the first bad input is a ContractError naming it. The rollout calls this too, so
    a bad verify input fails before the fleet moves."""
    read = inputs.Typed(values)
    access = inputs.tenant_access(values)
    if access is None:
        raise BadInput("tenant-url-template is required to verify")
    return Settings(
        expected_sha=inputs.expected_sha(inputs.required("expected-sha", read.text("expected-sha"))),
        tenant_access=access,
        timeout=read.seconds("verify-timeout-seconds"),
        interval=read.seconds("poll-interval-seconds"),
        concurrency=read.integer("concurrency"),
        superseded_check=read.boolean("superseded-check"),
        api_url=values["api-url"],
    )


@dataclass(frozen=True)
class Scope:
    """What verify covers: the tenants, the quarantined ones, where they came from, and, in a survey
    after a failed rollout, what the rollout did to each."""

    slugs: list[str]
    quarantined: list[str]
    source: str
    survey: str = ""  # what failed, when this is a survey: the rollout's verdict, or the answer's ok: false
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    announced: bool = False  # the failure was already an ::error:: (the rollout's step said it)


def read_report(path: str, elsewhere: bool) -> dict[str, Any] | None:
    """The report --report names. A file that does not exist is an error, never a reason to take the
    fleet from somewhere else; only when --slugs or --response name the tenants (`elsewhere`) is it
    simply where verify writes its report."""
    if Path(path).exists():
        return report.read(path)
    if elsewhere:
        return None
    raise BadInput(f"--report {show(path)} does not exist: verify reads the rollout's report from it")


def scope_from(values: Mapping[str, str], doc: dict[str, Any] | None) -> Scope:
    """The tenants to verify and the quarantined ones: from the rollout's report, as the rollout's
    `follow` says (a check of the fleet it shipped, or a survey of every tenant in its scope after it
    touched the fleet and failed), else from --response or --slugs."""
    if doc is not None and "rollout" in doc:
        _ignored(
            values, "the scope and the quarantine come from the rollout's report", "slugs", "stragglers", "response"
        )
        return _from_report(doc)
    if values["response"]:
        _ignored(values, "the tenants and the quarantine come from --response", "slugs", "stragglers")
        return read_response(values["response"])
    if values["slugs"]:
        slugs = contract.parse_slug_list(values["slugs"], "slugs")
        return Scope(slugs, parse_stragglers(values["stragglers"]), "--slugs")
    raise BadInput(
        "no tenants to verify: give --report (the rollout's report), --response (a redeploy-fleet answer) or --slugs"
    )


def _from_report(doc: dict[str, Any]) -> Scope:
    """What the rollout decided follows it is read, never decided again here."""
    rollout = doc["rollout"]
    scope = list((doc.get("plan") or {}).get("scope") or [])
    verdict = str(rollout["verdict"])
    if "follow" not in rollout:
        raise BadInput(
            "the report's rollout does not say what follows it (a report from an older version): roll out "
            "again, or name the tenants with --slugs"
        )
    follow = Follow(rollout["follow"])
    if follow == Follow.SURVEY:
        outcomes = {t["slug"]: Outcome(t["outcome"]) for t in doc.get("tenants", [])}
        return Scope(scope, [], "the failed rollout's report", verdict, outcomes, announced=True)
    if follow == Follow.NONE:
        raise BadInput(f"the report's rollout did not ship ({show(verdict)}): nothing to verify")
    return Scope(scope, list(doc.get("stragglers", [])), "the rollout's report")


def _ignored(values: Mapping[str, str], why: str, *names: str) -> None:
    for name in names:
        if values[name]:
            runner.warning(f"--{name} is ignored: {why}")


def parse_stragglers(text: str) -> list[str]:
    """A JSON array or a comma/newline list of slugs."""
    text = text.strip()
    if text.startswith("["):
        items = contract.parse_json(text, "stragglers")
        if not isinstance(items, list):
            raise BadInput("stragglers must be a JSON array of slugs")
        for item in items:
            contract.check_slug(item, "stragglers")
        return contract.unique_slugs(items, "stragglers")
    return contract.parse_slug_list(text, "stragglers") if text else []


def read_response(path: str) -> Scope:
    """The tenants and the quarantine from a redeploy-fleet answer, or the aggregate of several that a
    deploy script wrote: its rows' slugs, and its `stragglers` (absent: none). An answer that says
    `ok: false` is a failed rollout: every tenant it names is surveyed, none skipped, and the step fails."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise BadInput(f"cannot read --response {show(path)}: {exc.strerror}") from None
    what = f"--response {show(path)}"
    answer = contract.validate("redeploy-response", contract.parse_json(raw, what), f"{what} rejected")
    nameless = contract.unnamed(answer["results"])
    if nameless:
        raise BadInput(f"{what} rejected: a row names no tenant (no slug): {nameless[0]}")
    slugs = contract.unique_slugs((row["slug"] for row in answer["results"]), f"{what} rejected")
    stragglers = contract.unique_slugs(answer.get("stragglers") or [], f"{what} rejected: stragglers")
    # A straggler without a row is still named: quarantined, never silently left out.
    tenants = slugs + [s for s in stragglers if s not in slugs]
    source = "the control plane's answer"
    if not answer["ok"]:
        said = f": {show(answer['error'])}" if answer.get("error") else ""
        return Scope(tenants, [], source, survey=f"the control plane's answer says ok: false{said}")
    return Scope(tenants, stragglers, source)
