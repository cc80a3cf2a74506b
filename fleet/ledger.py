"""The quarantine ledger's decisions: one open forge issue per quarantined tenant, the streak of rollouts
in a row that quarantined it, and when that streak escalates.

Pure: the forge client lists the open issues and hands them here as `Issue`s; `plan_ledger` says what to
open, comment on or close, and the client carries it out. The streak lives in the issue's body, in a
marker line (an HTML comment, invisible when rendered) that the ledger rewrites each time; a body whose
marker a person removed or garbled reads as no streak, and the streak starts at 1 again, with a warning.

Every text that came from the control plane is inert Markdown here: no @mention, no #reference, no
link, image or HTML; every text is scrubbed of the registered secrets.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fleet.markdown import clip
from fleet.runner import encodable, md, plain, scrub

TITLE = "fleet-rollout: tenant {slug} is quarantined"
_TITLE = re.compile(r"fleet-rollout: tenant (\S+) is quarantined")
MARKER = "<!-- fleet-rollout:streak={streak} -->"
_MARKER = re.compile(r"<!-- fleet-rollout:streak=(\S*?) -->")
_STREAK = re.compile(r"[1-9][0-9]{0,5}")  # a streak past 999999 rollouts is an edit, not a history
STREAK_LINE = "**Streak:** quarantined by {rollouts} in a row."
_STREAK_LINE = re.compile(r"^\*\*Streak:\*\* quarantined by .* in a row\.$", re.MULTILINE)
MAX_REASON = 1000  # characters of the control plane's reason in one issue or comment

# U+2060 WORD JOINER: invisible, and no word character, so what follows no longer starts a mention,
# a reference or an autolink.
JOINER = "\u2060"
_MENTION = re.compile(r"([@#])(?=\w)")
_AUTOLINK = re.compile(r"(?i)(://|\bwww\.)")


def title(slug: str) -> str:
    """The one title of a tenant's issue."""
    return TITLE.format(slug=slug)


def slug_of(text: str) -> str | None:
    """The tenant an issue title names, only when the whole title is exactly `title(slug)`."""
    match = _TITLE.fullmatch(text)
    return match.group(1) if match else None


def rollouts(streak: int) -> str:
    return f"{streak} rollout" if streak == 1 else f"{streak} rollouts"


def read_streak(body: str) -> int | None:
    """The streak the body's marker holds; None when there is no marker, more than one, or a garbled one."""
    values = _MARKER.findall(body or "")
    if len(values) != 1 or not _STREAK.fullmatch(values[0]):
        return None
    return int(values[0])


def with_streak(body: str, streak: int) -> str:
    """`body` with its marker (and its visible streak line, when it has one) saying `streak`; the rest of
    the text stays as it is. A body without one readable marker gets a single new one at its end."""
    marker = MARKER.format(streak=streak)
    line = STREAK_LINE.format(rollouts=rollouts(streak))
    if len(_MARKER.findall(body)) == 1:
        body = _MARKER.sub(lambda _: marker, body)
    else:
        body = _MARKER.sub("", body).rstrip("\n") + "\n\n" + marker + "\n"
    if len(_STREAK_LINE.findall(body)) == 1:
        body = _STREAK_LINE.sub(lambda _: line, body)
    return body


def inert(text: object, limit: int = MAX_REASON) -> str:
    """Untrusted text as one line of inline Markdown that renders as itself and notifies nobody."""
    line = md(clip(str(text), limit))
    line = _MENTION.sub(lambda m: m.group(1) + JOINER, line)
    return _AUTOLINK.sub(lambda m: m.group(1)[:-1] + JOINER + m.group(1)[-1], line)


def code_block(text: str) -> str:
    """`text` in a fenced block whose fence no run of backticks inside it can close."""
    text = encodable(scrub(text))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}sh\n{text}\n{fence}"


@dataclass(frozen=True)
class Issue:
    """An open issue of the ledger, as the forge listed it."""

    number: int
    title: str
    body: str
    url: str

    @property
    def slug(self) -> str | None:
        return slug_of(self.title)


