"""The sandbox control plane, tenant fleet and forge, exercised over real HTTP on loopback.

The sandbox is self-contained, and so are these tests: response shapes are checked here against the
contract, not through the project's schemas (which change independently).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import HTML_ERROR_PAGE, Sandbox, load_scenario, sha_for_tag
from sandbox.__main__ import first_sentence
from sandbox.scenario import DEFAULT_OLD_SHA, preset_names

ROOT = Path(__file__).resolve().parent.parent
EIGHT = ["acme", "birch", "cobalt", "dune", "reno-stars", "ember", "fjord", "harbor"]
TAG = "sha-" + "0123456789abcdef0123456789abcdef01234567"
NEW_SHA = "0123456789abcdef0123456789abcdef01234567"
IMAGE = "registry.example/app:" + TAG
REDEPLOY = "/cp/admin/tenants/redeploy-fleet"
SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
HEAD = "fedcba9876543210fedcba9876543210fedcba98"
NEWER = "1111111111111111111111111111111111111111"
NO_ISSUE_FAULTS = {"issues_status": None, "issue_write_status": None, "issues_delay": 0}


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def eight(**behaviours: str) -> dict:
    """The eight tenants of the presets, with some given a behaviour other than healthy."""
    return {"tenants": [{"slug": s, "behaviour": behaviours.get(s.replace("-", "_"), "healthy")} for s in EIGHT]}


@pytest.fixture
def start():
    """Start a sandbox for a scenario; every sandbox started is stopped after the test."""
    started: list[Sandbox] = []

    def _start(scenario: Any, **kwargs: Any) -> Sandbox:
        sb = Sandbox(scenario, **kwargs).start()
        started.append(sb)
        return sb

    yield _start
    for sb in started:
        sb.stop()


def cp(sb: Sandbox) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {sb.token}"
    return session


def check_response(doc: Any) -> dict:
    """The contract's redeploy answer: ok, results with a slug each, optional stragglers and error."""
    assert isinstance(doc, dict) and isinstance(doc["ok"], bool) and isinstance(doc["results"], list)
    assert all(isinstance(r, dict) and isinstance(r["slug"], str) for r in doc["results"])
    if "stragglers" in doc:
        assert isinstance(doc["stragglers"], list) and all(isinstance(s, str) for s in doc["stragglers"])
    if not doc["ok"]:
        assert isinstance(doc["error"], str) and doc["error"]
    return doc


def call(sb: Sandbox, **body: Any) -> requests.Response:
    """A redeploy-fleet call; target_tag and confirm: true (as the real caller sends) are filled in.

    ``confirm=None`` leaves confirm out.
    """
    body.setdefault("target_tag", TAG)
    if body.setdefault("confirm", True) is None:
        del body["confirm"]
    response = cp(sb).post(sb.url + REDEPLOY, json=body, timeout=10)
    if response.status_code in (200, 500) and response.headers["Content-Type"] == "application/json":
        if "ok" in response.json():  # the http_500 fault answers another shape
            check_response(response.json())
    return response


def redeploy(sb: Sandbox, **body: Any) -> dict:
    return call(sb, **body).json()


