"""`python -m verify`: the verify step, after a rollout (its report) or on its own: the tenants from a
redeploy-fleet answer (--response) or from --slugs, the quarantine from the answer's stragglers or from
--stragglers. Verify never calls the control plane."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from fleet import inputs, runner, step
from fleet.forge import Forge, Where, read_head
from fleet.inputs import StepInputs
from fleet.vocabulary import State, counted
from verify import poll, summary, verdict
from verify.settings import Scope, Settings, read_report, scope_from, settings_from
from verify.verdict import Seen

NAMES = inputs.flags(inputs.VERIFY)

VERIFY_REPORT = "fleet-verify-report.json"  # without --report: never the rollout's default file


class Verify(step.Step):
    usage = inputs.Usage(
        prog="python -m verify",
        description="Verify the fleet: every tenant that was not quarantined must answer its health path with "
        "a 2xx and serve the expected build on its build path before the deadline. The tenants come from "
        "--report, --response or --slugs (one is required).",
        script="fleet-verify",
        required=("expected-sha", "tenant-url-template"),
        epilog="Verify never calls the control plane. For superseded-check, the forge's token is read from the "
        "environment variable API_TOKEN, never from a flag; the repository and branch come from "
        "GITHUB_REPOSITORY and GITHUB_REF_NAME.",
    )
    names = NAMES

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.doc: dict[str, Any] | None = None
        self.write_to = ""
        self.settings: Settings | None = None
        self.scope = Scope([], [], "")
        self.polled: poll.Fleet | None = None
        self.seen: dict[str, Seen] = {}

    def work(self, given: StepInputs) -> None:
        values = given.values
        self.write_to = values["report"] or VERIFY_REPORT
        if values["report"]:
            self.write_to = values["report"] + ".verify.json"  # a report that cannot be read is kept as it is
            self.doc = read_report(values["report"], elsewhere=bool(values["slugs"] or values["response"]))
            self.write_to = values["report"]
        settings = self.settings = settings_from(values)
        forge = Forge(settings.api_url, given.api_token, allow_http=settings.tenants.allow_http,
                          ca_bundle=settings.tenants.ca_bundle)  # fmt: skip
        where = Where.from_environment(os.environ)

        def heads() -> str | None:
            if not settings.superseded_check:
                return None
            return read_head(forge, where, settings.expected_sha, "superseded-check")

        scope = self.scope = scope_from(values, self.doc)
        held = set(scope.quarantined)  # exact, whole-string match: `reno` is not `reno-stars`
        targets = [s for s in scope.tenants if s not in held]
        if scope.survey:
            runner.log(
                f"survey after a failed rollout ({runner.plain(scope.survey)}): reading the build of "
                f"{counted(len(targets), 'tenant')} in its scope; this step stays failed"
            )
        else:
            runner.log(
                f"verify: {counted(len(targets), 'tenant')} from {scope.source} must serve {settings.expected_sha}; "
                f"{len(held & set(scope.tenants))} quarantined; deadline {settings.timeout:g} s, "
                f"poll every {settings.interval:g} s"
            )
        for slug in scope.quarantined:
            runner.warning(f"tenant {slug} quarantined: not verified, needs individual recovery")
        self.seen = {slug: verdict.quarantined() for slug in scope.tenants if slug in held}
        self.polled = poll.Fleet(targets, {}, done=verdict.ANSWERED if scope.survey else verdict.DONE)
        head = heads()
        poll.poll(
            settings.tenants.client(settings.concurrency), self.polled, settings.expected_sha, head,
            timeout=settings.timeout, interval=settings.interval, concurrency=settings.concurrency,
            progress=_progress,
        )  # fmt: skip
        self.seen = {slug: self.polled.seen.get(slug) or self.seen[slug] for slug in scope.tenants}
        if any(s.state == State.STALE for s in self.seen.values()):
            self.seen = _ahead(self.seen, settings.expected_sha, head, heads)

    def stopped(self, signal: runner.Terminated) -> str:
        if self.polled is not None:
            stopped = Seen(State.UNREACHABLE, "not verified before the job was cancelled")
            self.seen = {s: self.polled.seen.get(s) or self.seen.get(s) or stopped for s in self.scope.tenants}
        return f"{signal} before the deadline; verdicts are partial"

    def end(self, given: StepInputs, failure: step.Failure | None) -> step.Ending:
        seen, scope = self.seen, self.scope
        # None when it never polled, or broke off part-way for another reason than a cancelled job (whose
        # partial verdicts are kept): counts would claim tenants it never judged.
        broke = failure is not None and not failure.cancelled
        counts = verdict.counts(seen) if self.polled is not None and not broke else None
        steps = {slug: verdict.next_step(s, scope.outcomes.get(slug)) for slug, s in seen.items()}
        if failure is not None:
            decided = verdict.Verdict(False, failure.message)
        else:
            assert self.settings is not None
            expected = self.settings.expected_sha
            decided = verdict.decide(seen, expected, source=scope.source, survey=scope.survey, outcomes=scope.outcomes)
        ok, message = decided.ok, decided.message
        doc = self._report(ok, message, counts, steps)
        section = doc["verify"]
        return step.Ending(
            ok=ok,
            message=f"verify: {message}",
            # A survey after the rollout's step fails this one too, but that step's ::error:: named the failure.
            error=not scope.announced,
            report_path=self.write_to or given.values["report"] or VERIFY_REPORT,
            report=doc,
            outputs={
                "ok": "true" if doc["ok"] else "false",  # the whole run's: the rollout's and verify's
                "verified-count": str(section["counts"]["verified"]) if counts else "",
                "failed-count": str(section["counts"]["failed"]) if counts else "",
            },
            summary=summary.render(ok, message, seen, counts, steps, survey=scope.survey, caution=decided.caution),
            warnings=[decided.caution] if decided.caution else [],
        )

    def _report(
        self, ok: bool, message: str, counts: dict[str, int] | None, steps: dict[str, str | None]
    ) -> dict[str, Any]:
        doc: dict[str, Any] = self.doc if self.doc is not None else {"schema_version": 1, "ok": True}
        tenants = []
        for slug, s in self.seen.items():
            record = s.record(slug) | {"next_step": steps.get(slug)}
            if self.scope.survey:
                record["rollout_outcome"] = self.scope.outcomes.get(slug)
            tenants.append(record)
        doc["verify"] = {
            "ok": ok,
            "verdict": "survey" if self.scope.survey else ("passed" if ok else "failed"),
            "mode": "survey" if self.scope.survey else "verify",
            "message": message,
            "expected_sha": self.settings.expected_sha if self.settings else "",
            "counts": counts or verdict.counts({}),
            "tenants": tenants,
            "elapsed_seconds": round(time.monotonic() - self.started, 3),
        }
        # The run's verdict, decided here once: the rollout's (when there is one) and verify's.
        rollout = doc.get("rollout") if self.doc is not None else None
        rollout_ok = bool(rollout.get("ok")) if isinstance(rollout, dict) else True
        doc["ok"] = rollout_ok and ok
        doc["message"] = rollout["message"] if ok and isinstance(rollout, dict) else message
        return doc


def _ahead(seen: dict[str, Seen], expected: str, head: str | None, heads: Callable[[], str | None]) -> dict[str, Seen]:
    """Stale tenants judged again against the branch's head as it is now: another run may have rolled
    the fleet forward while this one polled."""
    now = heads()
    if now is None or now == head:
        return seen
    return {
        slug: verdict.stale_or_superseded(s.build, expected, now) if s.state == State.STALE and s.build else s
        for slug, s in seen.items()
    }


def _progress(fleet: poll.Fleet, left: float) -> None:
    waiting = fleet.waiting()
    total = len(fleet.slugs)
    runner.log(f"verified {total - waiting}/{total}, waiting on {waiting}, {left:.0f} s left")


def main(argv: Sequence[str] | None = None) -> int:
    return step.run(Verify(), argv)


if __name__ == "__main__":
    sys.exit(main())
