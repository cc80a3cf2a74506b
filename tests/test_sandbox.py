"""The sandbox control plane and tenant fleet, exercised over real HTTP on loopback."""

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

import pytest
import requests

from fleet.contract import ContractError, fleet_slugs, validate
from sandbox import Sandbox, load_scenario, sha_for_tag
from sandbox.scenario import DEFAULT_OLD_SHA, preset_names

ROOT = Path(__file__).resolve().parent.parent
EIGHT = ["acme", "birch", "cobalt", "dune", "reno-stars", "ember", "fjord", "harbor"]
TAG = "sha-" + "0123456789abcdef0123456789abcdef01234567"
NEW_SHA = "0123456789abcdef0123456789abcdef01234567"


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


def eight(**behaviours: str) -> dict:
    """The eight tenants of the presets, with some given a behaviour other than healthy."""
    return {"tenants": [{"slug": s, "behaviour": behaviours.get(s.replace("-", "_"), "healthy")} for s in EIGHT]}


@pytest.fixture
def start():
    """Start a sandbox for a scenario; every sandbox started is stopped after the test."""
    started: list[Sandbox] = []

    def _start(scenario, **kwargs) -> Sandbox:
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


def redeploy(sb: Sandbox, **body) -> requests.Response:
    body.setdefault("target_tag", TAG)
    response = cp(sb).post(sb.url + "/cp/admin/tenants/redeploy-fleet", json=body, timeout=10)
    if response.status_code in (200, 500):
        validate("redeploy-response", response.json(), "sandbox redeploy response")
    return response


def buildinfo(sb: Sandbox, slug: str) -> dict:
    response = requests.get(sb.tenant_url(slug) + "/buildinfo", timeout=5)
    assert response.status_code == 200
    return validate("buildinfo", response.json(), f"{slug} buildinfo")


def healthz(sb: Sandbox, slug: str) -> int:
    return requests.get(sb.tenant_url(slug) + "/healthz", timeout=5).status_code


def by_slug(doc: dict) -> dict:
    return {r["slug"]: r for r in doc["results"]}


# -- sha_for_tag and scenarios ---------------------------------------------------------------------


def test_sha_for_tag_serves_the_sha_named_in_the_tag():
    assert sha_for_tag(TAG) == NEW_SHA
    assert sha_for_tag("registry/app:ABCDEF1") == "abcdef1" + sha1("registry/app:ABCDEF1")[:33]
    assert sha_for_tag("release-2024-deadbeef").startswith("deadbeef")
    assert sha_for_tag("v1.2.3") == sha1("v1.2.3")
    assert sha_for_tag("sha-abc12") == sha1("sha-abc12")  # too short to be a sha
    assert all(re.fullmatch("[0-9a-f]{40}", sha_for_tag(t)) for t in ("x", "sha-" + "F" * 40, "a:b-c"))


def test_presets_load_with_descriptions():
    assert {"incident", "clean", "systemic", "canary-fails", "stale", "slow", "large"} <= set(preset_names())
    for name in preset_names():
        scenario = load_scenario(name)
        assert scenario["description"], name
        assert scenario["token"] == "sandbox-token"
    incident = load_scenario("incident")
    assert [t["slug"] for t in incident["tenants"]] == EIGHT
    assert [t["slug"] for t in incident["tenants"] if t["behaviour"] == "wedged"] == ["reno-stars"]
    assert incident["old_sha"] == DEFAULT_OLD_SHA == sha1("old-build")
    large = load_scenario("large")
    assert len(large["tenants"]) == 1000 and large["latency_ms"] == 20
    assert large["tenants"][0]["slug"] == "tenant-0001" and large["tenants"][-1]["slug"] == "tenant-1000"
    assert [t["slug"] for t in load_scenario("canary-fails")["tenants"] if t["behaviour"] == "wedged"] == ["acme"]
    assert len([t for t in load_scenario("systemic")["tenants"] if t["behaviour"] == "wedged"]) == 3
    assert [(t["slug"], t["ready_after"]) for t in load_scenario("slow")["tenants"] if t["behaviour"] == "slow"] == [
        ("dune", 3)
    ]