@dataclass(frozen=True)
class Run:
    """What one rollout did, as far as the ledger cares.

    `shipped`: the run succeeded (it shipped within the budget and, when verify ran, verify passed). A
    systemic, halted, failed, cancelled or dry run did not: it records nothing. `quarantined` maps each
    quarantined tenant to the reason the control plane gave; `redeployed` holds the tenants it redeployed
    onto the target (and verify confirmed, when it ran); `recovery` maps a tenant to its recovery command.
    """

    tag: str
    sha: str
    url: str  # GITHUB_SERVER_URL/GITHUB_REPOSITORY/actions/runs/GITHUB_RUN_ID
    shipped: bool
    quarantined: Mapping[str, str] = field(default_factory=dict)
    redeployed: frozenset[str] = frozenset()
    recovery: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Facts:
    """What an issue or a comment says about one quarantine."""

    slug: str
    reason: str
    tag: str
    sha: str
    run_url: str
    recovery: str
    streak: int


ISSUE_BODY = """\
The rollout of {tag} ({sha}) quarantined tenant **{slug}**: its redeploy failed, the rest of the fleet \
shipped, and it stays on its old build until it is recovered.

- **Tenant:** {slug}
- **Reason:** {reason}
- **Target:** {tag} at {sha}
- **Run:** {run_url}

{streak_line}

Once the cause is fixed, recover it with:

{recovery}

fleet-rollout keeps this issue: it comments here each time a rollout quarantines this tenant again, and \
closes it when a successful rollout redeploys it.

{marker}
"""

COMMENT_BODY = """\
Quarantined again by {run_url}.

- **Reason:** {reason}
- **Target:** {tag} at {sha}

{streak_line}

Recover it with:

{recovery}
"""

CLOSE_COMMENT = """\
Tenant **{slug}** was redeployed to {sha} by {run_url}, a rollout that succeeded: it is no longer \
quarantined, and its streak ends here.
"""


def _fields(facts: Facts) -> dict[str, str]:
    return {
        "slug": inert(facts.slug),
        "reason": inert(facts.reason) if facts.reason.strip() else "(the control plane gave none)",
        "tag": inert(facts.tag),
        "sha": inert(facts.sha),
        "run_url": plain(facts.run_url),
        "recovery": code_block(facts.recovery) if facts.recovery.strip() else "(no recovery command)",
        "streak_line": STREAK_LINE.format(rollouts=rollouts(facts.streak)),
        "marker": MARKER.format(streak=facts.streak),
    }


def issue_body(facts: Facts) -> str:
    """The body of a new issue: the facts, the recovery command, and the streak (visible and marked)."""
    return ISSUE_BODY.format(**_fields(facts))


def comment_body(facts: Facts) -> str:
    """The comment a quarantine again adds: the same facts and the new streak."""
    return COMMENT_BODY.format(**_fields(facts))


def close_comment(slug: str, sha: str, run_url: str) -> str:
    """The comment that closes the issue of a tenant a successful run redeployed."""
    return CLOSE_COMMENT.format(slug=inert(slug), sha=inert(sha), run_url=plain(run_url))


@dataclass(frozen=True)
class Open:
    """Open the tenant's issue, with the quarantine label."""

    slug: str
    title: str
    body: str
    streak: int


@dataclass(frozen=True)
class Comment:
    """Comment on the tenant's open issue, and rewrite its body (`body`) with the new streak."""

    issue: Issue
    slug: str
    comment: str
    body: str
    streak: int


@dataclass(frozen=True)
class Close:
    """Comment on the tenant's open issue (`comment`), then close it: the streak ends."""

    issue: Issue
    slug: str
    comment: str


Action = Open | Comment | Close


@dataclass(frozen=True)
class LedgerPlan:
    actions: tuple[Action, ...]
    streaks: dict[str, int]  # each quarantined tenant's streak, this run included
    warnings: tuple[str, ...]  # one line each, for ::warning::