def dry_run(sb: Sandbox, **body: Any) -> list[dict]:
    response = call(sb, dry_run=True, **body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["ok"] is True and "stragglers" not in doc
    assert all(set(r) == {"slug", "phase", "ssm_status"} and r["ssm_status"] == "DryRun" for r in doc["results"])
    return doc["results"]


def enumerate_fleet(sb: Sandbox) -> list[str]:
    """The fleet as the contract enumerates it: the rows of an unscoped dry run."""
    return [r["slug"] for r in dry_run(sb)]


def fleet_slugs(slugs: list) -> list[str]:
    """What a client must do with an enumeration: refuse invalid and duplicate slugs."""
    seen: set[str] = set()
    for slug in slugs:
        if not isinstance(slug, str) or not SLUG.fullmatch(slug):
            raise ValueError(f"not a valid slug: {slug!r}")
        if slug in seen:
            raise ValueError(f"duplicate slug {slug!r}")
        seen.add(slug)
    return slugs


def buildinfo(sb: Sandbox, slug: str) -> dict:
    response = requests.get(sb.tenant_url(slug) + "/buildinfo", timeout=5)
    assert response.status_code == 200
    doc = response.json()
    assert isinstance(doc["git_sha"], str)
    return doc


def healthz(sb: Sandbox, slug: str, path: str = "/healthz") -> int:
    return requests.get(sb.tenant_url(slug) + path, timeout=5).status_code


def by_slug(doc: dict) -> dict:
    return {r["slug"]: r for r in doc["results"]}


def phases(doc: dict) -> list[tuple[str, str]]:
    return [(r["slug"], r["phase"]) for r in doc["results"]]


def untouched(sb: Sandbox) -> bool:
    return all(t["deployed_tag"] is None for t in sb.state()["tenants"].values())


def row(slug: str, phase: str, **changes: Any) -> dict:
    """A result row of a real call, verified unless `changes` say otherwise."""
    return {
        "slug": slug,
        "phase": phase,
        "ssm_status": "Success",
        "ssm_exit_code": 0,
        "healthz_ok": True,
        "verified_on_target": True,
        "error": None,
        "running_image": IMAGE,
        **changes,
    }


WEDGED_ROW = {"healthz_ok": False, "verified_on_target": False, "error": "healthz timeout"}
OLD_IMAGE = "registry.example/app:old-build"


# -- sha_for_tag and scenarios ---------------------------------------------------------------------


def test_sha_for_tag_serves_the_sha_named_in_the_tag():
    assert sha_for_tag(TAG) == NEW_SHA
    assert sha_for_tag("registry/app:ABCDEF1") == "abcdef1" + sha1("registry/app:ABCDEF1")[:33]
    assert sha_for_tag("release-2024-deadbeef").startswith("deadbeef")
    assert sha_for_tag("v1.2.3") == sha1("v1.2.3")
    assert sha_for_tag("sha-abc12") == sha1("sha-abc12")  # too short to be a sha
    assert all(re.fullmatch("[0-9a-f]{40}", sha_for_tag(t)) for t in ("x", "sha-" + "F" * 40, "a:b-c"))


NEW_PRESETS = {"ignores-scope", "rejects-scope", "gateway-flake", "no-stragglers-key", "real", "stopped"}


def test_presets_load_with_descriptions():
    old = {"incident", "clean", "systemic", "canary-fails", "stale", "slow", "large"}
    assert old | NEW_PRESETS <= set(preset_names())
    for name in preset_names():
        scenario = load_scenario(name)
        assert scenario["description"], name
        assert scenario["token"] == "sandbox-token"
        assert scenario["forge"]["token"] == "forge-token"
    incident = load_scenario("incident")
    assert [t["slug"] for t in incident["tenants"]] == EIGHT
    assert [t["slug"] for t in incident["tenants"] if t["behaviour"] == "wedged"] == ["reno-stars"]
    assert incident["old_sha"] == DEFAULT_OLD_SHA == sha1("old-build")
    assert incident["health_paths"] == ["/healthz", "/health"]
    large = load_scenario("large")
    assert len(large["tenants"]) == 1000 and large["latency_ms"] == 20
    assert large["tenants"][0]["slug"] == "tenant-0001" and large["tenants"][-1]["slug"] == "tenant-1000"
    assert [t["slug"] for t in load_scenario("canary-fails")["tenants"] if t["behaviour"] == "wedged"] == ["acme"]
    assert len([t for t in load_scenario("systemic")["tenants"] if t["behaviour"] == "wedged"]) == 3
    assert [(t["slug"], t["ready_after"]) for t in load_scenario("slow")["tenants"] if t["behaviour"] == "slow"] == [
        ("dune", 3)
    ]
    faults = {n: load_scenario(n)["control_plane"] for n in NEW_PRESETS}
    assert {n: (f["fault"], f["on"]) for n, f in faults.items() if f["fault"] != "none"} == {
        "ignores-scope": ("ignores_scope", "both"),
        "rejects-scope": ("rejects_scope", "both"),
        "gateway-flake": ("gateway_502", "redeploy"),
        "no-stragglers-key": ("no_stragglers_key", "redeploy"),
    }
    assert faults["gateway-flake"]["times"] == 1
    assert load_scenario("real")["health_paths"] == ["/health"]
    assert [t["slug"] for t in load_scenario("stopped")["tenants"] if t["behaviour"] == "stopped"] == ["dune"]
    assert [t["slug"] for t in load_scenario("no-stragglers-key")["tenants"] if t["behaviour"] == "wedged"] == [
        "reno-stars"
    ]


def test_scenario_from_a_file_and_normalized_twice(tmp_path):
    path = tmp_path / "mine.yml"
    path.write_text(
        "tenants: [solo, {slug: other, behaviour: slow}, {slug: idle, behaviour: stopped}]\n"
        "fleet: {count: 2, prefix: f-}\n"
        "health_paths: [/health, /status/live]\n"
        "control_plane: {fault: gateway_502, on: both, times: 2}\n"  # YAML 1.1 reads a bare `on` as true
        "forge:\n"
        "  repository: me/app\n"
        "  head: abc1234\n"
        "  variables: {PROD_AUTO_DEPLOY_DISABLED: 'false'}\n"
        "  after_calls: [{calls: 2, head: null}, {calls: 1, variables: {PROD_AUTO_DEPLOY_DISABLED: 'true', X: null}}]\n"
    )
    scenario = load_scenario(str(path))
    assert [t["slug"] for t in scenario["tenants"]] == ["solo", "other", "idle", "f-0001", "f-0002"]
    assert scenario["tenants"][1]["ready_after"] == 5
    assert scenario["deployed_tag"] is None
    assert scenario["health_paths"] == ["/health", "/status/live"]
    assert scenario["control_plane"] == {
        "fault": "gateway_502",
        "on": "both",
        "slow_seconds": 3.0,
        "times": 2,
        "missing": [],
        "unproven": [],
    }
    assert scenario["forge"] == {
        "token": "forge-token",
        "repository": "me/app",
        "branch": "main",
        "head": "abc1234",
        "variables": {"PROD_AUTO_DEPLOY_DISABLED": "false"},
        "variable_status": None,
        "after_calls": [
            {"calls": 2, "head": None},
            {"calls": 1, "variables": {"PROD_AUTO_DEPLOY_DISABLED": "true", "X": None}},
        ],
        "labels": [],
        "issues": [],
        "pull_requests": [],
        "issues_status": None,
        "issue_write_status": None,
        "issues_delay": 0,
        "new_label_status": None,
    }
    assert load_scenario(scenario) == scenario
    defaults = load_scenario({})
    assert defaults["control_plane"]["fault"] == "none" and defaults["control_plane"]["on"] == "redeploy"
    assert defaults["forge"]["head"] is None and defaults["forge"]["repository"] == "acme/platform"


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"tenants": [{"slug": "a", "behaviour": "wedge"}]}, "tenants[0].behaviour"),
        ({"tenants": [{"behaviour": "healthy"}]}, "slug"),
        ({"tenant": []}, "'tenant'"),
        ({"old_sha": "xyz"}, "old_sha"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"control_plane": {"fault": "boom"}}, "control_plane.fault"),
        ({"control_plane": {"fault": "http_500", "on": "list"}}, "'list' is gone"),
        ({"control_plane": {"fault": "gateway_502", "times": 0}}, "control_plane.times"),
        ({"control_plane": {"fault": "missing_tenant", "missing": ["ghost"]}}, "ghost"),
        ({"control_plane": {"fault": "unproven", "unproven": "acme"}}, "control_plane.unproven"),
        ({"fleet": {"count": "many"}}, "fleet.count"),
        ({"deployed_tag": 1234567}, "quote it"),
        ({"health_paths": []}, "health_paths"),
        ({"health_paths": ["health"]}, "health_paths"),
        ({"health_paths": ["/buildinfo"]}, "buildinfo"),
        ({"forge": {"repository": "platform"}}, "forge.repository"),
        ({"forge": {"branch": "release/1"}}, "forge.branch"),
        ({"forge": {"variables": {"KILL": True}}}, "quote it"),
        ({"forge": {"variables": {"KILL": None}}}, "forge.variables.KILL"),
        ({"forge": {"variable_status": 999}}, "forge.variable_status"),
        ({"forge": {"after_calls": [{"head": "abc1234"}]}}, "calls"),
        ({"forge": {"after_calls": [{"calls": 1}]}}, "neither"),
        ({"forge": {"after_calls": [{"calls": 0, "head": "abc1234"}]}}, "after_calls[0].calls"),
        ({"forge": {"secret": "x"}}, "'secret'"),
        ({"forge": {"issues": {"title": "x"}}}, "forge.issues"),
        ({"forge": {"issues": [{"body": "x"}]}}, "forge.issues[0]"),
        ({"forge": {"issues": [{"title": "x", "state": "merged"}]}}, "forge.issues[0].state"),
        ({"forge": {"issues": [{"title": "x", "labels": "a"}]}}, "forge.issues[0].labels"),
        ({"forge": {"issues": [{"title": "x", "number": 3}]}}, "'number'"),
        ({"forge": {"labels": [{"name": "a", "color": "red"}]}}, "forge.labels[0].color"),
        ({"forge": {"labels": ["a", "a"]}}, "twice"),
        ({"forge": {"pull_requests": -1}}, "forge.pull_requests"),
        ({"forge": {"issues_status": 99}}, "forge.issues_status"),
        ({"forge": {"issue_write_status": "403"}}, "forge.issue_write_status"),
        ({"forge": {"new_label_status": 1000}}, "forge.new_label_status"),
        ({"forge": {"issues_delay": -1}}, "forge.issues_delay"),
    ],
)
def test_bad_scenarios_are_refused_clearly(doc, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        load_scenario(doc)


def test_unknown_scenario_name_lists_the_presets():
    with pytest.raises(ValueError, match="incident"):
        load_scenario("no-such-scenario")


# -- control plane: one endpoint, auth, bad requests -----------------------------------------------


def test_there_is_no_listing_endpoint(start):
    sb = start("incident")
    for method in ("GET", "POST"):
        response = cp(sb).request(method, sb.url + "/cp/admin/tenants", timeout=5)
        assert response.status_code == 404 and "no such control plane path" in response.json()["error"]
    assert [(c["method"], c["status"], c["dry_run"]) for c in sb.cp_calls] == [
        ("GET", 404, False),
        ("POST", 404, False),
    ]


def test_dry_run_enumerates_the_fleet_in_scenario_order(start):
    sb = start("incident")
    response = call(sb, dry_run=True)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert fleet_slugs(enumerate_fleet(sb)) == EIGHT
    assert sb.cp_calls[-1] | {"time": 0} == {
        "method": "POST",
        "path": REDEPLOY,
        "body": {"target_tag": TAG, "dry_run": True, "confirm": True},
        "dry_run": True,
        "authorized": True,
        "status": 200,
        "time": 0,
    }
    assert sb.state()["real_calls"] == 0 and untouched(sb)


def test_dry_run_serves_invalid_and_duplicate_slugs_as_given(start):
    sb = start({"tenants": ["acme", "Bad_Slug", "acme", "trailing\n"]})
    listed = enumerate_fleet(sb)
    assert listed == ["acme", "Bad_Slug", "acme", "trailing\n"]
    with pytest.raises(ValueError, match="not a valid slug"):
        fleet_slugs(listed)
    twice = start({"tenants": ["acme", "birch", "acme"]})
    with pytest.raises(ValueError, match="duplicate slug 'acme'"):
        fleet_slugs(enumerate_fleet(twice))


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Basic sandbox-token", "sandbox-token", "token sandbox-token"]
)
def test_control_plane_requires_the_bearer_token(start, header):
    sb = start("clean")
    headers = {"Authorization": header} if header else {}
    for body in ({"target_tag": TAG, "confirm": True}, {"target_tag": TAG, "confirm": True, "dry_run": True}):
        response = requests.post(sb.url + REDEPLOY, json=body, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json()["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert [(c["authorized"], c["status"], c["dry_run"]) for c in sb.cp_calls] == [
        (False, 401, False),
        (False, 401, True),
    ]
    assert buildinfo(sb, "acme")["git_sha"] == DEFAULT_OLD_SHA


def test_custom_token_and_the_forge_token_is_not_the_cp_token(start):
    sb = start(dict(eight(), token="s3cret"))
    assert sb.token == "s3cret"
    assert call(sb, dry_run=True).status_code == 200
    for token in ("sandbox-token", sb.forge_token):
        bad = requests.post(
            sb.url + REDEPLOY, json={"target_tag": TAG}, headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        assert bad.status_code == 401


def body_of(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b'{"target_tag": "a", "target_tag": "b", "confirm": true}', "twice"),
        (b'{"target_tag": "a", "confirm": true, "soak_seconds": NaN}', "NaN"),
        (b"[]", "must be a JSON object"),
        (body_of(canary_slug="acme", confirm=True), "target_tag is required"),
        (body_of(target_tag="", confirm=True), "target_tag must not be empty"),
        (body_of(target_tag=7, confirm=True), "target_tag must be a string"),
        (body_of(target_tag=TAG, confirm=True, canary_slug=None), "canary_slug must be a string"),
        (body_of(target_tag=TAG, confirm=True, soak_seconds=-1), "soak_seconds"),
        (body_of(target_tag=TAG, confirm=True, soak_seconds=1.5), "soak_seconds"),
        (body_of(target_tag=TAG, confirm=True, batch_size=0), "batch_size"),
        (body_of(target_tag=TAG, confirm=True, batch_size=True), "batch_size"),
        (body_of(target_tag=TAG, confirm=True, max_stragglers="1"), "max_stragglers"),
        (body_of(target_tag=TAG, confirm=True, dry_run="yes"), "dry_run must be true or false"),
        (body_of(target_tag=TAG, confirm="true"), "confirm must be true or false"),
        (body_of(target_tag=TAG), "confirm: true is required for a fleet-wide redeploy"),
        (body_of(target_tag=TAG, confirm=False), "confirm: true is required for a fleet-wide redeploy"),
        (body_of(target_tag=TAG, dry_run=True), "confirm: true is required for a fleet-wide redeploy"),
        (body_of(target_tag=TAG, slugs=["acme"]), "confirm: true is required for a fleet-wide redeploy"),
        (body_of(target_tag=TAG, confirm=True, only_slugs=[]), "only_slugs must not be empty"),
        (body_of(target_tag=TAG, confirm=True, dry_run=True, only_slugs=[]), "only_slugs must not be empty"),
        (body_of(target_tag=TAG, only_slugs="acme"), "only_slugs must be a non-empty array"),
        (body_of(target_tag=TAG, only_slugs=["acme", 7]), "only_slugs must hold slugs"),
        (body_of(target_tag=TAG, only_slugs=["acme", "nowhere", "gone"]), "'nowhere', 'gone'"),
        (body_of(target_tag=TAG, only_slugs=["acme", "acme"]), "twice"),
        (body_of(target_tag=TAG, confirm=True, canary_slug="ghost"), "ghost"),
        (body_of(target_tag=TAG, only_slugs=["acme"], canary_slug="ghost"), "ghost"),
    ],
)
def test_bad_redeploy_body_is_400_and_changes_nothing(start, body, named):
    sb = start("clean")
    response = cp(sb).post(sb.url + REDEPLOY, data=body, headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 400
    doc = response.json()
    assert doc["ok"] is False and named in doc["error"], doc
    assert sb.cp_calls[-1]["status"] == 400
    assert untouched(sb)
    assert sb.state()["real_calls"] == 0


def test_unknown_field_slugs_is_ignored_so_the_call_is_fleet_wide(start):
    sb = start("clean")
    doc = redeploy(sb, slugs=["dune"], batch_size=8)  # the misnamed scope field, with confirm: true
    assert doc["ok"] is True and [r["slug"] for r in doc["results"]] == EIGHT
    assert all(buildinfo(sb, s)["git_sha"] == NEW_SHA for s in EIGHT)
    planned = dry_run(sb, slugs=["dune"], future_field={"x": 1})
    assert [r["slug"] for r in planned] == EIGHT


def test_unknown_paths_are_404_json(start):
    sb = start("clean")
    for response in (
        cp(sb).get(sb.url + "/cp/admin/nothing", timeout=5),
        requests.get(sb.url + "/elsewhere", timeout=5),
        requests.get(sb.url + "/t/nobody/healthz", timeout=5),
        requests.get(sb.url + "/t/acme/metrics", timeout=5),
        requests.get(sb.url + "/t/acme", timeout=5),
    ):
        assert response.status_code == 404
        assert response.json()["error"]
    wrong_method = cp(sb).get(sb.url + REDEPLOY, timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"


# -- control plane: dry runs and redeploys ---------------------------------------------------------


def test_dry_run_plans_canary_then_batches_and_changes_nothing(start):
    sb = start("incident")
    planned = dry_run(sb, canary_slug="reno-stars", batch_size=3)
    assert [(r["slug"], r["phase"]) for r in planned] == [
        ("reno-stars", "canary"),
        ("acme", "batch-1"),
        ("birch", "batch-1"),
        ("cobalt", "batch-1"),
        ("dune", "batch-2"),
        ("ember", "batch-2"),
        ("fjord", "batch-2"),
        ("harbor", "batch-3"),
    ]
    assert [r["phase"] for r in dry_run(sb)] == [f"batch-{n}" for n in range(1, 9)]  # batch_size defaults to 1
    assert untouched(sb)
    assert all(buildinfo(sb, s)["git_sha"] == DEFAULT_OLD_SHA for s in EIGHT)
    assert healthz(sb, "reno-stars") == 200
    scoped = dry_run(sb, only_slugs=["ember", "acme"], canary_slug="birch", batch_size=5)
    assert [(r["slug"], r["phase"]) for r in scoped] == [("ember", "batch-1"), ("acme", "batch-1")]
    assert [(r["slug"], r["phase"]) for r in dry_run(sb, only_slugs=["ember"], canary_slug="ember")] == [
        ("ember", "canary")
    ]
    assert [c["dry_run"] for c in sb.cp_calls] == [True] * 4
    assert sb.state()["real_calls"] == 0


def test_clean_redeploy_moves_every_tenant(start):
    sb = start("clean")
    assert {buildinfo(sb, s)["git_sha"] for s in EIGHT} == {DEFAULT_OLD_SHA}
    response = call(sb, canary_slug="acme", batch_size=3, soak_seconds=0)
    doc = response.json()
    assert response.status_code == 200 and doc["ok"] is True
    assert "stragglers" not in doc
    assert phases(doc) == [("acme", "canary")] + [
        (s, f"batch-{n}") for s, n in zip(EIGHT[1:], [1, 1, 1, 2, 2, 2, 3], strict=True)
    ]
    assert doc["results"][0] == row("acme", "canary")
    assert all(r == row(r["slug"], r["phase"]) for r in doc["results"])
    for slug in EIGHT:
        assert buildinfo(sb, slug) == {"git_sha": NEW_SHA, "tag": TAG}
        assert healthz(sb, slug) == 200
    assert sb.cp_calls[-1]["body"]["canary_slug"] == "acme"
    assert sb.cp_calls[-1]["dry_run"] is False
    assert sb.state()["real_calls"] == 1


def test_incident_within_budget_reports_the_straggler(start):
    sb = start("incident")
    response = call(sb, canary_slug="acme", batch_size=3, max_stragglers=1)
    doc = response.json()
    assert response.status_code == 200 and doc["ok"] is True
    assert doc["stragglers"] == ["reno-stars"]
    assert by_slug(doc)["reno-stars"] == row("reno-stars", "batch-2", **WEDGED_ROW, running_image=OLD_IMAGE)
    assert len(doc["results"]) == 8
    assert healthz(sb, "reno-stars") == 503
    assert buildinfo(sb, "reno-stars")["git_sha"] == DEFAULT_OLD_SHA
    assert buildinfo(sb, "harbor")["git_sha"] == NEW_SHA


def test_incident_strict_budget_halts_at_the_batch(start):
    sb = start("incident")
    response = call(sb, canary_slug="acme", batch_size=3)  # max_stragglers absent = 0
    doc = response.json()
    assert response.status_code == 500 and doc["ok"] is False
    assert doc["error"] == "1 stragglers, max tolerated 0"
    assert doc["stragglers"] == ["reno-stars"]
    # canary, batch-1 [birch cobalt dune], batch-2 [reno-stars ember fjord]; harbor never reached
    assert [r["slug"] for r in doc["results"]] == EIGHT[:7]
    assert buildinfo(sb, "fjord")["git_sha"] == NEW_SHA
    assert buildinfo(sb, "harbor")["git_sha"] == DEFAULT_OLD_SHA
    assert sb.state()["tenants"]["harbor"]["deployed_tag"] is None


def test_systemic_break_halts_and_leaves_later_batches_on_the_old_build(start):
    sb = start("systemic")
    doc = redeploy(sb, canary_slug="acme", batch_size=2, max_stragglers=1)
    assert doc["ok"] is False and doc["error"] == "2 stragglers, max tolerated 1"
    assert doc["stragglers"] == ["cobalt", "reno-stars"]
    assert phases(doc) == [
        ("acme", "canary"),
        ("birch", "batch-1"),
        ("cobalt", "batch-1"),
        ("dune", "batch-2"),
        ("reno-stars", "batch-2"),
    ]
    for slug in ("ember", "fjord", "harbor"):
        assert buildinfo(sb, slug)["git_sha"] == DEFAULT_OLD_SHA
        assert healthz(sb, slug) == 200


def test_canary_failure_stops_before_any_batch(start):
    sb = start("canary-fails")
    response = call(sb, canary_slug="acme", batch_size=3, max_stragglers=5, soak_seconds=30)
    doc = response.json()
    assert response.status_code == 500 and doc["ok"] is False
    assert doc["error"] == "canary acme failed: healthz timeout"
    assert doc["results"] == [row("acme", "canary", **WEDGED_ROW, running_image=OLD_IMAGE)]
    assert "stragglers" not in doc
    assert all(buildinfo(sb, s)["git_sha"] == DEFAULT_OLD_SHA for s in EIGHT[1:])


def test_canary_soaks_before_the_batches(start):
    sb = start("clean")
    seen: dict[str, str] = {}
    caller = threading.Thread(target=lambda: seen.update(doc=call(sb, canary_slug="acme", soak_seconds=1).text))
    began = time.monotonic()
    caller.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and buildinfo(sb, "acme")["git_sha"] != NEW_SHA:
        time.sleep(0.02)
    assert buildinfo(sb, "acme")["git_sha"] == NEW_SHA  # canary moved ...
    assert buildinfo(sb, "birch")["git_sha"] == DEFAULT_OLD_SHA  # ... the rest wait for the soak
    caller.join(10)
    assert time.monotonic() - began >= 1.0
    assert json.loads(seen["doc"])["ok"] is True
    assert buildinfo(sb, "birch")["git_sha"] == NEW_SHA


def test_scoped_call_touches_only_its_slugs_in_request_order(start):
    sb = start("clean")
    doc = redeploy(sb, only_slugs=["dune", "birch"], canary_slug="acme", batch_size=5)
    assert phases(doc) == [("dune", "batch-1"), ("birch", "batch-1")]
    assert buildinfo(sb, "dune")["git_sha"] == NEW_SHA
    assert buildinfo(sb, "acme")["git_sha"] == DEFAULT_OLD_SHA  # canary outside the scope: untouched
    doc = redeploy(sb, only_slugs=["cobalt"], canary_slug="cobalt", max_stragglers=0, soak_seconds=0, confirm=None)
    assert phases(doc) == [("cobalt", "canary")]
    assert "confirm" not in sb.cp_calls[-1]["body"]  # a scoped call needs no confirm
    assert sb.state()["real_calls"] == 2


def test_stopped_tenants_are_not_rollout_candidates(start):
    sb = start("stopped")
    rest = [s for s in EIGHT if s != "dune"]
    assert sb.slugs == EIGHT and sb.candidates == rest
    assert enumerate_fleet(sb) == rest
    assert healthz(sb, "dune") == 503 and healthz(sb, "dune", "/health") == 503
    assert requests.get(sb.tenant_url("dune") + "/buildinfo", timeout=5).status_code == 503
    for body in ({"only_slugs": ["acme", "dune"]}, {"only_slugs": ["dune"], "dry_run": True}):
        response = call(sb, **body)
        assert (
            response.status_code == 400
            and "stopped" in response.json()["error"]
            and "'dune'" in response.json()["error"]
        )
    assert call(sb, canary_slug="dune", dry_run=True).status_code == 400
    doc = redeploy(sb, batch_size=4)
    assert doc["ok"] is True and [r["slug"] for r in doc["results"]] == rest
    assert sb.state()["tenants"]["dune"]["deployed_tag"] is None
    assert healthz(sb, "dune") == 503


# -- tenants ---------------------------------------------------------------------------------------


def test_health_paths_default_and_real(start):
    sb = start("clean")
    assert healthz(sb, "acme", "/healthz") == 200 and healthz(sb, "acme", "/health") == 200
    real = start("real")
    assert healthz(real, "acme", "/health") == 200
    assert healthz(real, "acme", "/healthz") == 404
    assert buildinfo(real, "acme") == {"git_sha": DEFAULT_OLD_SHA, "tag": "old-build"}
    assert redeploy(real, batch_size=8)["ok"] is True
    assert healthz(real, "acme", "/health") == 200 and healthz(real, "acme", "/healthz") == 404
    assert buildinfo(real, "acme")["git_sha"] == NEW_SHA
    assert [(h["path"], h["status"]) for h in real.tenant_hits["acme"]] == [
        ("health", 200),
        ("healthz", 404),
        ("buildinfo", 200),
        ("health", 200),
        ("healthz", 404),
        ("buildinfo", 200),
    ]
    assert requests.get(real.url + "/sandbox/state", timeout=5).json()["health_paths"] == ["/health"]
    custom = start({"tenants": [{"slug": "w", "behaviour": "wedged"}], "health_paths": ["/status/live"]})
    assert healthz(custom, "w", "/status/live") == 200 and healthz(custom, "w", "/health") == 404
    redeploy(custom, max_stragglers=1)
    assert healthz(custom, "w", "/status/live") == 503


def test_tenants_before_a_redeploy_are_healthy_on_the_old_build(start):
    sb = start(
        {
            "tenants": [{"slug": b, "behaviour": b} for b in ("wedged", "slow", "stale", "flapping", "unreachable")],
            "old_sha": "ABCDEF0123456",
            "old_tag": "v1",
        }
    )
    for slug in sb.slugs:
        assert [healthz(sb, slug) for _ in range(2)] == [200, 200]
        assert buildinfo(sb, slug) == {"git_sha": "abcdef0123456", "tag": "v1"}


def test_slow_tenant_comes_up_after_ready_after(start):
    ready_after = 2.0  # wide enough that the first reads come before it, even on a loaded machine
    sb = start({"tenants": [{"slug": "dune", "behaviour": "slow", "ready_after": ready_after}]})
    sent = time.monotonic()
    result = redeploy(sb)["results"][0]
    assert result["verified_on_target"] is True and result["healthz_ok"] is True
    assert healthz(sb, "dune") == 503
    assert buildinfo(sb, "dune")["git_sha"] == DEFAULT_OLD_SHA
    assert sb.state()["tenants"]["dune"]["pending_sha"] == NEW_SHA
    # Wait for the event (healthy), bounded; it must not come before ready_after has passed.
    deadline = sent + ready_after + 10
    while healthz(sb, "dune") != 200:
        assert time.monotonic() < deadline, "the slow tenant never came up"
        time.sleep(0.05)
    assert time.monotonic() - sent >= ready_after
    assert buildinfo(sb, "dune")["git_sha"] == NEW_SHA


def test_stale_tenant_is_healthy_on_the_old_build_and_the_cp_says_verified(start):
    sb = start("stale")
    doc = redeploy(sb, batch_size=8)
    assert by_slug(doc)["cobalt"]["verified_on_target"] is True and "stragglers" not in doc
    assert [healthz(sb, "cobalt") for _ in range(3)] == [200, 200, 200]
    assert buildinfo(sb, "cobalt")["git_sha"] == DEFAULT_OLD_SHA
    assert buildinfo(sb, "birch")["git_sha"] == NEW_SHA


def test_flapping_tenant_alternates(start):
    sb = start({"tenants": [{"slug": "fjord", "behaviour": "flapping"}]})
    assert redeploy(sb)["results"][0]["verified_on_target"] is True
    assert [healthz(sb, "fjord") for _ in range(5)] == [200, 503, 200, 503, 200]
    assert buildinfo(sb, "fjord")["git_sha"] == NEW_SHA


def test_unreachable_tenant_drops_the_connection(start):
    sb = start({"tenants": ["acme", {"slug": "harbor", "behaviour": "unreachable"}]})
    assert healthz(sb, "harbor") == 200
    doc = redeploy(sb, max_stragglers=1)
    assert by_slug(doc)["harbor"] == row(
        "harbor",
        "batch-2",
        ssm_status="Undeliverable",
        ssm_exit_code=None,
        healthz_ok=None,
        verified_on_target=False,
        error="unreachable",
        running_image=None,
    )
    assert doc["stragglers"] == ["harbor"]
    for what in ("healthz", "buildinfo"):
        with pytest.raises(requests.ConnectionError):
            requests.get(sb.tenant_url("harbor") + "/" + what, timeout=5)
    assert healthz(sb, "acme") == 200
    assert [(h["path"], h["status"]) for h in sb.tenant_hits["harbor"]][-2:] == [("healthz", None), ("buildinfo", None)]


def test_cp_verified_overrides_what_the_cp_reports(start):
    sb = start(
        {
            "tenants": [
                {"slug": "liar", "behaviour": "wedged", "cp_verified": True},
                {"slug": "pessimist", "cp_verified": False},
            ]
        }
    )
    doc = redeploy(sb, max_stragglers=1)
    liar, pessimist = by_slug(doc)["liar"], by_slug(doc)["pessimist"]
    assert (liar["verified_on_target"], liar["healthz_ok"], liar["error"]) == (True, True, None)
    assert (pessimist["verified_on_target"], pessimist["healthz_ok"], pessimist["error"]) == (
        False,
        False,
        "healthz timeout",
    )
    assert doc["stragglers"] == ["pessimist"]
    assert healthz(sb, "liar") == 503 and buildinfo(sb, "liar")["git_sha"] == DEFAULT_OLD_SHA
    assert healthz(sb, "pessimist") == 200 and buildinfo(sb, "pessimist")["git_sha"] == NEW_SHA


def test_deployed_tag_starts_the_fleet_on_that_build(start):
    sb = start(dict(eight(reno_stars="wedged"), deployed_tag=TAG))
    assert buildinfo(sb, "acme") == {"git_sha": NEW_SHA, "tag": TAG}
    assert healthz(sb, "reno-stars") == 503
    assert buildinfo(sb, "reno-stars")["git_sha"] == DEFAULT_OLD_SHA
    assert sb.cp_calls == []


def test_tenant_hits_record_path_and_authorization(start):
    sb = start("clean")
    healthz(sb, "acme")
    requests.get(sb.tenant_url("acme") + "/buildinfo", headers={"Authorization": "Bearer x"}, timeout=5)
    hits = sb.tenant_hits
    assert [(h["path"], h["authorization"]) for h in hits["acme"]] == [("healthz", False), ("buildinfo", True)]
    assert hits["birch"] == []
    state = requests.get(sb.url + "/sandbox/state", timeout=5).json()
    assert state["tenant_hits"]["acme"] == 2 and state["tenant_hits"]["birch"] == 0
    assert state["tenants"]["acme"]["serving_sha"] == DEFAULT_OLD_SHA


def test_state_endpoint_shows_calls_builds_and_the_forge(start):
    sb = start(dict(load_scenario("incident"), forge={"head": HEAD, "variables": {"KILL": "false"}}))
    redeploy(sb, only_slugs=["acme"])
    state = requests.get(sb.url + "/sandbox/state", timeout=5).json()
    assert [(c["method"], c["status"], c["dry_run"], c["body"]["only_slugs"]) for c in state["cp_calls"]] == [
        ("POST", 200, False, ["acme"])
    ]
    assert state["real_calls"] == 1
    assert state["tenants"]["acme"]["deployed_tag"] == TAG
    assert state["tenants"]["acme"]["serving_sha"] == NEW_SHA
    assert state["tenants"]["reno-stars"]["behaviour"] == "wedged"
    assert state["forge"] == {
        "repository": "acme/platform",
        "branch": "main",
        "head": HEAD,
        "variables": {"KILL": "false"},
        **NO_ISSUE_FAULTS,
    }
    assert state["issues"] == [] and state["labels"] == []
    assert state["forge_calls"] == []
    forge_get(sb, "/github/repos/acme/platform/branches/main")
    assert [(c["path"], c["status"]) for c in sb.state()["forge_calls"]] == [
        ("/github/repos/acme/platform/branches/main", 200)
    ]


# -- control plane faults ---------------------------------------------------------------------------


def faulty(fault: str, on: str | None = None, **extra: Any) -> dict:
    spec = {"fault": fault, **extra} if on is None else {"fault": fault, "on": on, **extra}
    return dict(eight(reno_stars="wedged"), control_plane=spec)


def assert_html_502(response: requests.Response) -> None:
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.content == HTML_ERROR_PAGE
    with pytest.raises(ValueError):
        response.json()


def test_fault_http_500_on_real_calls_only(start):
    sb = start(faulty("http_500"))
    response = call(sb)
    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    assert "results" not in response.json()  # not the redeploy shape
    assert enumerate_fleet(sb) == EIGHT  # dry runs are not real calls
    assert untouched(sb)


def test_fault_html_error_on_both(start):
    sb = start(faulty("html_error", on="both"))
    for response in (call(sb, dry_run=True), call(sb)):
        assert_html_502(response)
    assert untouched(sb)


def test_fault_on_dry_run_leaves_real_calls_alone(start):
    sb = start(faulty("http_500", on="dry_run"))
    assert call(sb, dry_run=True).status_code == 500
    assert call(sb, dry_run=True, only_slugs=["acme"]).status_code == 500
    assert call(sb, max_stragglers=1).status_code == 200


def test_fault_slow(start):
    sb = start(faulty("slow", slow_seconds=0.4))
    began = time.monotonic()
    response = call(sb, max_stragglers=1)
    assert time.monotonic() - began >= 0.4
    assert response.status_code == 200 and response.json()["stragglers"] == ["reno-stars"]
    began = time.monotonic()
    dry_run(sb)
    assert time.monotonic() - began < 0.3


def test_fault_missing_tenant(start):
    sb = start(faulty("missing_tenant", missing=["cobalt"]))
    doc = redeploy(sb, max_stragglers=1)
    assert "cobalt" not in by_slug(doc) and len(doc["results"]) == 7
    assert buildinfo(sb, "cobalt")["git_sha"] == NEW_SHA  # deployed, just not reported
    assert "cobalt" in enumerate_fleet(sb)
    on_dry_runs = start(faulty("missing_tenant", on="dry_run", missing=["cobalt"]))
    assert "cobalt" not in enumerate_fleet(on_dry_runs)
    assert "cobalt" in by_slug(redeploy(on_dry_runs, max_stragglers=1))


def test_fault_ok_despite_unverified(start):
    sb = start(faulty("ok_despite_unverified"))
    response = call(sb, batch_size=3)  # strict budget, yet the CP claims success
    doc = response.json()
    assert response.status_code == 200 and doc["ok"] is True and "stragglers" not in doc
    assert by_slug(doc)["reno-stars"]["verified_on_target"] is False
    assert len(doc["results"]) == 8
    assert buildinfo(sb, "harbor")["git_sha"] == NEW_SHA


def test_fault_ignores_scope(start):
    sb = start("ignores-scope")
    assert [r["slug"] for r in dry_run(sb, only_slugs=["acme"])] == EIGHT  # the scoped dry run shows it
    doc = redeploy(sb, only_slugs=["acme"], batch_size=8)
    assert doc["ok"] is True and [r["slug"] for r in doc["results"]] == EIGHT
    assert all(buildinfo(sb, s)["git_sha"] == NEW_SHA for s in EIGHT)
    unconfirmed = call(sb, only_slugs=["acme"], confirm=None)  # only_slugs ignored: an unconfirmed fleet-wide call
    assert unconfirmed.status_code == 400 and "confirm: true is required" in unconfirmed.json()["error"]
    real_only = start(faulty("ignores_scope", on="redeploy"))
    assert [r["slug"] for r in dry_run(real_only, only_slugs=["acme"])] == ["acme"]
    assert len(redeploy(real_only, only_slugs=["acme"], max_stragglers=1)["results"]) == 8


def test_fault_rejects_scope(start):
    sb = start("rejects-scope")
    for body in ({"only_slugs": ["acme"]}, {"only_slugs": ["acme"], "dry_run": True}):
        response = call(sb, **body)
        assert response.status_code == 400
        assert response.json() == {"ok": False, "error": "unknown field: only_slugs"}
    assert untouched(sb)
    assert enumerate_fleet(sb) == EIGHT
    assert redeploy(sb, batch_size=8)["ok"] is True


def test_fault_gateway_502_flakes_the_first_real_call(start):
    sb = start("gateway-flake")
    assert enumerate_fleet(sb) == EIGHT  # dry runs pass untouched
    assert_html_502(call(sb, canary_slug="acme"))
    assert untouched(sb)  # the gateway answered without acting
    doc = redeploy(sb, canary_slug="acme")
    assert doc["ok"] is True and len(doc["results"]) == 8
    assert [(c["dry_run"], c["status"]) for c in sb.cp_calls] == [(True, 200), (False, 502), (False, 200)]
    twice = start(faulty("gateway_502", on="both", times=2))
    assert_html_502(call(twice, dry_run=True))
    assert_html_502(call(twice, only_slugs=["acme"]))
    assert call(twice, only_slugs=["acme"]).status_code == 200


def test_fault_no_stragglers_key(start):
    sb = start("no-stragglers-key")
    doc = redeploy(sb, max_stragglers=1, batch_size=3)
    assert doc["ok"] is True and "stragglers" not in doc
    assert by_slug(doc)["reno-stars"]["verified_on_target"] is False
    strict = start("no-stragglers-key")
    response = call(strict, batch_size=3)
    doc = response.json()
    assert response.status_code == 500 and doc["ok"] is False and "stragglers" not in doc
    assert doc["error"] == "1 stragglers, max tolerated 0"


@pytest.mark.parametrize("key", ["unproven", "missing"])
def test_fault_unproven_rows_have_no_verified_on_target(start, key):
    sb = start(dict(eight(reno_stars="wedged"), control_plane={"fault": "unproven", key: ["birch", "reno-stars"]}))
    doc = redeploy(sb, max_stragglers=1, batch_size=8)
    rows = by_slug(doc)
    assert "verified_on_target" not in rows["birch"] and "verified_on_target" not in rows["reno-stars"]
    assert rows["birch"] == {k: v for k, v in row("birch", "batch-1").items() if k != "verified_on_target"}
    assert rows["acme"]["verified_on_target"] is True and len(rows) == 8
    assert doc["stragglers"] == ["reno-stars"]  # the CP still knows; only the proof is missing
    assert buildinfo(sb, "birch")["git_sha"] == NEW_SHA


# -- live fleet changes ----------------------------------------------------------------------------


def test_set_behaviour_recovers_a_wedged_tenant(start):
    sb = start("incident")
    assert redeploy(sb, max_stragglers=1, batch_size=8)["stragglers"] == ["reno-stars"]
    assert healthz(sb, "reno-stars") == 503
    state = sb.set_behaviour("reno-stars", "healthy")
    assert state == {
        "slug": "reno-stars",
        "behaviour": "healthy",
        "deployed_tag": TAG,
        "serving_tag": "old-build",
        "serving_sha": DEFAULT_OLD_SHA,
        "pending_sha": None,
        "redeploys": 1,
        "cp_verified": None,
    }
    assert healthz(sb, "reno-stars") == 200
    assert buildinfo(sb, "reno-stars")["git_sha"] == DEFAULT_OLD_SHA  # no new build by itself
    doc = redeploy(sb, only_slugs=["reno-stars"])
    assert doc == {"ok": True, "results": [row("reno-stars", "batch-1")]}
    assert buildinfo(sb, "reno-stars")["git_sha"] == NEW_SHA


def test_set_behaviour_wedged_stale_and_stopped(start):
    sb = start("clean")
    sb.set_behaviour("acme", "wedged")
    assert healthz(sb, "acme") == 503  # unhealthy now, before any redeploy
    sb.set_behaviour("birch", "stale")
    sb.set_behaviour("cobalt", "stopped")
    assert "cobalt" not in enumerate_fleet(sb)
    doc = redeploy(sb, max_stragglers=1, batch_size=8)
    assert doc["stragglers"] == ["acme"]
    assert buildinfo(sb, "acme")["git_sha"] == DEFAULT_OLD_SHA
    assert by_slug(doc)["birch"]["verified_on_target"] is True
    assert healthz(sb, "birch") == 200 and buildinfo(sb, "birch")["git_sha"] == DEFAULT_OLD_SHA
    assert "cobalt" not in by_slug(doc) and healthz(sb, "cobalt") == 503
    sb.set_behaviour("cobalt", "healthy")
    assert healthz(sb, "cobalt") == 200 and "cobalt" in enumerate_fleet(sb)


def test_set_behaviour_abandons_a_slow_redeploy_not_yet_up(start):
    sb = start({"tenants": [{"slug": "dune", "behaviour": "slow", "ready_after": 30}]})
    redeploy(sb)
    assert sb.state()["tenants"]["dune"]["pending_sha"] == NEW_SHA
    assert sb.set_behaviour("dune", "healthy")["pending_sha"] is None
    assert healthz(sb, "dune") == 200 and buildinfo(sb, "dune")["git_sha"] == DEFAULT_OLD_SHA


def test_set_behaviour_refuses_bad_input(start):
    sb = start("clean")
    with pytest.raises(KeyError, match="nobody"):
        sb.set_behaviour("nobody", "healthy")
    with pytest.raises(ValueError, match="unknown behaviour 'fine'"):
        sb.set_behaviour("acme", "fine")


def test_set_behaviour_is_thread_safe_under_polling(start):
    sb = start({"fleet": {"count": 20}})
    redeploy(sb, batch_size=20)
    stop = threading.Event()

    def poll() -> set[int]:
        seen = set()
        while not stop.is_set():
            seen.add(healthz(sb, "tenant-0001"))
        return seen

    with ThreadPoolExecutor(4) as pool:
        pollers = [pool.submit(poll) for _ in range(4)]
        for n in range(50):
            sb.set_behaviour("tenant-0001", "wedged" if n % 2 else "healthy")
        stop.set()
        assert set().union(*(p.result() for p in pollers)) <= {200, 503}
    assert sb.state()["tenants"]["tenant-0001"]["behaviour"] == "wedged"


def test_set_behaviour_over_http(start):
    sb = start("incident")
    redeploy(sb, max_stragglers=1, batch_size=8)
    response = requests.post(sb.url + "/sandbox/tenants/reno-stars", json={"behaviour": "healthy"}, timeout=5)
    assert response.status_code == 200
    assert response.json()["slug"] == "reno-stars" and response.json()["behaviour"] == "healthy"
    assert healthz(sb, "reno-stars") == 200
    assert requests.get(sb.url + "/sandbox/tenants/reno-stars", timeout=5).json()["behaviour"] == "healthy"
    for path, body, status in (
        ("/sandbox/tenants/nobody", {"behaviour": "healthy"}, 404),
        ("/sandbox/tenants/acme", {"behaviour": "fine"}, 400),
        ("/sandbox/tenants/acme", {"behavior": "healthy"}, 400),
        ("/sandbox/tenants/acme", ["healthy"], 400),
    ):
        response = requests.post(sb.url + path, json=body, timeout=5)
        assert response.status_code == status and response.json()["error"]
    assert requests.post(sb.url + "/sandbox/tenants/acme", data=b"{", timeout=5).status_code == 400
    assert requests.put(sb.url + "/sandbox/tenants/acme", json={"behaviour": "healthy"}, timeout=5).status_code == 405
    assert requests.post(sb.url + "/sandbox/state", timeout=5).status_code == 405
    assert sb.state()["tenants"]["acme"]["behaviour"] == "healthy"


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *argv], cwd=ROOT, capture_output=True, text=True, timeout=30
    )