def test_scenario_from_a_file_and_normalized_twice(tmp_path):
    path = tmp_path / "mine.yml"
    path.write_text("tenants: [solo, {slug: other, behaviour: slow}]\nfleet: {count: 2, prefix: f-}\n")
    scenario = load_scenario(str(path))
    assert [t["slug"] for t in scenario["tenants"]] == ["solo", "other", "f-0001", "f-0002"]
    assert scenario["tenants"][1]["ready_after"] == 5
    assert scenario["control_plane"]["fault"] == "none" and scenario["deployed_tag"] is None
    assert load_scenario(scenario) == scenario


@pytest.mark.parametrize(
    ("doc", "named"),
    [
        ({"tenants": [{"slug": "a", "behaviour": "wedge"}]}, "tenants[0].behaviour"),
        ({"tenants": [{"behaviour": "healthy"}]}, "slug"),
        ({"tenant": []}, "'tenant'"),
        ({"old_sha": "xyz"}, "old_sha"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"control_plane": {"fault": "boom"}}, "control_plane.fault"),
        ({"control_plane": {"fault": "missing_tenant", "missing": ["ghost"]}}, "ghost"),
        ({"fleet": {"count": "many"}}, "fleet.count"),
        ({"deployed_tag": 1234567}, "quote it"),
    ],
)
def test_bad_scenarios_are_refused_clearly(doc, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        load_scenario(doc)


def test_unknown_scenario_name_lists_the_presets():
    with pytest.raises(ValueError, match="incident"):
        load_scenario("no-such-scenario")


# -- control plane: listing, auth, bad requests -----------------------------------------------------


def test_listing_in_scenario_order(start):
    sb = start("incident")
    response = cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert fleet_slugs(validate("fleet-listing", response.json(), "listing")) == EIGHT
    assert sb.cp_calls[-1] | {"time": 0} == {
        "method": "GET",
        "path": "/cp/admin/tenants",
        "body": None,
        "authorized": True,
        "status": 200,
        "time": 0,
    }


def test_listing_serves_invalid_and_duplicate_slugs_as_given(start):
    sb = start({"tenants": ["acme", "Bad_Slug", "acme", "trailing\n"]})
    listing = cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5).json()
    assert [t["slug"] for t in listing["tenants"]] == ["acme", "Bad_Slug", "acme", "trailing\n"]
    with pytest.raises(ContractError, match="not a valid slug"):
        fleet_slugs(listing)
    twice = start({"tenants": ["acme", "birch", "acme"]})
    with pytest.raises(ContractError, match="duplicate slug 'acme'"):
        fleet_slugs(cp(twice).get(twice.url + "/cp/admin/tenants", timeout=5).json())


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic sandbox-token", "sandbox-token"])
def test_control_plane_requires_the_bearer_token(start, header):
    sb = start("clean")
    headers = {"Authorization": header} if header else {}
    listing = requests.get(sb.url + "/cp/admin/tenants", headers=headers, timeout=5)
    deploy = requests.post(
        sb.url + "/cp/admin/tenants/redeploy-fleet", json={"target_tag": TAG}, headers=headers, timeout=5
    )
    for response in (listing, deploy):
        assert response.status_code == 401
        assert response.json()["error"]
    assert [c["authorized"] for c in sb.cp_calls] == [False, False]
    assert [c["status"] for c in sb.cp_calls] == [401, 401]
    assert buildinfo(sb, "acme")["git_sha"] == DEFAULT_OLD_SHA


