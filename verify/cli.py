"""`python -m verify`: the verify step, after a rollout (its report) or on its own: the tenants from a
redeploy-fleet answer (--response) or from --slugs, the quarantine from the answer's stragglers or from
--stragglers. Verify never calls the control plane."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleet import contract, http, inputs, report, runner
from fleet.contract import ContractError, show
from fleet.forge import Forge, ForgeError, Where
from fleet.runner import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_TERMINATED
from fleet.tenant import Tenants
from rollout.gate import SUPERSEDED
from verify import poll, summary, verdict
from verify.verdict import Seen

NAMES = (
    "expected-sha", "tenant-url-template", "slugs", "stragglers", "response", "verify-timeout-seconds",
    "poll-interval-seconds", "concurrency", "report", "allow-http", "ca-bundle", "healthz-path", "buildinfo-path",
    "api-url", "superseded-check",
)  # fmt: skip


VERIFY_REPORT = "fleet-verify-report.json"  # without --report: never the rollout's default file
NAME_LIMIT = 10  # tenants named in the one-line error before "and N more"


def parse_stragglers(text: str) -> list[str]:
    """A JSON array or a comma/newline list of slugs."""
    text = text.strip()
    if text.startswith("["):
        items = contract.parse_json(text, "stragglers")
        if not isinstance(items, list):
            raise ContractError("stragglers must be a JSON array of slugs")
        for item in items:
            contract.check_slug(item, "stragglers")
        return contract.unique_slugs(items, "stragglers")
    return contract.parse_slug_list(text, "stragglers") if text else []


def read_response(path: str) -> tuple[list[str], list[str]]:
    """The tenants and the quarantine from a redeploy-fleet answer, or the aggregate of several that a
    deploy script wrote: its rows' slugs, and its `stragglers` (absent: none)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ContractError(f"cannot read --response {show(path)}: {exc.strerror}") from None
    what = f"--response {show(path)}"
    answer = contract.validate("redeploy-response", contract.parse_json(raw, what), f"{what} rejected")
    slugs = contract.unique_slugs((row["slug"] for row in answer["results"]), f"{what} rejected")
    stragglers = contract.unique_slugs(answer.get("stragglers") or [], f"{what} rejected: stragglers")
    # A straggler without a row is still named: quarantined, never silently left out.
    return slugs + [s for s in stragglers if s not in slugs], stragglers


@dataclass(frozen=True)
class Fleet:
    """What verify covers: the tenants, the quarantined ones, where they came from, and, in a survey
    after a failed rollout, what the rollout did to each."""

    scope: list[str]
    quarantined: list[str]
    source: str
    survey: str = ""  # the failed rollout's verdict, when this is a survey
    outcomes: dict[str, str] = field(default_factory=dict)  # slug -> rollout outcome


def scope_and_quarantine(values: dict[str, str], doc: dict | None) -> Fleet:
    """The tenants to verify and the quarantined ones: from the rollout's report, a control plane's
    answer (--response), or --slugs with --stragglers. A rollout that touched the fleet and then failed
    is surveyed: every tenant in its scope is read, none skipped."""
    if doc is not None and "rollout" in doc:
        rollout = doc["rollout"]
        plan = doc.get("plan") or {}
        why = "the scope and the quarantine come from the rollout's report"
        _ignored(values, why, "slugs", "stragglers", "response")
        scope = list(plan.get("scope") or [])
        if not rollout.get("ok") and rollout.get("touched") and not plan.get("dry_run"):
            outcomes = {t["slug"]: t["outcome"] for t in doc.get("tenants", [])}
            return Fleet(scope, [], "the failed rollout's report", str(rollout.get("verdict", "failed")), outcomes)
        if not rollout.get("ok") or plan.get("dry_run") or rollout.get("verdict") == SUPERSEDED:
            raise ContractError(
                f"the report's rollout did not ship ({show(rollout.get('verdict', 'no rollout'))}): nothing to verify"
            )
        return Fleet(scope, list(doc.get("stragglers", [])), "the rollout's report")
    if values["response"]:
        _ignored(values, "the tenants and the quarantine come from --response", "slugs", "stragglers")
        return Fleet(*read_response(values["response"]), "the control plane's answer")
    if values["slugs"]:
        slugs = contract.parse_slug_list(values["slugs"], "slugs")
        return Fleet(slugs, parse_stragglers(values["stragglers"]), "--slugs")
    raise ContractError(
        "verify needs its tenants: --report (the rollout's report), --response (a redeploy-fleet answer) or --slugs"
    )


