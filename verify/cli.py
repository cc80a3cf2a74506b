"""`python -m verify`: the verify step, after a rollout (its report) or on its own: the tenants from a
redeploy-fleet answer (--response) or from --slugs, the quarantine from the answer's stragglers or from
--stragglers. Verify never calls the control plane. Its work returns what it saw (Checked); the run's
verdict, from the rollout's in the report and verify's own, is fleet.verdict's."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fleet import inputs, ledger, quarantine, runner, step
from fleet.forge import Forge, Where, read_head
from fleet.inputs import StepInputs
from fleet.quarantine import LedgerSettings, Record
from fleet.verdict import SHIPPING, RolloutEnd, RunVerdict, VerifyEnd, run_verdict
from fleet.vocabulary import Outcome, RolloutVerdict, State, VerifyMode, VerifyVerdict, counted
from verify import poll, summary, verdict
from verify.settings import Scope, Settings, read_report, scope_from, settings_from
from verify.verdict import Seen

NAMES = inputs.flags(inputs.VERIFY)

VERIFY_REPORT = "fleet-verify-report.json"  # without --report: never the rollout's default file
CANCELLED = Seen(State.UNREACHABLE, "not verified before the job was cancelled")


@dataclass(frozen=True)
class Checked:
    """What verify did, as far as it got: where its report goes, the rollout's report it read, its
    settings and scope, the quarantined tenants' verdicts, the poll (whose verdicts its workers fill in
    as they go) and, once it is over, every tenant's verdict."""

    write_to: str
    doc: dict[str, Any] | None = None
    settings: Settings | None = None
    scope: Scope = field(default_factory=lambda: Scope([], [], ""))
    held: dict[str, Seen] = field(default_factory=dict)
    polled: poll.PollState | None = None
    seen: dict[str, Seen] | None = None
    ledger: Record | None = None  # the issues closed for the tenants a successful run verified

    def verdicts(self, cancelled: bool) -> dict[str, Seen]:
        """Each tenant's verdict: the final ones, or, when the poll stopped short, what it saw so far
        (after a cancelled job, a tenant it never judged is unreachable)."""
        if self.seen is not None:
            return self.seen
        if self.polled is None:
            return dict(self.held)
        seen = {s: self.polled.seen.get(s) or self.held.get(s) or (CANCELLED if cancelled else None)
                for s in self.scope.slugs}  # fmt: skip
        return {slug: s for slug, s in seen.items() if s is not None}