def test_cli_set_changes_a_running_sandbox(start):
    sb = start("incident")
    redeploy(sb, max_stragglers=1, batch_size=8)
    done = run_cli("set", "--url", sb.url, "--tenant", "reno-stars", "--behaviour", "healthy")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["behaviour"] == "healthy"
    assert healthz(sb, "reno-stars") == 200
    assert redeploy(sb, only_slugs=["reno-stars"])["results"][0]["verified_on_target"] is True
    unknown = run_cli("set", "--url", sb.url, "--tenant", "nobody", "--behaviour", "healthy")
    assert unknown.returncode == 1 and "404" in unknown.stderr and "nobody" in unknown.stderr
    bad = run_cli("set", "--url", sb.url, "--tenant", "acme", "--behaviour", "fine")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    sb.stop()
    gone = run_cli("set", "--url", sb.url, "--tenant", "acme", "--behaviour", "healthy")
    assert gone.returncode == 1 and "cannot reach" in gone.stderr


def test_cli_forge_changes_a_running_sandbox(start):
    sb = start("clean")
    done = run_cli("forge", "--url", sb.url, "--head", HEAD, "--variable", "KILL=true", "--variable", "X=a=b")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["head"] == HEAD
    assert sb.forge["variables"] == {"KILL": "true", "X": "a=b"}
    done = run_cli("forge", "--url", sb.url, "--unknown-head", "--unset", "KILL")
    assert done.returncode == 0, done.stderr
    assert sb.forge == {
        "repository": "acme/platform",
        "branch": "main",
        "head": None,
        "variables": {"X": "a=b"},
        **NO_ISSUE_FAULTS,
    }
    assert run_cli("forge", "--url", sb.url).returncode == 2
    assert run_cli("forge", "--url", sb.url, "--variable", "novalue").returncode == 2