def test_custom_token(start):
    sb = start(dict(eight(), token="s3cret"))
    assert sb.token == "s3cret"
    assert cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5).status_code == 200
    bad = requests.get(sb.url + "/cp/admin/tenants", headers={"Authorization": "Bearer sandbox-token"}, timeout=5)
    assert bad.status_code == 401


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (json.dumps({"canary_slug": "acme"}).encode(), "target_tag"),
        (json.dumps({"target_tag": TAG, "slugs": []}).encode(), "slugs"),
        (json.dumps({"target_tag": TAG, "slugs": ["Bad_Slug"]}).encode(), "Bad_Slug"),
        (json.dumps({"target_tag": TAG, "batch_size": 0}).encode(), "batch_size"),
        (json.dumps({"target_tag": TAG, "max_stragglers": "1"}).encode(), "max_stragglers"),
        (json.dumps({"target_tag": TAG, "slugs": ["acme", "nowhere", "gone"]}).encode(), "'nowhere', 'gone'"),
        (json.dumps({"target_tag": TAG, "slugs": ["acme", "acme"]}).encode(), "twice"),
        (json.dumps({"target_tag": TAG, "canary_slug": "ghost"}).encode(), "ghost"),
    ],
)
def test_bad_redeploy_body_is_400_and_changes_nothing(start, body, named):
    sb = start("clean")
    response = cp(sb).post(
        sb.url + "/cp/admin/tenants/redeploy-fleet", data=body, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert response.status_code == 400
    assert named in response.json()["error"]
    assert sb.cp_calls[-1]["status"] == 400
    assert all(t["deployed_tag"] is None for t in sb.state()["tenants"].values())


def test_unknown_paths_are_404_json(start):
    sb = start("clean")
    for response in (
        cp(sb).get(sb.url + "/cp/admin/nothing", timeout=5),
        requests.get(sb.url + "/elsewhere", timeout=5),
        requests.get(sb.url + "/t/nobody/healthz", timeout=5),
        requests.get(sb.url + "/t/acme/metrics", timeout=5),
    ):
        assert response.status_code == 404
        assert response.json()["error"]
    wrong_method = cp(sb).get(sb.url + "/cp/admin/tenants/redeploy-fleet", timeout=5)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"


# -- control plane: redeploys ----------------------------------------------------------------------


def test_clean_redeploy_moves_every_tenant(start):
    sb = start("clean")
    assert {buildinfo(sb, s)["git_sha"] for s in EIGHT} == {DEFAULT_OLD_SHA}
    response = redeploy(sb, canary_slug="acme", batch_size=3, soak_seconds=0)
    doc = response.json()
    assert response.status_code == 200 and doc["ok"] is True
    assert "stragglers" not in doc
    assert [r["slug"] for r in doc["results"]] == EIGHT
    assert [r["phase"] for r in doc["results"]] == ["canary"] + ["batch"] * 7
    assert all(r["verified_on_target"] and r["ssm_status"] == "Success" and r["error"] is None for r in doc["results"])
    for slug in EIGHT:
        assert buildinfo(sb, slug) == {"git_sha": NEW_SHA, "tag": TAG}
        assert healthz(sb, slug) == 200
    assert sb.cp_calls[-1]["body"]["canary_slug"] == "acme"


def test_incident_within_budget_reports_the_straggler(start):
    sb = start("incident")
    response = redeploy(sb, canary_slug="acme", batch_size=3, max_stragglers=1)
    doc = response.json()
    assert response.status_code == 200 and doc["ok"] is True
    assert doc["stragglers"] == ["reno-stars"]
    assert by_slug(doc)["reno-stars"] == {
        "slug": "reno-stars",
        "phase": "batch",
        "ssm_status": "Success",
        "ssm_exit_code": 0,
        "healthz_ok": False,
        "verified_on_target": False,
        "error": "healthz timeout",
    }
    assert len(doc["results"]) == 8
    assert healthz(sb, "reno-stars") == 503
    assert buildinfo(sb, "reno-stars")["git_sha"] == DEFAULT_OLD_SHA
    assert buildinfo(sb, "harbor")["git_sha"] == NEW_SHA


def test_incident_strict_budget_halts_at_the_batch(start):
    sb = start("incident")
    response = redeploy(sb, canary_slug="acme", batch_size=3)  # max_stragglers absent = 0
    doc = response.json()
    assert response.status_code == 500 and doc["ok"] is False
    assert doc["error"] == "1 stragglers, max tolerated 0"
    assert doc["stragglers"] == ["reno-stars"]
    # canary, batch [birch cobalt dune], batch [reno-stars ember fjord]; harbor never reached
    assert [r["slug"] for r in doc["results"]] == EIGHT[:7]
    assert buildinfo(sb, "fjord")["git_sha"] == NEW_SHA
    assert buildinfo(sb, "harbor")["git_sha"] == DEFAULT_OLD_SHA
    assert sb.state()["tenants"]["harbor"]["deployed_tag"] is None


def test_systemic_break_halts_and_leaves_later_batches_on_the_old_build(start):
    sb = start("systemic")
    doc = redeploy(sb, canary_slug="acme", batch_size=2, max_stragglers=1).json()
    assert doc["ok"] is False and doc["error"] == "2 stragglers, max tolerated 1"
    assert doc["stragglers"] == ["cobalt", "reno-stars"]
    assert [r["slug"] for r in doc["results"]] == ["acme", "birch", "cobalt", "dune", "reno-stars"]
    for slug in ("ember", "fjord", "harbor"):
        assert buildinfo(sb, slug)["git_sha"] == DEFAULT_OLD_SHA
        assert healthz(sb, slug) == 200


def test_canary_failure_stops_before_any_batch(start):
    sb = start("canary-fails")
    response = redeploy(sb, canary_slug="acme", batch_size=3, max_stragglers=5, soak_seconds=30)
    doc = response.json()
    assert response.status_code == 500 and doc["ok"] is False
    assert doc["error"] == "canary acme failed: healthz timeout"
    assert [(r["slug"], r["phase"]) for r in doc["results"]] == [("acme", "canary")]
    assert "stragglers" not in doc
    assert all(buildinfo(sb, s)["git_sha"] == DEFAULT_OLD_SHA for s in EIGHT[1:])


def test_canary_soaks_before_the_batches(start):
    sb = start("clean")
    seen: dict[str, str] = {}
    caller = threading.Thread(target=lambda: seen.update(doc=redeploy(sb, canary_slug="acme", soak_seconds=1).text))
    began = time.monotonic()
    caller.start()
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline and buildinfo(sb, "acme")["git_sha"] != NEW_SHA:
        time.sleep(0.02)
    assert buildinfo(sb, "acme")["git_sha"] == NEW_SHA  # canary moved ...
    assert buildinfo(sb, "birch")["git_sha"] == DEFAULT_OLD_SHA  # ... the rest wait for the soak
    caller.join(10)
    assert time.monotonic() - began >= 1.0
    assert json.loads(seen["doc"])["ok"] is True
    assert buildinfo(sb, "birch")["git_sha"] == NEW_SHA


def test_scoped_call_touches_only_its_slugs(start):
    sb = start("clean")
    doc = redeploy(sb, slugs=["dune", "birch"], canary_slug="acme", batch_size=5).json()
    assert [(r["slug"], r["phase"]) for r in doc["results"]] == [("dune", "batch"), ("birch", "batch")]
    assert buildinfo(sb, "dune")["git_sha"] == NEW_SHA
    assert buildinfo(sb, "acme")["git_sha"] == DEFAULT_OLD_SHA  # canary outside the scope: untouched
    doc = redeploy(sb, slugs=["cobalt"], canary_slug="cobalt", max_stragglers=0, soak_seconds=0).json()
    assert [(r["slug"], r["phase"]) for r in doc["results"]] == [("cobalt", "canary")]


def test_dry_run_plans_and_changes_nothing(start):
    sb = start("incident")
    doc = redeploy(sb, canary_slug="acme", batch_size=3, dry_run=True).json()
    assert doc["ok"] is True and "stragglers" not in doc
    assert [r["slug"] for r in doc["results"]] == EIGHT
    assert {r["phase"] for r in doc["results"]} == {"plan"}
    assert not any(r["verified_on_target"] for r in doc["results"])
    assert all(buildinfo(sb, s)["git_sha"] == DEFAULT_OLD_SHA for s in EIGHT)
    assert healthz(sb, "reno-stars") == 200
    scoped = redeploy(sb, slugs=["ember"], dry_run=True).json()
    assert [(r["slug"], r["phase"]) for r in scoped["results"]] == [("ember", "plan")]


# -- tenant behaviours -----------------------------------------------------------------------------


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
    sb = start({"tenants": [{"slug": "dune", "behaviour": "slow", "ready_after": 0.6}]})
    result = redeploy(sb).json()["results"][0]
    assert result["verified_on_target"] is True and result["healthz_ok"] is True
    assert healthz(sb, "dune") == 503
    assert buildinfo(sb, "dune")["git_sha"] == DEFAULT_OLD_SHA
    assert sb.state()["tenants"]["dune"]["pending_sha"] == NEW_SHA
    time.sleep(0.65)
    assert healthz(sb, "dune") == 200
    assert buildinfo(sb, "dune")["git_sha"] == NEW_SHA


def test_stale_tenant_is_healthy_on_the_old_build_and_the_cp_says_verified(start):
    sb = start("stale")
    doc = redeploy(sb, batch_size=8).json()
    assert by_slug(doc)["cobalt"]["verified_on_target"] is True and "stragglers" not in doc
    assert [healthz(sb, "cobalt") for _ in range(3)] == [200, 200, 200]
    assert buildinfo(sb, "cobalt")["git_sha"] == DEFAULT_OLD_SHA
    assert buildinfo(sb, "birch")["git_sha"] == NEW_SHA


def test_flapping_tenant_alternates(start):
    sb = start({"tenants": [{"slug": "fjord", "behaviour": "flapping"}]})
    assert redeploy(sb).json()["results"][0]["verified_on_target"] is True
    assert [healthz(sb, "fjord") for _ in range(5)] == [200, 503, 200, 503, 200]
    assert buildinfo(sb, "fjord")["git_sha"] == NEW_SHA


def test_unreachable_tenant_drops_the_connection(start):
    sb = start({"tenants": ["acme", {"slug": "harbor", "behaviour": "unreachable"}]})
    assert healthz(sb, "harbor") == 200
    doc = redeploy(sb, max_stragglers=1).json()
    assert by_slug(doc)["harbor"] == {
        "slug": "harbor",
        "phase": "batch",
        "ssm_status": "Undeliverable",
        "ssm_exit_code": None,
        "healthz_ok": None,
        "verified_on_target": False,
        "error": "unreachable",
    }
    assert doc["stragglers"] == ["harbor"]
    for what in ("healthz", "buildinfo"):
        with pytest.raises(requests.ConnectionError):
            requests.get(sb.tenant_url("harbor") + "/" + what, timeout=5)
    assert healthz(sb, "acme") == 200
    assert [h["path"] for h in sb.tenant_hits["harbor"]][-2:] == ["healthz", "buildinfo"]


def test_cp_verified_overrides_what_the_cp_reports(start):
    sb = start(
        {
            "tenants": [
                {"slug": "liar", "behaviour": "wedged", "cp_verified": True},
                {"slug": "pessimist", "cp_verified": False},
            ]
        }
    )
    doc = redeploy(sb, max_stragglers=1).json()
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


def test_state_endpoint_shows_calls_and_builds(start):
    sb = start("incident")
    redeploy(sb, slugs=["acme"])
    state = requests.get(sb.url + "/sandbox/state", timeout=5).json()
    assert [(c["method"], c["status"], c["body"]["slugs"]) for c in state["cp_calls"]] == [("POST", 200, ["acme"])]
    assert state["tenants"]["acme"]["deployed_tag"] == TAG
    assert state["tenants"]["acme"]["serving_sha"] == NEW_SHA
    assert state["tenants"]["reno-stars"]["behaviour"] == "wedged"


# -- control plane faults ---------------------------------------------------------------------------


def faulty(fault: str, on: str = "redeploy", **extra) -> dict:
    return dict(eight(reno_stars="wedged"), control_plane={"fault": fault, "on": on, **extra})


def test_fault_http_500(start):
    sb = start(faulty("http_500"))
    response = cp(sb).post(sb.url + "/cp/admin/tenants/redeploy-fleet", json={"target_tag": TAG}, timeout=5)
    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    with pytest.raises(ContractError):
        validate("redeploy-response", response.json(), "not the redeploy shape")
    assert cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5).status_code == 200
    assert buildinfo(sb, "acme")["git_sha"] == DEFAULT_OLD_SHA