class Verify(step.Step[Checked]):
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

    def work(self, given: StepInputs) -> Checked:
        values = given.values
        # A report that cannot be read is kept as it is: verify writes beside it.
        checked = Checked(values["report"] + ".verify.json" if values["report"] else VERIFY_REPORT)
        try:
            if values["report"]:
                doc = read_report(values["report"], elsewhere=bool(values["slugs"] or values["response"]))
                checked = replace(checked, doc=doc, write_to=values["report"])
            settings = settings_from(values)
            keeping = quarantine.ledger_settings(values)
            checked = replace(checked, settings=settings)
            scope = scope_from(values, checked.doc)
            quarantined = set(scope.quarantined)
            held = {slug: verdict.quarantined() for slug in scope.slugs if slug in quarantined}
            targets = [s for s in scope.slugs if s not in held]  # exact, whole-string: `reno` is not `reno-stars`
            _announce(scope, settings, targets)
            state = poll.PollState(targets, {}, done=verdict.ANSWERED if scope.survey else verdict.DONE)
            checked = replace(checked, scope=scope, held=held, polled=state)
            checked = replace(checked, seen=_poll(given, settings, scope, state, held))
            return replace(checked, ledger=_close(given, checked, keeping))
        except (Exception, runner.Terminated) as exc:  # noqa: BLE001 - what was learned goes with the cause
            raise step.Partial(checked, exc) from None

    def stopped(self, signal: runner.Terminated, so_far: Checked | None) -> str:
        return f"{signal} before the deadline; verdicts are partial"

    def end(self, given: StepInputs, outcome: Checked | None, failure: step.Failure | None) -> step.Ending:
        checked = outcome or Checked(given.values["report"] or VERIFY_REPORT)
        scope = checked.scope
        seen = checked.verdicts(cancelled=failure is not None and failure.cancelled)
        # None when it never polled, or broke off part-way for another reason than a cancelled job (whose
        # partial verdicts are kept): counts would claim tenants it never judged.
        broke = failure is not None and not failure.cancelled
        counts = verdict.counts(seen) if checked.polled is not None and not broke else None
        steps = {slug: verdict.next_step(s, scope.outcomes.get(slug)) for slug, s in seen.items()}
        decided = _decide(checked, seen, failure)
        ended = VerifyEnd(_verify_verdict(decided.ok, scope), decided.message)
        run = run_verdict(_rollout_end(checked.doc), ended)
        doc = _report(checked, seen, ended, run, counts, steps, round(time.monotonic() - self.started, 3))
        return step.Ending(
            ok=decided.ok,
            message=f"verify: {decided.message}",
            # A survey after the rollout's step fails this one too, but that step's ::error:: named the failure.
            error=not scope.announced,
            report_path=checked.write_to,
            report=doc,
            outputs={
                "ok": "true" if run.ok else "false",  # the whole run's: the rollout's and verify's
                "verified-count": str(counts["verified"]) if counts else "",
                "failed-count": str(counts["failed"]) if counts else "",
            },
            summary=summary.render(
                decided.ok, decided.message, seen, counts, steps, survey=scope.survey, caution=decided.caution
            )  # fmt: skip
            + quarantine.section(checked.ledger),
            warnings=[decided.caution, *quarantine.warnings(checked.ledger)]
            if decided.caution
            else quarantine.warnings(checked.ledger),
        )


def _announce(scope: Scope, settings: Settings, targets: list[str]) -> None:
    if scope.survey:
        runner.log(
            f"survey after a failed rollout ({runner.plain(scope.survey)}): reading the build of "
            f"{counted(len(targets), 'tenant')} in its scope; this step stays failed"
        )
    else:
        held = len(set(scope.quarantined) & set(scope.slugs))
        runner.log(
            f"verify: {counted(len(targets), 'tenant')} from {scope.source} must serve {settings.expected_sha}; "
            f"{held} quarantined; deadline {settings.timeout:g} s, poll every {settings.interval:g} s"
        )
    for slug in scope.quarantined:
        runner.warning(f"tenant {slug} quarantined: not verified, needs individual recovery")


def _poll(
    given: StepInputs, settings: Settings, scope: Scope, state: poll.PollState, held: dict[str, Seen]
) -> dict[str, Seen]:
    """Poll the tenants to their verdicts; the stale ones are judged again against the branch's head as
    it is by then."""
    access = settings.tenant_access
    forge = Forge(settings.api_url, given.api_token, allow_http=access.allow_http, ca_bundle=access.ca_bundle)
    where = Where.from_environment(os.environ)

    def heads() -> str | None:
        if not settings.superseded_check:
            return None
        return read_head(forge, where, settings.expected_sha, "superseded-check")

    head = heads()
    poll.poll(
        access.client(settings.concurrency), state, settings.expected_sha, head,
        timeout=settings.timeout, interval=settings.interval, concurrency=settings.concurrency, progress=_progress,
    )  # fmt: skip
    seen = {slug: state.seen.get(slug) or held[slug] for slug in scope.slugs}
    if any(s.state == State.STALE for s in seen.values()):
        seen = _ahead(seen, settings.expected_sha, head, heads)
    return seen