# -- the forge -------------------------------------------------------------------------------------


def forge_get(sb: Sandbox, path: str, auth: str | None = "Bearer") -> requests.Response:
    headers = {"Authorization": f"{auth} {sb.forge_token}"} if auth else {}
    return requests.get(sb.url + path, headers=headers, timeout=5)


FORGE = {"head": HEAD, "variables": {"PROD_AUTO_DEPLOY_DISABLED": "false"}}


def test_forge_github_shape(start):
    sb = start(dict(eight(), forge=FORGE))
    assert sb.github_api_url == sb.url + "/github"
    branch = forge_get(sb, "/github/repos/acme/platform/branches/main")
    assert branch.status_code == 200 and branch.json() == {"name": "main", "commit": {"sha": HEAD}}
    variable = forge_get(sb, "/github/repos/acme/platform/actions/variables/PROD_AUTO_DEPLOY_DISABLED", "token")
    assert variable.json() == {"name": "PROD_AUTO_DEPLOY_DISABLED", "value": "false"}
    for path in (
        "/github/repos/acme/platform/branches/develop",
        "/github/repos/acme/other/branches/main",
        "/github/repos/acme/platform/actions/variables/UNSET",
        "/github/repos/acme/platform",
        "/github/user",
    ):
        response = forge_get(sb, path)
        assert response.status_code == 404 and response.json() == {"message": "Not Found"}, path