def test_fault_html_error_on_both_calls(start):
    sb = start(faulty("html_error", on="both"))
    for response in (
        cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5),
        cp(sb).post(sb.url + "/cp/admin/tenants/redeploy-fleet", json={"target_tag": TAG}, timeout=5),
    ):
        assert response.status_code == 502
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"<html>" in response.content
        with pytest.raises(ValueError):
            response.json()


def test_fault_on_list_leaves_redeploy_alone(start):
    sb = start(faulty("http_500", on="list"))
    assert cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5).status_code == 500
    assert redeploy(sb, max_stragglers=1).status_code == 200


def test_fault_slow(start):
    sb = start(faulty("slow", slow_seconds=0.4))
    began = time.monotonic()
    response = redeploy(sb, max_stragglers=1)
    assert time.monotonic() - began >= 0.4
    assert response.status_code == 200 and response.json()["stragglers"] == ["reno-stars"]
    began = time.monotonic()
    cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5)
    assert time.monotonic() - began < 0.3


def test_fault_missing_tenant(start):
    sb = start(faulty("missing_tenant", missing=["cobalt"]))
    doc = redeploy(sb, max_stragglers=1).json()
    assert "cobalt" not in by_slug(doc) and len(doc["results"]) == 7
    assert buildinfo(sb, "cobalt")["git_sha"] == NEW_SHA  # deployed, just not reported
    listing = cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5).json()
    assert "cobalt" in fleet_slugs(listing)
    sb_list = start(faulty("missing_tenant", on="list", missing=["cobalt"]))
    assert "cobalt" not in fleet_slugs(cp(sb_list).get(sb_list.url + "/cp/admin/tenants", timeout=5).json())