def _close(given: StepInputs, checked: Checked, keeping: LedgerSettings) -> Record | None:
    """After a rollout that shipped and a verify that passed, the quarantine ledger closes the open issue
    of each tenant the rollout redeployed and verify found on target. None when there is no ledger to
    keep: it is off, or verify runs on its own (no rollout, so no run that redeployed anyone)."""
    doc = checked.doc or {}
    rollout = doc.get("rollout")
    if not keeping.on or not isinstance(rollout, dict) or checked.seen is None or checked.settings is None:
        return None
    if (doc.get("ledger") or {}).get("complete") is False:  # the tracker failed this run: said once, not again
        return None
    settings, seen = checked.settings, checked.seen
    shipped = rollout.get("verdict") in SHIPPING and not checked.scope.survey and _decide(checked, seen, None).ok
    run = ledger.Run("", settings.expected_sha, quarantine.run_url(os.environ), shipped, {}, _verified(doc, seen))
    access = settings.tenant_access
    forge = Forge(settings.api_url, given.api_token, allow_http=access.allow_http, ca_bundle=access.ca_bundle)
    return quarantine.keep(forge, Where.from_environment(os.environ), keeping, run)


def _verified(doc: dict[str, Any], seen: dict[str, Seen]) -> frozenset[str]:
    """The tenants the rollout in `doc` redeployed that verify found on target."""
    redeployed = {t.get("slug") for t in doc.get("tenants", []) if t.get("outcome") == Outcome.REDEPLOYED}
    return frozenset(slug for slug, s in seen.items() if s.state == State.VERIFIED and slug in redeployed)


def _decide(checked: Checked, seen: dict[str, Seen], failure: step.Failure | None) -> verdict.Verdict:
    if failure is not None:
        return verdict.Verdict(False, failure.message)
    assert checked.settings is not None
    scope = checked.scope
    expected = checked.settings.expected_sha
    return verdict.decide(seen, expected, source=scope.source, survey=scope.survey, outcomes=scope.outcomes)


def _verify_verdict(ok: bool, scope: Scope) -> VerifyVerdict:
    if scope.survey:
        return VerifyVerdict.SURVEY
    return VerifyVerdict.PASSED if ok else VerifyVerdict.FAILED


def _rollout_end(doc: dict[str, Any] | None) -> RolloutEnd | None:
    """How the rollout in the report ended, as it wrote it; None when verify runs on its own."""
    rollout = doc.get("rollout") if doc is not None else None
    if not isinstance(rollout, dict):
        return None
    return RolloutEnd(RolloutVerdict(rollout["verdict"]), rollout["message"], bool(rollout.get("touched")))


def _report(
    checked: Checked,
    seen: dict[str, Seen],
    ended: VerifyEnd,
    run: RunVerdict,
    counts: dict[str, int] | None,
    steps: dict[str, str | None],
    elapsed: float,
) -> dict[str, Any]:
    """The rollout's report (or a new one) with verify's part, and the run's verdict at the top."""
    scope = checked.scope
    top = {"ok": run.ok, "verdict": run.verdict, "message": run.message}
    doc: dict[str, Any] = checked.doc if checked.doc is not None else {"schema_version": 1} | top
    tenants = []
    for slug, s in seen.items():
        record = s.record(slug) | {"next_step": steps.get(slug)}
        if scope.survey:
            record["rollout_outcome"] = scope.outcomes.get(slug)
        tenants.append(record)
    doc["verify"] = {
        "ok": ended.verdict == VerifyVerdict.PASSED,
        "verdict": ended.verdict,
        "mode": VerifyMode.SURVEY if scope.survey else VerifyMode.VERIFY,
        "message": ended.message,
        "expected_sha": checked.settings.expected_sha if checked.settings else "",
        "counts": counts or verdict.counts({}),
        "tenants": tenants,
        "elapsed_seconds": elapsed,
    }
    if checked.ledger is not None:
        doc["ledger"] = quarantine.merged(doc.get("ledger"), checked.ledger)
    doc |= top
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


def _progress(state: poll.PollState, left: float) -> None:
    waiting = state.waiting()
    total = len(state.slugs)
    runner.log(f"verified {total - waiting}/{total}, waiting on {waiting}, {left:.0f} s left")


def main(argv: Sequence[str] | None = None) -> int:
    return step.run(Verify(), argv)


if __name__ == "__main__":
    sys.exit(main())