def test_forge_gitea_shape(start):
    sb = start(dict(eight(), forge=dict(FORGE, repository="ops/site", branch="prod")))
    assert sb.gitea_api_url == sb.url + "/api/v1" and sb.repository == "ops/site" and sb.branch == "prod"
    branch = forge_get(sb, "/api/v1/repos/ops/site/branches/prod", "token")
    assert branch.status_code == 200 and branch.json() == {"name": "prod", "commit": {"id": HEAD}}
    variable = forge_get(sb, "/api/v1/repos/ops/site/actions/variables/PROD_AUTO_DEPLOY_DISABLED")
    assert variable.json() == {"name": "PROD_AUTO_DEPLOY_DISABLED", "data": "false"}
    assert forge_get(sb, "/api/v1/repos/ops/site/branches/main").status_code == 404
    assert forge_get(sb, "/api/v1/repos/acme/platform/branches/prod").status_code == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic forge-token", "forge-token", "Bearer sandbox-token"])
def test_forge_requires_its_token(start, header):
    sb = start(dict(eight(), forge=FORGE))
    headers = {"Authorization": header} if header else {}
    for path in ("/github/repos/acme/platform/branches/main", "/api/v1/repos/acme/platform/actions/variables/X"):
        response = requests.get(sb.url + path, headers=headers, timeout=5)
        assert response.status_code == 401 and response.json()["message"]
    assert [(c["authorized"], c["status"]) for c in sb.forge_calls] == [(False, 401), (False, 401)]