def _ignored(values: dict[str, str], why: str, *names: str) -> None:
    for name in names:
        if values[name]:
            runner.warning(f"--{name} is ignored: {why}")


def main(argv: Sequence[str] | None = None) -> int:
    step = inputs.read(
        "python -m verify",
        "Verify the fleet: every tenant that was not quarantined must answer healthz 2xx and serve the "
        "expected build on buildinfo before the deadline.",
        NAMES,
        argv,
    )
    values = step.values
    report_path = values["report"] or VERIFY_REPORT
    started = time.monotonic()

    doc: dict | None = None
    polled: poll.Fleet | None = None
    fleet = Fleet([], [], "")
    write_to = report_path
    seen: dict[str, Seen] = {}
    counts: dict[str, int] | None = None
    failure: str | None = None
    code = EXIT_FAILED
    try:
        with runner.sigterm_stops():
            # Only a report named on purpose is read: a leftover default file must not pick the scope.
            if values["report"] and Path(report_path).exists():
                write_to = report_path + ".verify.json"  # a report that cannot be read is kept as it is
                doc = report.read(report_path)
                write_to = report_path
            expected = inputs.expected_sha(values["expected-sha"]) if values["expected-sha"] else None
            if expected is None:
                raise ContractError("expected-sha is required: the build every tenant's buildinfo must report")
            template = inputs.tenant_template(values["tenant-url-template"])
            if not template:
                raise ContractError("tenant-url-template is required to verify")
            timeout, interval, concurrency = inputs.verify_limits(values)
            allow_http = inputs.boolean("allow-http", values["allow-http"])
            ca_bundle = inputs.ca_bundle(values["ca-bundle"])
            tenants = Tenants(
                template,
                allow_http=allow_http,
                ca_bundle=ca_bundle,
                concurrency=concurrency,
                healthz_path=inputs.tenant_path("healthz-path", values["healthz-path"]),
                buildinfo_path=inputs.tenant_path("buildinfo-path", values["buildinfo-path"]),
            )
            http.check_url(template.replace("{slug}", "canary"), "tenant-url-template", allow_http)
            heads = _heads(values, step.api_token, expected, allow_http, ca_bundle)
            fleet = scope_and_quarantine(values, doc)
            held = set(fleet.quarantined)  # exact, whole-string match: `reno` is not `reno-stars`
            targets = [s for s in fleet.scope if s not in held]
            if fleet.survey:
                runner.log(
                    f"survey after a failed rollout ({runner.plain(fleet.survey)}): reading the build of all "
                    f"{len(targets)} tenants in its scope; this step stays failed"
                )
            else:
                runner.log(
                    f"verify: {len(targets)} tenants from {fleet.source} must serve {expected}; "
                    f"{len(held & set(fleet.scope))} quarantined; deadline {timeout:g} s, poll every {interval:g} s"
                )
            for slug in fleet.quarantined:
                runner.warning(f"tenant {slug} quarantined: not verified, needs individual recovery")
            seen = {slug: verdict.quarantined() for slug in fleet.scope if slug in held}
            done = verdict.ANSWERED if fleet.survey else verdict.PASSING
            polled = poll.Fleet(targets, {}, done=done)
            head = heads()
            poll.poll(
                tenants, polled, expected, head, timeout=timeout, interval=interval, concurrency=concurrency,
                progress=_progress,
            )  # fmt: skip
            seen = {slug: polled.seen.get(slug) or seen[slug] for slug in fleet.scope}
            if any(s.state == verdict.STALE for s in seen.values()):
                seen = _ahead(seen, expected, head, heads)
            counts = verdict.counts(seen)
    except ContractError as exc:
        failure, code = str(exc), EXIT_BAD_INPUT
    except runner.Terminated as exc:
        failure, code = f"{exc} before the deadline; verdicts are partial", EXIT_TERMINATED
        if polled is not None:
            stopped = Seen(verdict.UNREACHABLE, "not verified before the step was stopped")
            seen = {slug: polled.seen.get(slug) or seen.get(slug) or stopped for slug in fleet.scope}
            counts = verdict.counts(seen)
    except Exception as exc:  # noqa: BLE001 - the report and outputs are still written
        failure = runner.internal_error(exc)

    steps = {slug: verdict.next_step(s, fleet.outcomes.get(slug)) for slug, s in seen.items()}
    failing = [(slug, s) for slug, s in seen.items() if s.state in verdict.FAILING]
    ok = failure is None and not failing and not fleet.survey
    if failure:
        message = failure
    elif fleet.survey:
        message = _survey_message(fleet, seen)
    elif failing:
        named = ", ".join(f"{slug} ({s.state}: {s.reason})" for slug, s in failing[:NAME_LIMIT])
        more = f" and {len(failing) - NAME_LIMIT} more" if len(failing) > NAME_LIMIT else ""
        message = f"{len(failing)} of {len(seen)} tenants failed verification: {named}{more}"
    else:
        message = f"all {counts['verified'] if counts else 0} tenants verified on {values['expected-sha'][:12]}"
        if counts and counts[verdict.SUPERSEDED]:
            message += f"; {counts[verdict.SUPERSEDED]} already on the branch's newer head (superseded)"
        if counts and counts["quarantined"]:
            message += f"; {counts['quarantined']} quarantined"
    elapsed = round(time.monotonic() - started, 3)
    _write_report(write_to, doc, ok, message, seen, counts, values, elapsed, fleet, steps)
    runner.set_outputs(
        {
            "ok": "true" if ok else "false",
            "verified-count": str(counts["verified"]) if counts else "",
            "failed-count": str(counts["failed"]) if counts else "",
        }
    )
    (runner.log if ok else runner.error)(runner.plain(f"verify: {message}"))
    runner.write_summary(summary.render(ok, message, seen, counts, steps, survey=fleet.survey))
    return EXIT_OK if ok else code


