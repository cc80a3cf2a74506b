"""`python -m verify`: the verify step, after a rollout (its report) or on its own: the tenants from a
redeploy-fleet answer (--response) or from --slugs, the quarantine from the answer's stragglers or from
--stragglers. Verify never calls the control plane."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fleet import contract, http, inputs, report, runner
from fleet.contract import ContractError, show
from fleet.runner import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, EXIT_TERMINATED
from fleet.tenant import Tenants
from verify import poll, summary, verdict
from verify.verdict import Seen

NAMES = (
    "expected-sha", "tenant-url-template", "slugs", "stragglers", "response", "verify-timeout-seconds",
    "poll-interval-seconds", "concurrency", "report", "allow-http", "ca-bundle", "healthz-path", "buildinfo-path",
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


def scope_and_quarantine(values: dict[str, str], doc: dict | None) -> tuple[list[str], list[str], str]:
    """The tenants to verify and the quarantined ones: from the rollout's report, a control plane's
    answer (--response), or --slugs with --stragglers."""
    if doc is not None and "rollout" in doc:
        rollout = doc["rollout"]
        plan = doc.get("plan") or {}
        if not rollout.get("ok") or plan.get("dry_run"):
            raise ContractError(
                f"the report's rollout did not ship ({show(rollout.get('verdict', 'no rollout'))}): nothing to verify"
            )
        scope = plan.get("scope") or []
        _ignored(
            values, "the scope and the quarantine come from the rollout's report", "slugs", "stragglers", "response"
        )
        return list(scope), list(doc.get("stragglers", [])), "the rollout's report"
    if values["response"]:
        _ignored(values, "the tenants and the quarantine come from --response", "slugs", "stragglers")
        scope, stragglers = read_response(values["response"])
        return scope, stragglers, "the control plane's answer"
    if values["slugs"]:
        return contract.parse_slug_list(values["slugs"], "slugs"), parse_stragglers(values["stragglers"]), "--slugs"
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
    scope: list[str] = []
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
            tenants = Tenants(
                template,
                allow_http=allow_http,
                ca_bundle=inputs.ca_bundle(values["ca-bundle"]),
                concurrency=concurrency,
                healthz_path=inputs.tenant_path("healthz-path", values["healthz-path"]),
                buildinfo_path=inputs.tenant_path("buildinfo-path", values["buildinfo-path"]),
            )
            http.check_url(template.replace("{slug}", "canary"), "tenant-url-template", allow_http)
            scope, stragglers, source = scope_and_quarantine(values, doc)
            held = set(stragglers)  # exact, whole-string match: `reno` is not `reno-stars`
            targets = [s for s in scope if s not in held]
            runner.log(
                f"verify: {len(targets)} tenants from {source} must serve {expected}; "
                f"{len(held & set(scope))} quarantined; deadline {timeout:g} s, poll every {interval:g} s"
            )
            for slug in stragglers:
                runner.warning(f"tenant {slug} quarantined: not verified, needs individual recovery")
            seen = {slug: verdict.quarantined() for slug in scope if slug in held}
            polled = poll.Fleet(targets, {})
            poll.poll(
                tenants, polled, expected, timeout=timeout, interval=interval, concurrency=concurrency,
                progress=_progress,
            )  # fmt: skip
            seen = {slug: polled.seen.get(slug) or seen[slug] for slug in scope}
            counts = verdict.counts(seen)
    except ContractError as exc:
        failure, code = str(exc), EXIT_BAD_INPUT
    except runner.Terminated as exc:
        failure, code = f"{exc} before the deadline; verdicts are partial", EXIT_TERMINATED
        if polled is not None:
            stopped = Seen(verdict.UNREACHABLE, "not verified before the step was stopped")
            seen = {slug: polled.seen.get(slug) or seen.get(slug) or stopped for slug in scope}
            counts = verdict.counts(seen)
    except Exception as exc:  # noqa: BLE001 - the report and outputs are still written
        failure = runner.internal_error(exc)

    failing = [(slug, s) for slug, s in seen.items() if s.state in verdict.FAILING]
    ok = failure is None and not failing
    if failure:
        message = failure
    elif failing:
        named = ", ".join(f"{slug} ({s.state}: {s.reason})" for slug, s in failing[:NAME_LIMIT])
        more = f" and {len(failing) - NAME_LIMIT} more" if len(failing) > NAME_LIMIT else ""
        message = f"{len(failing)} of {len(seen)} tenants failed verification: {named}{more}"
    else:
        message = f"all {counts['verified'] if counts else 0} tenants verified on {values['expected-sha'][:12]}" + (
            f"; {counts['quarantined']} quarantined" if counts and counts["quarantined"] else ""
        )
    elapsed = round(time.monotonic() - started, 3)
    _write_report(write_to, doc, ok, message, seen, counts, values, elapsed)
    runner.set_outputs(
        {
            "ok": "true" if ok else "false",
            "verified-count": str(counts["verified"]) if counts else "",
            "failed-count": str(counts["failed"]) if counts else "",
        }
    )
    (runner.log if ok else runner.error)(runner.plain(f"verify: {message}"))
    runner.write_summary(summary.render(ok, message, seen, counts))
    return EXIT_OK if ok else code


def _progress(fleet: poll.Fleet, left: float) -> None:
    waiting = fleet.waiting()
    total = len(fleet.slugs)
    runner.log(f"verified {total - waiting}/{total}, waiting on {waiting}, {left:.0f} s left")


def _write_report(path, doc, ok, message, seen, counts, values, elapsed) -> None:
    base = doc if doc is not None else {"schema_version": 1, "ok": True}
    section = {
        "ok": ok,
        "verdict": "passed" if ok else "failed",
        "message": message,
        "expected_sha": values["expected-sha"],
        "counts": counts or verdict.counts({}),
        "tenants": [s.record(slug) for slug, s in seen.items()],
        "elapsed_seconds": elapsed,
    }
    base["verify"] = section
    base["ok"] = bool(base.get("ok", True)) and ok if doc is not None else ok
    base["message"] = message if not ok or doc is None else base.get("message", message)
    report.write(path, base)


if __name__ == "__main__":
    sys.exit(main())