def test_forge_custom_token_and_unknown_head(start):
    sb = start(dict(eight(), forge={"token": "gitea-pat"}))
    assert sb.forge_token == "gitea-pat"
    assert forge_get(sb, "/api/v1/repos/acme/platform/branches/main").status_code == 404  # head: null
    assert requests.post(sb.url + "/github/repos/acme/platform/branches/main", timeout=5).status_code == 401
    response = requests.post(
        sb.url + "/github/repos/acme/platform/branches/main", headers={"Authorization": "token gitea-pat"}, timeout=5
    )
    assert response.status_code == 405


@pytest.mark.parametrize("status", [500, 403])
def test_forge_variable_status_makes_every_variable_unreadable(start, status):
    sb = start(dict(eight(), forge=dict(FORGE, variable_status=status)))
    for path in (
        "/github/repos/acme/platform/actions/variables/PROD_AUTO_DEPLOY_DISABLED",
        "/api/v1/repos/acme/platform/actions/variables/UNSET",
    ):
        assert forge_get(sb, path).status_code == status
    assert forge_get(sb, "/github/repos/acme/platform/branches/main").status_code == 200
    assert forge_get(sb, "/github/repos/acme/platform/actions/variables/X", auth=None).status_code == 401


def test_forge_after_calls_move_the_head_and_flip_a_variable(start):
    sb = start(
        dict(
            eight(),
            forge={
                "head": HEAD,
                "after_calls": [
                    {"calls": 1, "variables": {"PROD_AUTO_DEPLOY_DISABLED": "true"}},
                    {"calls": 2, "head": NEWER, "variables": {"PROD_AUTO_DEPLOY_DISABLED": None}},
                ],
            },
        )
    )
    branch = "/github/repos/acme/platform/branches/main"
    variable = "/github/repos/acme/platform/actions/variables/PROD_AUTO_DEPLOY_DISABLED"
    # dry runs, 400s and 401s are not real calls
    dry_run(sb)
    assert call(sb, only_slugs=[]).status_code == 400
    assert requests.post(sb.url + REDEPLOY, json={"target_tag": TAG, "confirm": True}, timeout=5).status_code == 401
    assert forge_get(sb, variable).status_code == 404
    redeploy(sb, only_slugs=["acme"])
    assert forge_get(sb, variable).json()["value"] == "true"  # set before the first call's answer arrived
    assert forge_get(sb, branch).json()["commit"]["sha"] == HEAD
    redeploy(sb, only_slugs=["birch"])
    assert forge_get(sb, branch).json()["commit"]["sha"] == NEWER
    assert forge_get(sb, variable).status_code == 404
    assert sb.state()["real_calls"] == 2


def test_forge_after_calls_count_calls_answered_with_a_fault(start):
    sb = start(dict(load_scenario("gateway-flake"), forge={"head": HEAD, "after_calls": [{"calls": 1, "head": NEWER}]}))
    assert_html_502(call(sb))
    assert forge_get(sb, "/api/v1/repos/acme/platform/branches/main").json()["commit"]["id"] == NEWER