def by_slug(issues: Iterable[Issue]) -> tuple[dict[str, Issue], list[str]]:
    """The open issue of each tenant, by the exact title; issues with other titles are not the ledger's.
    Two open issues for one tenant (one opened by hand): the oldest is the ledger's, with a warning."""
    found: dict[str, Issue] = {}
    warnings = []
    for issue in sorted(issues, key=lambda i: i.number):
        slug = issue.slug
        if slug is None:
            continue
        if slug in found:
            warnings.append(
                f"tenant {plain(slug)} has more than one open quarantine issue: #{found[slug].number} is kept, "
                f"#{issue.number} ({plain(issue.url)}) is left alone"
            )
            continue
        found[slug] = issue
    return found, warnings


def _facts(run: Run, slug: str, streak: int) -> Facts:
    reason = run.quarantined[slug]
    return Facts(slug, reason, run.tag, run.sha, run.url, run.recovery.get(slug, ""), streak)


def _again(run: Run, slug: str, issue: Issue) -> tuple[Comment, str | None]:
    """The comment for a tenant quarantined again, and the warning when its streak was unreadable."""
    before = read_streak(issue.body)
    warning = None
    if before is None:
        warning = (
            f"the streak of tenant {plain(slug)} in issue #{issue.number} ({plain(issue.url)}) is unreadable "
            "(its marker line was edited or removed): it counts as 1 again"
        )
    streak = 1 if before is None else before + 1
    facts = _facts(run, slug, streak)
    return Comment(issue, slug, comment_body(facts), with_streak(issue.body, streak), streak), warning


def plan_ledger(run: Run, open_issues: Mapping[str, Issue]) -> LedgerPlan:
    """What the ledger does after `run`, given the open issues by tenant (see `by_slug`).

    A run that did not ship does nothing (a systemic run opens nothing and comments nothing). A shipped
    run opens an issue for each newly quarantined tenant (streak 1), comments on the open issue of each
    tenant quarantined again (streak + 1), and closes the open issue of each tenant it redeployed. A
    tenant the run did not touch keeps its issue and streak.
    """
    if not run.shipped:
        return LedgerPlan((), {}, ())
    actions: list[Action] = []
    streaks: dict[str, int] = {}
    warnings: list[str] = []
    for slug in run.quarantined:
        issue = open_issues.get(slug)
        if issue is None:
            actions.append(Open(slug, title(slug), issue_body(_facts(run, slug, 1)), 1))
            streaks[slug] = 1
            continue
        comment, warning = _again(run, slug, issue)
        actions.append(comment)
        streaks[slug] = comment.streak
        warnings += [warning] if warning else []
    for slug in sorted(run.redeployed - set(run.quarantined)):
        issue = open_issues.get(slug)
        if issue is not None:
            actions.append(Close(issue, slug, close_comment(slug, run.sha, run.url)))
    return LedgerPlan(tuple(actions), streaks, tuple(warnings))


def chronic(streaks: Mapping[str, int], limit: int | None) -> list[str]:
    """The tenants at or over the streak limit (None: never escalate), longest streak first."""
    if limit is None:
        return []
    return sorted((slug for slug, n in streaks.items() if n >= limit), key=lambda s: (-streaks[s], s))


def escalation(streaks: Mapping[str, int], limit: int | None, urls: Mapping[str, str]) -> list[str]:
    """One ::error:: line for each chronic tenant: its streak and its issue's address."""
    return [
        f"tenant {plain(slug)} has been quarantined by {rollouts(streaks[slug])} in a row "
        f"(max-quarantine-streak {limit}): {plain(urls.get(slug) or 'its issue could not be recorded')}"
        for slug in chronic(streaks, limit)
    ]


def unrecorded(what: str, why: str, escalation_skipped: bool) -> str:
    """The one warning when the issue tracker fails: what could not be recorded and why; the rollout's
    verdict and exit code stay as they were."""
    skipped = "; the max-quarantine-streak check was skipped" if escalation_skipped else ""
    return f"the quarantine ledger could not record {plain(what)}: {plain(why)}{skipped}"