def test_fault_ok_despite_unverified(start):
    sb = start(faulty("ok_despite_unverified"))
    response = redeploy(sb, batch_size=3)  # strict budget, yet the CP claims success
    doc = response.json()
    assert response.status_code == 200 and doc["ok"] is True and "stragglers" not in doc
    assert by_slug(doc)["reno-stars"]["verified_on_target"] is False
    assert len(doc["results"]) == 8
    assert buildinfo(sb, "harbor")["git_sha"] == NEW_SHA


# -- transport -------------------------------------------------------------------------------------


def test_latency_is_added_to_every_request(start):
    sb = start(dict(eight(), latency_ms=200))
    for call in (lambda: healthz(sb, "acme"), lambda: cp(sb).get(sb.url + "/cp/admin/tenants", timeout=5)):
        began = time.monotonic()
        call()
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
        for path in ("/t/acme/healthz", "/t/birch/buildinfo", "/cp/admin/tenants"):
            conn.request("GET", path, headers={"Authorization": f"Bearer {sb.token}"})
            response = conn.getresponse()
            body = response.read()
            assert int(response.headers["Content-Length"]) == len(body)
            assert response.version == 11 and not response.will_close
            answers.append((response.status, body))
            sock = conn.sock
        assert sock is conn.sock  # one connection served all three
    finally:
        conn.close()
    assert answers[0] == (200, b"ok")
    assert json.loads(answers[1][1])["git_sha"] == DEFAULT_OLD_SHA
    assert answers[2][0] == 200


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
        [sys.executable, "-m", "sandbox", "--scenario", "incident", "--url-file", str(url_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
        listing = requests.get(url + "/cp/admin/tenants", headers={"Authorization": "Bearer sandbox-token"}, timeout=5)
        assert fleet_slugs(listing.json()) == EIGHT
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
    assert "wedged: reno-stars" in out


def test_cli_help_and_bad_scenario():
    help_run = subprocess.run(
        [sys.executable, "-m", "sandbox", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert help_run.returncode == 0 and "--scenario" in help_run.stdout and "incident" in help_run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "sandbox", "--scenario", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert bad.returncode == 2 and "unknown scenario 'nope'" in bad.stderr and bad.stdout == ""