def test_forge_set_head_and_variable(start):
    sb = start(dict(eight(), forge=FORGE))
    sb.set_head(NEWER)
    sb.set_variable("KILL", "true")
    sb.set_variable("PROD_AUTO_DEPLOY_DISABLED", None)
    assert forge_get(sb, "/github/repos/acme/platform/branches/main").json()["commit"]["sha"] == NEWER
    assert forge_get(sb, "/github/repos/acme/platform/actions/variables/KILL").json()["value"] == "true"
    assert forge_get(sb, "/github/repos/acme/platform/actions/variables/PROD_AUTO_DEPLOY_DISABLED").status_code == 404
    sb.set_head(None)
    assert forge_get(sb, "/github/repos/acme/platform/branches/main").status_code == 404
    with pytest.raises(ValueError):
        sb.set_variable("KILL", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sb.set_head("")


def test_forge_over_http(start):
    sb = start(dict(eight(), forge=FORGE))
    response = requests.post(sb.url + "/sandbox/forge", json={"head": NEWER, "variables": {"A": "1"}}, timeout=5)
    assert response.status_code == 200
    assert response.json() == {
        "repository": "acme/platform",
        "branch": "main",
        "head": NEWER,
        "variables": {"PROD_AUTO_DEPLOY_DISABLED": "false", "A": "1"},
        **NO_ISSUE_FAULTS,
    }
    assert requests.get(sb.url + "/sandbox/forge", timeout=5).json()["head"] == NEWER
    requests.post(sb.url + "/sandbox/forge", json={"variables": {"A": None}}, timeout=5)
    assert "A" not in sb.forge["variables"]
    bad: list[Any] = [{}, {"head": 5}, {"variables": {"A": 1}}, {"variables": []}, {"other": 1}, [1]]
    for body in bad:
        response = requests.post(sb.url + "/sandbox/forge", json=body, timeout=5)
        assert response.status_code == 400 and response.json()["error"], body
    assert sb.forge["head"] == NEWER


# -- the forge's issue tracker -----------------------------------------------------------------------

LABEL = "fleet-quarantine"
GH_ISSUES = "/github/repos/acme/platform/issues"
GT_ISSUES = "/api/v1/repos/acme/platform/issues"
GT_LABELS = "/api/v1/repos/acme/platform/labels"


def forge_call(sb: Sandbox, method: str, path: str, body: Any = None, **params: Any) -> requests.Response:
    headers = {"Authorization": f"token {sb.forge_token}"}
    return requests.request(method, sb.url + path, headers=headers, json=body, params=params or None, timeout=5)


def every_page(sb: Sandbox, path: str, **params: Any) -> tuple[list[dict], list[requests.Response]]:
    """Follow rel="next" from the first page to the last; every item and every answer."""
    response = forge_call(sb, "GET", path, **params)
    answers = [response]
    while "next" in response.links:
        assert len(answers) < 20, "the Link header never stops"
        response = requests.get(
            response.links["next"]["url"], headers={"Authorization": f"token {sb.forge_token}"}, timeout=5
        )
        answers.append(response)
    assert all(a.status_code == 200 for a in answers)
    return [item for a in answers for item in a.json()], answers


def quarantine_issues(count: int, **extra: Any) -> list[dict]:
    return [{"title": f"fleet-rollout: tenant t{n} is quarantined", "labels": [LABEL], **extra} for n in range(count)]


def test_forge_github_issue_list_pages_by_link_and_holds_pull_requests(start):
    sb = start(dict(eight(), forge={"issues": quarantine_issues(3), "pull_requests": 120}))
    items, answers = every_page(sb, GH_ISSUES, labels=LABEL, state="open", per_page=100)
    assert [len(a.json()) for a in answers] == [100, 23]
    assert 'rel="next"' in answers[0].headers["Link"] and 'rel="next"' not in answers[1].headers["Link"]
    assert [i["number"] for i in items] == list(range(123, 0, -1))  # newest first, pull requests included
    pulls = [i for i in items if "pull_request" in i]
    assert len(pulls) == 120 and all(i["pull_request"]["url"] for i in pulls)
    assert [i["title"] for i in items if "pull_request" not in i] == [
        f"fleet-rollout: tenant t{n} is quarantined" for n in (2, 1, 0)
    ]
    assert [i["labels"][0]["name"] for i in items[-3:]] == [LABEL] * 3
    # per_page is capped at 100, and defaults to 30
    assert len(forge_call(sb, "GET", GH_ISSUES, per_page=500).json()) == 100
    assert len(forge_call(sb, "GET", GH_ISSUES).json()) == 30
    assert forge_call(sb, "GET", GH_ISSUES, per_page=100, page=3).json() == []
    # every call is recorded with its query
    assert sb.forge_calls[1]["query"] == {"labels": LABEL, "state": "open", "per_page": "100", "page": "2"}


def test_forge_gitea_issue_list_caps_limit_at_50_and_type_issues_leaves_out_pull_requests(start):
    sb = start(dict(eight(), forge={"issues": quarantine_issues(60), "pull_requests": 5}))
    first = forge_call(sb, "GET", GT_ISSUES, labels=LABEL, state="open", type="issues", limit=100)
    assert len(first.json()) == 50 and first.headers["X-Total-Count"] == "60" and 'rel="next"' in first.headers["Link"]
    items, answers = every_page(sb, GT_ISSUES, labels=LABEL, state="open", type="issues", limit=50)
    assert len(answers) == 2 and len(items) == 60
    assert all(i["pull_request"] is None for i in items)  # Gitea sends the key on every issue, null
    mixed, _ = every_page(sb, GT_ISSUES, labels=LABEL, limit=50)
    assert len(mixed) == 65 and sum(1 for i in mixed if i["pull_request"]) == 5
    pulls = forge_call(sb, "GET", GT_ISSUES, type="pulls").json()
    assert len(pulls) == 5 and all(i["pull_request"]["merged"] is False for i in pulls)
    assert len(forge_call(sb, "GET", GT_ISSUES, per_page=100).json()) == 30  # per_page is not Gitea's


def test_forge_label_filters_differ_between_github_and_gitea(start):
    issues = [
        {"title": "quarantined", "labels": [LABEL]},
        {"title": "other", "labels": ["bug"]},
        {"title": "old", "labels": [LABEL], "state": "closed"},
    ]
    sb = start(dict(eight(), forge={"issues": issues}))
    titles = lambda path, **q: [i["title"] for i in forge_call(sb, "GET", path, **q).json()]  # noqa: E731
    assert titles(GH_ISSUES, labels=LABEL) == titles(GT_ISSUES, labels=LABEL) == ["quarantined"]
    assert titles(GH_ISSUES, labels=LABEL, state="closed") == ["old"]
    assert titles(GT_ISSUES, labels=LABEL, state="all") == ["old", "quarantined"]
    assert titles(GH_ISSUES, labels=f"{LABEL},bug") == []  # GitHub: every label named
    assert titles(GT_ISSUES, labels=f"{LABEL},bug") == ["other", "quarantined"]  # Gitea: any of them
    # A label that does not exist: GitHub matches nothing, Gitea drops the filter and lists every issue
    assert titles(GH_ISSUES, labels="missing") == []
    assert titles(GT_ISSUES, labels="missing") == ["other", "quarantined"]
    assert forge_call(sb, "GET", GH_ISSUES, state="bogus").status_code == 422
    assert titles(GT_ISSUES, state="bogus") == ["other", "quarantined"]  # Gitea reads it as open


def test_forge_github_issue_create_makes_the_named_label_then_comment_and_close(start):
    sb = start(dict(eight(), forge=FORGE))
    created = forge_call(
        sb, "POST", GH_ISSUES, {"title": "fleet-rollout: tenant acme is quarantined", "body": "b1", "labels": [LABEL]}
    )
    assert created.status_code == 201
    issue = created.json()
    assert issue["number"] == 1 and issue["state"] == "open" and issue["labels"][0]["name"] == LABEL
    assert issue["html_url"] == f"{sb.url}/acme/platform/issues/1" and "pull_request" not in issue
    assert [label["name"] for label in sb.labels] == [LABEL]  # GitHub created the missing label
    comment = forge_call(sb, "POST", GH_ISSUES + "/1/comments", {"body": "again, streak 2"})
    assert comment.status_code == 201 and comment.json()["body"] == "again, streak 2"
    edited = forge_call(sb, "PATCH", GH_ISSUES + "/1", {"body": "b2"})
    assert edited.status_code == 200 and edited.json()["body"] == "b2"
    closed = forge_call(sb, "PATCH", GH_ISSUES + "/1", {"state": "closed"})
    assert closed.status_code == 200 and closed.json()["state"] == "closed" and closed.json()["closed_at"]
    assert forge_call(sb, "GET", GH_ISSUES, labels=LABEL).json() == []
    assert forge_call(sb, "GET", GH_ISSUES + "/1").json()["comments"] == 1
    state = requests.get(sb.url + "/sandbox/state", timeout=5).json()
    assert state["issues"] == [
        {
            "number": 1,
            "title": "fleet-rollout: tenant acme is quarantined",
            "body": "b2",
            "labels": [LABEL],
            "state": "closed",
            "pull_request": False,
            "html_url": f"{sb.url}/acme/platform/issues/1",
            "comments": [{"id": comment.json()["id"], "body": "again, streak 2"}],
        }
    ]
    assert [(c["method"], c["body"], c["status"]) for c in state["forge_calls"][:2]] == [
        ("POST", {"title": "fleet-rollout: tenant acme is quarantined", "body": "b1", "labels": [LABEL]}, 201),
        ("POST", {"body": "again, streak 2"}, 201),
    ]


def test_forge_gitea_issue_create_takes_label_ids_and_refuses_names(start):
    sb = start(dict(eight(), forge=FORGE))
    title = "fleet-rollout: tenant acme is quarantined"
    by_name = forge_call(sb, "POST", GT_ISSUES, {"title": title, "labels": [LABEL]})
    assert by_name.status_code == 422 and "int64" in by_name.json()["message"]
    assert sb.issues == [] and sb.labels == []
    assert forge_call(sb, "GET", GT_LABELS).json() == []
    assert forge_call(sb, "POST", GT_LABELS, {"name": LABEL}).status_code == 422  # Gitea needs a color
    label = forge_call(sb, "POST", GT_LABELS, {"name": LABEL, "color": "#B60205"})
    assert label.status_code == 201 and label.json()["name"] == LABEL and label.json()["color"] == "b60205"
    assert forge_call(sb, "POST", GT_LABELS, {"name": LABEL, "color": "#b60205"}).status_code == 422  # exists
    assert forge_call(sb, "POST", GT_ISSUES, {"title": title, "labels": [999]}).status_code == 422
    created = forge_call(sb, "POST", GT_ISSUES, {"title": title, "body": "b", "labels": [label.json()["id"]]})
    assert created.status_code == 201 and created.json()["labels"][0]["name"] == LABEL
    assert created.json()["pull_request"] is None
    assert forge_call(sb, "POST", GT_ISSUES + "/1/comments", {"body": "c"}).status_code == 201
    closed = forge_call(sb, "PATCH", GT_ISSUES + "/1", {"state": "closed"})
    assert closed.status_code == 201 and closed.json()["state"] == "closed"  # Gitea answers an edit 201
    assert [(i["state"], i["labels"], len(i["comments"])) for i in sb.issues] == [("closed", [LABEL], 1)]
    creates = [c for c in sb.forge_calls if c["method"] == "POST" and c["path"] == GT_ISSUES]
    assert [(c["body"]["labels"], c["status"]) for c in creates] == [([LABEL], 422), ([999], 422), ([1], 201)]


def test_forge_labels_page_on_both_and_github_creates_one_too(start):
    sb = start(dict(eight(), forge={"labels": [f"l{n}" for n in range(55)]}))
    items, answers = every_page(sb, GT_LABELS, limit=50)
    assert len(answers) == 2 and [label["name"] for label in items] == [f"l{n}" for n in range(55)]
    made = forge_call(sb, "POST", "/github/repos/acme/platform/labels", {"name": LABEL})
    assert made.status_code == 201 and made.json()["color"] == "ededed"
    assert len(forge_call(sb, "GET", "/github/repos/acme/platform/labels", per_page=100).json()) == 56


def test_forge_new_label_status_refuses_a_label_the_caller_may_not_create(start):
    sb = start(dict(eight(), forge={"labels": ["bug"], "new_label_status": 403}))
    refused = forge_call(sb, "POST", GH_ISSUES, {"title": "t", "labels": [LABEL]})
    assert refused.status_code == 403 and sb.issues == []
    assert forge_call(sb, "POST", GT_LABELS, {"name": LABEL, "color": "ededed"}).status_code == 403
    assert forge_call(sb, "POST", GH_ISSUES, {"title": "t", "labels": ["bug"]}).status_code == 201
    assert forge_call(sb, "POST", GH_ISSUES, {"title": "t"}).status_code == 201
    assert [label["name"] for label in sb.labels] == ["bug"]


def test_forge_seeded_issues_carry_their_body_state_and_comments(start):
    issues = [
        {
            "title": "fleet-rollout: tenant reno-stars is quarantined",
            "body": "streak 1",
            "labels": [LABEL],
            "comments": ["one", "two", "three"],
        },
        {"title": "fleet-rollout: tenant dune is quarantined", "labels": [LABEL], "state": "closed"},
    ]
    sb = start(dict(eight(), forge={"issues": issues}))
    listed = forge_call(sb, "GET", GH_ISSUES, labels=LABEL).json()
    assert [(i["number"], i["body"], i["comments"]) for i in listed] == [(1, "streak 1", 3)]
    comments, answers = every_page(sb, GH_ISSUES + "/1/comments", per_page=2)
    assert [c["body"] for c in comments] == ["one", "two", "three"] and len(answers) == 2
    assert forge_call(sb, "GET", GT_ISSUES + "/2").json()["state"] == "closed"


def test_forge_issue_calls_need_the_forge_token(start):
    sb = start(dict(eight(), forge=FORGE))
    for header in (None, "Bearer wrong", f"Bearer {sb.token}"):
        headers = {"Authorization": header} if header else {}
        for method, path in (("GET", GH_ISSUES), ("POST", GT_ISSUES), ("POST", GT_LABELS)):
            response = requests.request(method, sb.url + path, headers=headers, json={"title": "t"}, timeout=5)
            assert response.status_code == 401, (header, method, path)
    assert sb.issues == [] and sb.labels == []


def test_forge_issue_calls_that_cannot_be_answered(start):
    sb = start(dict(eight(), forge=FORGE))
    assert forge_call(sb, "GET", GH_ISSUES + "/7").status_code == 404
    assert forge_call(sb, "POST", GH_ISSUES + "/7/comments", {"body": "x"}).status_code == 404
    assert forge_call(sb, "DELETE", GH_ISSUES).status_code == 405
    assert forge_call(sb, "POST", "/github/repos/acme/other/issues", {"title": "t"}).status_code == 404
    assert forge_call(sb, "POST", GH_ISSUES, {"body": "no title"}).status_code == 422
    assert forge_call(sb, "GET", GH_ISSUES, per_page="many").status_code == 422
    broken = requests.post(
        sb.url + GH_ISSUES, data=b"{", headers={"Authorization": f"token {sb.forge_token}"}, timeout=5
    )
    assert broken.status_code == 400
    assert forge_call(sb, "POST", GH_ISSUES, {"title": "t"}).status_code == 201
    assert forge_call(sb, "POST", GH_ISSUES + "/1/comments", {"body": " "}).status_code == 422
    assert forge_call(sb, "PATCH", GH_ISSUES + "/1", {"state": "merged"}).status_code == 422
    assert [(i["state"], i["comments"]) for i in sb.issues] == [("open", [])]


@pytest.mark.parametrize("status", [403, 404, 500])
def test_forge_issues_status_answers_every_issue_call(start, status):
    sb = start(dict(eight(), forge=dict(FORGE, issues=quarantine_issues(1), issues_status=status)))
    for method, path, body in (
        ("GET", GH_ISSUES, None),
        ("POST", GH_ISSUES, {"title": "t", "labels": [LABEL]}),
        ("POST", GT_ISSUES + "/1/comments", {"body": "c"}),
        ("PATCH", GT_ISSUES + "/1", {"state": "closed"}),
        ("GET", GT_LABELS, None),
    ):
        assert forge_call(sb, method, path, body).status_code == status, (method, path)
    assert forge_get(sb, "/github/repos/acme/platform/branches/main").status_code == 200
    assert [(i["state"], i["comments"]) for i in sb.issues] == [("open", [])]
    sb.set_issue_faults(issues_status=None)
    assert forge_call(sb, "GET", GH_ISSUES).status_code == 200


def test_forge_issue_write_status_fails_writes_only_and_is_settable_live(start):
    sb = start(dict(eight(), forge=dict(FORGE, issues=quarantine_issues(1))))
    response = requests.post(sb.url + "/sandbox/forge", json={"issue_write_status": 403}, timeout=5)
    assert response.status_code == 200 and response.json()["issue_write_status"] == 403
    assert forge_call(sb, "GET", GT_ISSUES, labels=LABEL, type="issues").status_code == 200
    assert forge_call(sb, "POST", GT_ISSUES + "/1/comments", {"body": "c"}).status_code == 403
    assert forge_call(sb, "PATCH", GH_ISSUES + "/1", {"state": "closed"}).status_code == 403
    assert [(i["state"], i["comments"]) for i in sb.issues] == [("open", [])]
    requests.post(sb.url + "/sandbox/forge", json={"issue_write_status": None}, timeout=5)
    assert forge_call(sb, "PATCH", GH_ISSUES + "/1", {"state": "closed"}).status_code == 200
    for bad in ({"issues_status": 99}, {"issue_write_status": "403"}, {"issues_delay": -1}, {"issues_delay": True}):
        assert requests.post(sb.url + "/sandbox/forge", json=bad, timeout=5).status_code == 400, bad
    with pytest.raises(ValueError):
        sb.set_issue_faults(issues_status=1000)
    with pytest.raises(ValueError):
        sb.set_issue_faults(status=403)


def test_forge_issues_delay_acts_then_keeps_the_caller_waiting(start):
    sb = start(dict(eight(), forge=dict(FORGE, issues_delay=60)))
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            sb.url + GH_ISSUES,
            json={"title": "t", "labels": [LABEL]},
            headers={"Authorization": f"token {sb.forge_token}"},
            timeout=(5, 0.5),
        )
    created = threading.Event()
    for _ in range(500):  # the write happened before the wait: it shows up however loaded the machine
        if sb.issues:
            created.set()
            break
        created.wait(0.01)
    assert created.is_set() and sb.issues[0]["title"] == "t"
    sb.set_issue_faults(issues_delay=0)
    assert forge_call(sb, "GET", GH_ISSUES).status_code == 200
    assert forge_get(sb, "/github/repos/acme/platform/branches/main").status_code == 200


