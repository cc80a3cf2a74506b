"""The quarantine ledger kept on the forge: read the open issues, carry out the plan `fleet.ledger` makes
of them, and say what was recorded. The ledger never blocks a deploy: a call that fails stops the
ledger there with one warning naming what was not recorded and why, the escalation check is skipped,
and the run's verdict is what it would have been without the ledger.

Two steps keep it. The rollout step, once the fleet shipped, opens or comments on the issue of each
quarantined tenant and checks the streak limit; it closes the issues of the tenants it redeployed only
when no verify follows. Otherwise the verify step closes them, for the tenants it verified on target,
once verify passed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fleet import ledger, markdown, runner
from fleet.contract import BadInput, show
from fleet.forge import Forge, ForgeError, Where
from fleet.inputs import Typed, integer
from fleet.vocabulary import listed

MAX_LABEL = 50  # GitHub's longest label name


@dataclass(frozen=True)
class LedgerSettings:
    on: bool
    label: str
    limit: int | None  # max-quarantine-streak; None: never escalate


def ledger_settings(values: Mapping[str, str]) -> LedgerSettings:
    """The ledger's inputs, checked before any call (a bad one is bad input). A step that does not read
    max-quarantine-streak (verify) never escalates."""
    on = Typed(values).boolean("quarantine-issues")
    label = values["quarantine-label"]
    if not label or len(label) > MAX_LABEL or "," in label or not label.isprintable():
        raise BadInput(
            f"quarantine-label must be 1 to {MAX_LABEL} printable characters without a comma: got {show(label)}"
        )
    text = values.get("max-quarantine-streak", "")
    limit = integer("max-quarantine-streak", text, 1) if text else None
    if limit is not None and not on:
        raise BadInput("max-quarantine-streak needs quarantine-issues: true (the streak lives in the issues)")
    return LedgerSettings(on, label, limit)


def run_url(environ: Mapping[str, str]) -> str:
    """The run's page, GITHUB_SERVER_URL/GITHUB_REPOSITORY/actions/runs/GITHUB_RUN_ID, as the issues link it."""
    parts = [environ.get(name, "") for name in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    if not all(parts):
        return "a run outside Actions (no GITHUB_RUN_ID)"
    return f"{parts[0].rstrip('/')}/{parts[1]}/actions/runs/{parts[2]}"


@dataclass
class Record:
    """What the ledger did in one step: each issue opened, commented on or closed, the quarantined
    tenants' streaks, its warnings, and whether every call went through (`checked`: only then is the
    streak limit checked)."""

    label: str
    limit: int | None
    issues: list[dict[str, Any]] = field(default_factory=list)
    streaks: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    checked: bool = True

    @property
    def chronic(self) -> list[str]:
        return ledger.chronic(self.streaks, self.limit) if self.checked else []

    def escalation(self) -> list[str]:
        """One line per chronic tenant: its streak and its issue's address."""
        urls = {entry["tenant"]: entry["url"] for entry in self.issues}
        return ledger.escalation(self.streaks, self.limit, urls) if self.checked else []

    def part(self) -> dict[str, Any]:
        """The report's `ledger`."""
        return {
            "label": self.label,
            "max_streak": self.limit,
            "issues": self.issues,
            "streaks": self.streaks,
            "chronic": self.chronic,
            "escalation_checked": self.checked and self.limit is not None,
            "complete": self.checked,  # every call went through
            "warnings": self.warnings,
        }


def keep(forge: Forge, where: Where, settings: LedgerSettings, run: ledger.Run) -> Record:
    """Carry out what the ledger does after `run`; never raises."""
    record = Record(settings.label, settings.limit)
    if not settings.on or not run.shipped or not (run.quarantined or run.redeployed):
        return record
    escalates = settings.limit is not None and bool(run.quarantined)
    what = _pending(run.quarantined, run.redeployed)
    try:
        found, doubled = ledger.by_slug(forge.issues(where, settings.label))
        plan = ledger.plan_ledger(run, found)
        record.streaks = dict(plan.streaks)
        record.warnings += [*doubled, *plan.warnings]
        for done, action in enumerate(plan.actions):
            what = _left(plan.actions[done:])
            record.issues.append(_carry(forge, where, settings.label, action))
    except ForgeError as exc:
        return _failed(record, what, str(exc), escalates)
    except Exception as exc:  # noqa: BLE001 - the ledger never blocks a deploy
        return _failed(record, what, runner.internal_error(exc), escalates)
    return record


def _carry(forge: Forge, where: Where, label: str, action: ledger.Action) -> dict[str, Any]:
    """One action on the forge, and its entry in the report. A quarantine again rewrites the body's
    streak before it comments: the streak is the ledger's memory, the comment its news."""
    if isinstance(action, ledger.Open):
        issue = forge.open_issue(where, action.title, action.body, label)
        return _entry(action.slug, "opened", issue, action.streak)
    if isinstance(action, ledger.Comment):
        forge.edit(where, action.issue.number, body=action.body)
        forge.comment(where, action.issue.number, action.comment)
        return _entry(action.slug, "commented", action.issue, action.streak)
    forge.comment(where, action.issue.number, action.comment)
    forge.edit(where, action.issue.number, state="closed")
    return _entry(action.slug, "closed", action.issue, None)


def _entry(slug: str, done: str, issue: ledger.Issue, streak: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"tenant": slug, "action": done, "number": issue.number, "url": issue.url}
    return entry | ({"streak": streak} if streak is not None else {})


def _failed(record: Record, what: str, why: str, escalates: bool) -> Record:
    record.checked = False
    record.warnings.append(ledger.unrecorded(what, why, escalates))
    return record


def _pending(quarantined: Sequence[str] | Mapping[str, str], redeployed: frozenset[str]) -> str:
    """What a run that could not read the ledger would have recorded."""
    parts = [f"the quarantine of {listed(sorted(quarantined))}"] if quarantined else []
    if redeployed:
        parts.append(f"the redeploy of {listed(sorted(redeployed))} (closing any open issue)")
    return " and ".join(parts)


def _left(actions: Sequence[ledger.Action]) -> str:
    quarantined = [a.slug for a in actions if not isinstance(a, ledger.Close)]
    return _pending(quarantined, frozenset(a.slug for a in actions if isinstance(a, ledger.Close)))


def merged(before: Any, record: Record) -> dict[str, Any]:
    """The report's `ledger` after a second step kept it too: its issues and warnings added, the streaks,
    the limit and the chronic tenants left as the rollout step found them."""
    part = record.part()
    if not isinstance(before, dict):
        return part
    return before | {
        "issues": [*before.get("issues", []), *record.issues],
        "warnings": [*before.get("warnings", []), *record.warnings],
    }


def section(record: Record | None) -> str:
    """The summary's section of a step that kept the ledger (none when it did not)."""
    return summary(record.part()) if record is not None else ""


def warnings(record: Record | None) -> list[str]:
    return list(record.warnings) if record is not None else []


ACTIONS = {"opened": "opened", "commented": "commented on", "closed": "closed"}
_SLUG = re.compile(r"[^\w.-]")


def summary(part: dict[str, Any] | None) -> str:
    """The section a step's summary ends with: each issue and what was done to it, and the warnings."""
    if not part or not (part.get("issues") or part.get("warnings")):
        return ""
    lines = ["", "", "### Quarantine ledger", ""]
    for entry in part.get("issues", [])[: markdown.SHOWN]:
        streak = entry.get("streak")
        said = f", streak {streak}" if streak else ""
        tenant = _SLUG.sub("", str(entry["tenant"]))
        lines.append(
            f"- `{tenant}`: issue #{entry['number']} {ACTIONS[entry['action']]}{said}: {runner.md(entry['url'])}"
        )
    lines += [f"- ⚠️ {runner.md(line)}" for line in part.get("warnings", [])]
    return "\n".join([*lines, ""])