def _heads(values: dict[str, str], api_token: str, expected: str, allow_http: bool, ca_bundle: str | None):
    """A reader of the deployed branch's head (None when it cannot be read: then nothing is excused)."""
    if not inputs.boolean("superseded-check", values["superseded-check"]):
        return lambda: None
    api_url = http.check_url(values["api-url"], "api-url", allow_http) if values["api-url"] else ""
    forge = Forge(api_url, api_token, allow_http=allow_http, ca_bundle=ca_bundle)
    where = Where.from_environment(os.environ)

    def read() -> str | None:
        try:
            return forge.branch_head(where)
        except ForgeError as exc:
            runner.notice(
                f"superseded-check: the branch head could not be read ({runner.plain(exc)}); "
                "a tenant on another build is stale"
            )
            return None

    return read


def _ahead(seen: dict[str, Seen], expected: str, head: str | None, heads) -> dict[str, Seen]:
    """Stale tenants judged again against the branch's head as it is now: another run may have rolled
    the fleet forward while this one polled."""
    now = heads()
    if now is None or now == head:
        return seen
    return {
        slug: verdict.stale_or_superseded(s.build, expected, now) if s.state == verdict.STALE and s.build else s
        for slug, s in seen.items()
    }


def _survey_message(fleet: Fleet, seen: dict[str, Seen]) -> str:
    on_target = sum(1 for s in seen.values() if s.state in verdict.PASSING)
    untouched = sum(1 for slug in seen if fleet.outcomes.get(slug) == "not-attempted")
    return (
        f"survey after a failed rollout ({fleet.survey}): {on_target} of {len(seen)} tenants on the target build, "
        f"{untouched} never reached by the rollout; the step stays failed"
    )


def _progress(fleet: poll.Fleet, left: float) -> None:
    waiting = fleet.waiting()
    total = len(fleet.slugs)
    runner.log(f"verified {total - waiting}/{total}, waiting on {waiting}, {left:.0f} s left")


def _write_report(path, doc, ok, message, seen, counts, values, elapsed, fleet, steps) -> None:
    base = doc if doc is not None else {"schema_version": 1, "ok": True}
    tenants = []
    for slug, s in seen.items():
        record = s.record(slug) | {"next_step": steps.get(slug)}
        if fleet.survey:
            record["rollout_outcome"] = fleet.outcomes.get(slug)
        tenants.append(record)
    section = {
        "ok": ok,
        "verdict": "survey" if fleet.survey and not ok else ("passed" if ok else "failed"),
        "mode": "survey" if fleet.survey else "verify",
        "message": message,
        "expected_sha": values["expected-sha"],
        "counts": counts or verdict.counts({}),
        "tenants": tenants,
        "elapsed_seconds": elapsed,
    }
    base["verify"] = section
    base["ok"] = bool(base.get("ok", True)) and ok if doc is not None else ok
    base["message"] = message if not ok or doc is None else base.get("message", message)
    report.write(path, base)


if __name__ == "__main__":
    sys.exit(main())