def test_cli_issues_prints_the_issues_and_comments_of_a_running_sandbox(start):
    sb = start(
        dict(eight(), forge={"issues": quarantine_issues(1, body="streak 2", comments=["again"]), "pull_requests": 1})
    )
    done = run_cli("issues", "--url", sb.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"#1 open: fleet-rollout: tenant t0 is quarantined  [{LABEL}]  {sb.url}/acme/platform/issues/1",
        "    streak 2",
        f"  comment {sb.issues[0]['comments'][0]['id']}:",
        "    again",
    ]
    every = run_cli("issues", "--url", sb.url, "--pull-requests", "--json")
    assert [i["pull_request"] for i in json.loads(every.stdout)] == [False, True]
    faults = run_cli("forge", "--url", sb.url, "--issues-status", "500", "--issues-delay", "0.5")
    assert faults.returncode == 0, faults.stderr
    assert sb.forge["issues_status"] == 500 and sb.forge["issues_delay"] == 0.5
    run_cli("forge", "--url", sb.url, "--issues-status", "0")
    assert sb.forge["issues_status"] is None
    sb.stop()
    gone = run_cli("issues", "--url", sb.url)
    assert gone.returncode == 1 and "cannot read the issues" in gone.stderr


# -- transport -------------------------------------------------------------------------------------


def test_latency_is_added_to_every_request(start):
    sb = start(dict(eight(), latency_ms=200))
    for request in (
        lambda: healthz(sb, "acme"),
        lambda: dry_run(sb),
        lambda: forge_get(sb, "/github/repos/acme/platform/branches/main"),
    ):
        began = time.monotonic()
        request()
        assert time.monotonic() - began >= 0.2
    fast = start("clean")
    began = time.monotonic()
    healthz(fast, "acme")
    assert time.monotonic() - began < 0.2


def test_keep_alive_with_content_length(start):
    sb = start("clean")
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=5)
    try:
        answers = []
        for method, path, body in (
            ("GET", "/t/acme/healthz", None),
            ("GET", "/t/birch/buildinfo", None),
            ("POST", REDEPLOY, body_of(target_tag=TAG, dry_run=True, confirm=True)),
            ("GET", "/t/cobalt/health", None),
        ):
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {sb.token}"})
            response = conn.getresponse()
            data = response.read()
            assert int(response.headers["Content-Length"]) == len(data)
            assert response.version == 11 and not response.will_close
            answers.append((response.status, data))
            sock = conn.sock
        assert sock is conn.sock  # one connection served them all
    finally:
        conn.close()
    assert answers[0] == (200, b"ok")
    assert json.loads(answers[1][1])["git_sha"] == DEFAULT_OLD_SHA
    assert answers[2][0] == 200 and len(json.loads(answers[2][1])["results"]) == 8
    assert answers[3] == (200, b"ok")


def test_stop_ends_kept_alive_connections(start):
    sb = start("clean")
    session = requests.Session()
    assert session.get(sb.tenant_url("acme") + "/healthz", timeout=5).status_code == 200
    sb.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(sb.tenant_url("acme") + "/healthz", timeout=5)


def test_many_concurrent_connections(start):
    sb = start({"fleet": {"count": 200}})

    def fetch(slug: str) -> int:
        return healthz(sb, slug) + requests.get(sb.tenant_url(slug) + "/buildinfo", timeout=10).status_code

    with ThreadPoolExecutor(64) as pool:
        assert set(pool.map(fetch, sb.slugs)) == {400}
    assert sum(len(h) for h in sb.tenant_hits.values()) == 400


# -- command line ----------------------------------------------------------------------------------


def test_cli_serves_until_sigterm(tmp_path):
    url_file = tmp_path / "url"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--scenario", "incident", "--port", "0", "--url-file", str(url_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline()
        match = re.fullmatch(r"sandbox listening on (http://127\.0\.0\.1:(\d+))\n", first)
        assert match, first
        url = match.group(1)
        for _ in range(100):
            if url_file.exists():
                break
            time.sleep(0.02)
        assert url_file.read_text() == url
        planned = requests.post(
            url + REDEPLOY,
            json={"target_tag": TAG, "dry_run": True, "confirm": True},
            headers={"Authorization": "Bearer sandbox-token"},
            timeout=5,
        )
        assert fleet_slugs([r["slug"] for r in planned.json()["results"]]) == EIGHT
        done = run_cli("set", "--url", url, "--tenant", "reno-stars", "--behaviour", "stopped")
        assert done.returncode == 0, done.stderr
        state = requests.get(url + "/sandbox/state", timeout=5).json()
        assert state["tenants"]["reno-stars"]["behaviour"] == "stopped"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        out, err = proc.stdout.read(), proc.stderr.read()  # read() keeps what readline() buffered
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "export CP_TOKEN=sandbox-token" in out
    assert url + "/t/{slug}" in out
    assert url + "/github" in out and url + "/api/v1" in out and "forge-token" in out
    assert "wedged: reno-stars" in out
    assert "/cp/admin/tenants\n" not in out and REDEPLOY in out
    assert out.rstrip().endswith("sandbox stopped")


def test_cli_help_lists_every_preset_and_bad_scenarios_are_refused():
    help_run = run_cli("--help")
    assert help_run.returncode == 0 and "--scenario" in help_run.stdout
    lines = help_run.stdout.splitlines()
    for name in preset_names():
        sentence = first_sentence(load_scenario(name)["description"])
        assert "\n" not in sentence and sentence.endswith((".", sentence[-1]))
        assert any(line.split() and line.split()[0] == name and line.endswith(sentence) for line in lines), name
    for word in ("set", "forge", "gateway_502", "unproven", "health_paths", "after_calls", "stopped"):
        assert word in help_run.stdout
    assert first_sentence("A (x ... y) thing. More. Still") == "A (x ... y) thing."
    bad = run_cli("--scenario", "nope")
    assert bad.returncode == 2 and "unknown scenario 'nope'" in bad.stderr and bad.stdout == ""
    missing = run_cli()
    assert missing.returncode == 2 and "--scenario is required" in missing.stderr
