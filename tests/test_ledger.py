"""The quarantine ledger's decisions as pure functions: titles, the streak marker, the texts, and the plan."""

from __future__ import annotations

import re

import pytest

from fleet import runner
from fleet.ledger import (
    JOINER,
    Close,
    Comment,
    Facts,
    Issue,
    Open,
    Run,
    by_slug,
    chronic,
    close_comment,
    comment_body,
    escalation,
    inert,
    issue_body,
    plan_ledger,
    read_streak,
    slug_of,
    title,
    unrecorded,
    with_streak,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
TAG = "sha-" + SHA
RUN_URL = "https://github.com/acme/platform/actions/runs/42"
NEXT_URL = "https://github.com/acme/platform/actions/runs/43"
RECOVERY = "fleet-rollout --slugs reno-stars --target-tag " + TAG
HOSTILE = "@team see ![x](http://evil.example/p.png) <img src=x onerror=alert(1)> [link](https://x.io) www.evil.io"


def facts(streak: int = 1, reason: str = "healthz timeout", slug: str = "reno-stars") -> Facts:
    return Facts(slug, reason, TAG, SHA, RUN_URL, RECOVERY, streak)


def shipped(quarantined: dict[str, str] | None = None, redeployed: set[str] = frozenset(), **extra) -> Run:
    quarantined = quarantined or {}
    return Run(
        tag=TAG,
        sha=SHA,
        url=extra.pop("url", RUN_URL),
        shipped=extra.pop("shipped", True),
        quarantined=quarantined,
        redeployed=frozenset(redeployed),
        recovery={slug: f"fleet-rollout --slugs {slug}" for slug in quarantined},
    )


def open_issue(slug: str, streak: int | None, number: int = 7) -> Issue:
    body = issue_body(facts(streak, slug=slug)) if streak else "A person rewrote this issue."
    return Issue(number, title(slug), body, f"https://github.com/acme/platform/issues/{number}")


# -- titles -------------------------------------------------------------------------------------------


def test_the_title_names_the_tenant_and_reads_back_only_as_a_whole():
    assert title("reno-stars") == "fleet-rollout: tenant reno-stars is quarantined"
    assert slug_of(title("reno-stars")) == "reno-stars"
    assert slug_of(title("reno")) == "reno"
    for other in (
        "fleet-rollout: tenant reno-stars is quarantined again",
        "Re: fleet-rollout: tenant reno is quarantined",
        "fleet-rollout: tenant  is quarantined",
        "fleet-rollout: tenant reno stars is quarantined",
        "fleet-rollout: tenant reno is quarantined ",
        "fleet-rollout: tenant reno is Quarantined",
    ):
        assert slug_of(other) is None, other


def test_by_slug_keeps_the_ledgers_issues_and_the_oldest_of_two():
    issues = [
        Issue(9, title("reno-stars"), "", "u9"),
        Issue(3, title("reno-stars"), "", "u3"),
        Issue(4, title("reno"), "", "u4"),
        Issue(5, "fleet-rollout: tenant reno-stars is quarantined (copy)", "", "u5"),
        Issue(6, "Deploy dashboard", "", "u6"),
    ]
    found, warnings = by_slug(issues)
    assert {slug: issue.number for slug, issue in found.items()} == {"reno-stars": 3, "reno": 4}
    assert warnings == ["tenant reno-stars has more than one open quarantine issue: #3 is kept, #9 (u9) is left alone"]


# -- the streak marker --------------------------------------------------------------------------------


def test_a_new_issue_body_holds_streak_1_visibly_and_in_its_marker():
    body = issue_body(facts(1))
    assert read_streak(body) == 1
    assert "<!-- fleet-rollout:streak=1 -->" in body
    assert "**Streak:** quarantined by 1 rollout in a row." in body


def test_with_streak_rewrites_the_marker_and_the_visible_line_only():
    body = issue_body(facts(1)) + "\nA note a person added.\n"
    again = with_streak(body, 4)
    assert read_streak(again) == 4
    assert "**Streak:** quarantined by 4 rollouts in a row." in again
    assert again.replace("streak=4", "streak=1").replace("4 rollouts", "1 rollout") == body


@pytest.mark.parametrize(
    "body",
    [
        "",
        "A person rewrote the whole issue.",
        "<!-- fleet-rollout:streak=two -->",
        "<!-- fleet-rollout:streak=0 -->",
        "<!-- fleet-rollout:streak=-3 -->",
        "<!-- fleet-rollout:streak=02 -->",
        "<!-- fleet-rollout:streak=99999999 -->",
        "<!-- fleet-rollout:streak=2 -->\n<!-- fleet-rollout:streak=5 -->",
        "<!-- fleet-rollout:streak= 2 -->",
    ],
)
def test_a_missing_garbled_or_doubled_marker_is_unreadable(body):
    assert read_streak(body) is None


def test_with_streak_repairs_a_body_without_one_readable_marker():
    for body in ("A person rewrote it.", "x <!-- fleet-rollout:streak=2 --> y <!-- fleet-rollout:streak=9 -->"):
        repaired = with_streak(body, 1)
        assert read_streak(repaired) == 1
        assert repaired.count("fleet-rollout:streak=") == 1


# -- the texts ----------------------------------------------------------------------------------------


def test_the_issue_body_states_every_fact():
    body = issue_body(facts(1))
    for fact in ("- **Tenant:** reno-stars", "- **Reason:** healthz timeout", f"- **Target:** {TAG} at {SHA}"):
        assert fact in body, fact
    assert f"- **Run:** {RUN_URL}" in body
    assert "```sh\n" + RECOVERY + "\n```" in body


def test_a_comment_states_the_same_facts_and_the_new_streak():
    text = comment_body(facts(3))
    assert "healthz timeout" in text and SHA in text and RUN_URL in text and RECOVERY in text
    assert "**Streak:** quarantined by 3 rollouts in a row." in text
    assert "fleet-rollout:streak" not in text  # the streak is kept in the issue's body, not in comments


def test_the_close_comment_names_the_sha_and_the_run():
    text = close_comment("reno-stars", SHA, NEXT_URL)
    assert SHA in text and NEXT_URL in text and "reno-stars" in text


def test_a_hostile_reason_comes_out_inert():
    for text in (issue_body(facts(1, HOSTILE)), comment_body(facts(2, HOSTILE))):
        reason = next(line for line in text.splitlines() if line.startswith("- **Reason:**"))
        assert not re.search(r"@\w", reason)  # no mention
        assert f"@{JOINER}team" in reason
        assert not re.search(r"(?<!\\)[\[\]]", reason)  # every bracket escaped: no image, no link
        assert "<img" not in reason and "<" not in reason  # no HTML
        assert "://" not in reason and "www." not in reason  # no autolink
        assert "evil" in reason  # still readable


def test_inert_defuses_references_emails_and_a_reason_that_spans_lines():
    line = inert("closes #12, mail ops@acme.io\n- **Reason:** forged\n<!-- fleet-rollout:streak=99 -->")
    assert "\n" not in line and f"#{JOINER}12" in line and f"@{JOINER}acme" in line
    assert read_streak(issue_body(facts(1, "<!-- fleet-rollout:streak=99 -->"))) == 1


def test_a_long_reason_is_cut():
    assert len(inert("x" * 5000)) <= 1000


def test_a_recovery_command_cannot_close_its_code_block():
    body = issue_body(Facts("acme", "r", TAG, SHA, RUN_URL, "run ```echo``` now", 1))
    assert "````sh\nrun ```echo``` now\n````" in body


def test_no_token_reaches_an_issue_or_a_comment():
    token = "cp-token-0123456789abcdef"
    runner.register_secret(token)
    leaky = Facts("acme", f"401 for Bearer {token}", TAG, SHA, RUN_URL, f"CP_TOKEN={token} fleet-rollout", 2)
    for text in (issue_body(leaky), comment_body(leaky), unrecorded(f"issue {token}", f"why {token}", True)):
        assert token not in text


# -- the plan -----------------------------------------------------------------------------------------


def test_a_quarantined_tenant_without_an_issue_gets_one_at_streak_1():
    plan = plan_ledger(shipped({"reno-stars": "healthz timeout"}), {})
    assert plan.streaks == {"reno-stars": 1} and plan.warnings == ()
    (action,) = plan.actions
    assert isinstance(action, Open)
    assert action.title == "fleet-rollout: tenant reno-stars is quarantined" and action.streak == 1
    assert read_streak(action.body) == 1 and "healthz timeout" in action.body


def test_a_tenant_quarantined_again_gets_a_comment_never_a_second_issue():
    issue = open_issue("reno-stars", 2)
    plan = plan_ledger(shipped({"reno-stars": "healthz timeout"}, url=NEXT_URL), {"reno-stars": issue})
    (action,) = plan.actions
    assert isinstance(action, Comment) and action.issue == issue and action.streak == 3
    assert read_streak(action.body) == 3  # the body the client writes back
    assert NEXT_URL in action.comment and "3 rollouts in a row" in action.comment
    assert plan.streaks == {"reno-stars": 3} and plan.warnings == ()


def test_an_issue_whose_marker_a_person_removed_counts_as_1_again_with_a_warning():
    issue = open_issue("reno-stars", None)
    plan = plan_ledger(shipped({"reno-stars": "healthz timeout"}), {"reno-stars": issue})
    (action,) = plan.actions
    assert isinstance(action, Comment) and action.streak == 1 and read_streak(action.body) == 1
    assert action.body.startswith("A person rewrote this issue.")
    assert plan.warnings == (
        "the streak of tenant reno-stars in issue #7 (https://github.com/acme/platform/issues/7) is unreadable "
        "(its marker line was edited or removed): it counts as 1 again",
    )


def test_a_redeployed_tenant_has_its_issue_closed_with_the_sha_and_the_run():
    issue = open_issue("reno-stars", 3)
    plan = plan_ledger(shipped(redeployed={"reno-stars", "acme"}, url=NEXT_URL), {"reno-stars": issue})
    (action,) = plan.actions
    assert isinstance(action, Close) and action.issue == issue
    assert SHA in action.comment and NEXT_URL in action.comment
    assert plan.streaks == {}


def test_a_run_that_did_not_touch_a_tenant_leaves_its_issue_alone():
    issues = {"reno-stars": open_issue("reno-stars", 2), "dune": open_issue("dune", 1, number=8)}
    plan = plan_ledger(shipped(redeployed={"acme"}), issues)
    assert plan.actions == () and plan.streaks == {}


def test_a_run_that_did_not_ship_records_nothing():
    """Systemic (over budget), halted, failed, a dry run, or verify failed: no issue opened, commented or closed."""
    issues = {"reno-stars": open_issue("reno-stars", 2)}
    run = shipped({"dune": "healthz timeout"}, redeployed={"reno-stars"}, shipped=False)
    plan = plan_ledger(run, issues)
    assert plan.actions == () and plan.streaks == {} and plan.warnings == ()


def test_a_run_opens_comments_and_closes_together():
    issues = {"reno-stars": open_issue("reno-stars", 1), "dune": open_issue("dune", 4, number=8)}
    run = shipped({"reno-stars": "r1", "cobalt": "r2"}, redeployed={"dune", "acme"})
    plan = plan_ledger(run, issues)
    assert [(type(a).__name__, a.slug) for a in plan.actions] == [
        ("Comment", "reno-stars"),
        ("Open", "cobalt"),
        ("Close", "dune"),
    ]
    assert plan.streaks == {"reno-stars": 2, "cobalt": 1}


# -- escalation ---------------------------------------------------------------------------------------


def test_chronic_is_at_or_over_the_limit_and_empty_without_one():
    streaks = {"reno-stars": 3, "cobalt": 1, "dune": 5, "acme": 3}
    assert chronic(streaks, 3) == ["dune", "acme", "reno-stars"]
    assert chronic(streaks, 6) == []
    assert chronic(streaks, None) == []
    assert chronic(streaks, 1) == ["dune", "acme", "reno-stars", "cobalt"]


def test_escalation_names_each_chronic_tenant_its_streak_and_its_issue():
    lines = escalation({"reno-stars": 3, "cobalt": 1}, 3, {"reno-stars": "https://x/issues/7"})
    assert lines == [
        "tenant reno-stars has been quarantined by 3 rollouts in a row (max-quarantine-streak 3): https://x/issues/7"
    ]
    assert escalation({"reno-stars": 3}, None, {}) == []


def test_the_ledger_warning_says_what_was_not_recorded_and_that_escalation_was_skipped():
    assert unrecorded("the issue of reno-stars", "403 Forbidden", True) == (
        "the quarantine ledger could not record the issue of reno-stars: 403 Forbidden; "
        "the max-quarantine-streak check was skipped"
    )
    assert "skipped" not in unrecorded("x", "y", False)
