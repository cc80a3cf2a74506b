"""Control-plane faults, served by real loopback sockets: each test names the handling it shows, and fails
if that handling is removed. Every failing case also leaves a report, one `::error::` line naming the
cause, and the token in no artefact or exception."""

from __future__ import annotations

import base64
import email.utils
import html
import json
import socket
import time
import traceback
import urllib.parse
from types import SimpleNamespace

import certifi
import pytest
from faultservers import (
    DRY,
    REDEPLOY,
    BacklogFull,
    ClosedPort,
    FaultServer,
    assert_fault,
    assert_no_token,
    dry_runs,
    echoing,
    head,
    header_drip,
    json_reply,
    make_certs,
    redeploy_ok,
    redirect,
    reply,
    reset,
    stall,
    truncated,
)
from support import TAG, run_step

from fleet import cp as cp_module
from fleet import http
from fleet.cp import ControlPlane, CPError
from rollout import cli as rollout_cli
from rollout.cli import main

TOKEN = "cpt-Fault-Sentinel-4c1d9e7Q"
BEARER = f"Bearer {TOKEN}"


@pytest.fixture
def raised(monkeypatch):
    """Every CPError the step's control-plane client raised, unscrubbed, as the exception carried it."""
    seen = SimpleNamespace(errors=[])

    class Recording(ControlPlane):
        def enumerate(self, body):
            try:
                return super().enumerate(body)
            except CPError as exc:
                seen.errors.append(exc)
                raise

        def redeploy(self, body, kind):
            try:
                return super().redeploy(body, kind)
            except CPError as exc:
                seen.errors.append(exc)
                raise

    monkeypatch.setattr(rollout_cli, "ControlPlane", Recording)
    return seen


@pytest.fixture
def fast_retries(monkeypatch):
    """The contract's retry schedule (3 retries, 5/10/20 s apart) shrunk to 0.1/0.2/0.4 s, no jitter."""
    monkeypatch.setattr(cp_module, "RETRY", cp_module.RetryPolicy(delays=(0.1, 0.2, 0.4), jitter=0.0))


@pytest.fixture
def rollout(tmp_path, capsys, monkeypatch, raised):
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)
    report = tmp_path / "report.json"

    def _run(url: str, *flags: str):
        argv = [
            "--cp-url", url, "--target-tag", TAG, "--soak-seconds", "0", "--cp-timeout-seconds", "2",
            "--max-stragglers", "0", "--batch-size", "2", "--report", str(report), *flags,
        ]  # fmt: skip
        began = time.monotonic()
        run = run_step(main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=TOKEN)
        run.elapsed = time.monotonic() - began
        return run

    def _fault(run, *causes: str) -> None:
        assert_fault(run, *causes, token=TOKEN, report_file=report, errors=raised.errors)

    _run.fault = _fault
    return _run


def enumerated_only(cp: FaultServer) -> None:
    """Only dry runs were sent (the fleet's enumeration), with the token: no real redeploy was made."""
    assert cp.requests and all(r.json()["dry_run"] is True for r in cp.requests)
    assert cp.requests[0].headers["authorization"] == BEARER
    assert "only_slugs" not in cp.requests[0].json() and cp.requests[0].json()["confirm"] is True


def real_calls(cp: FaultServer) -> list:
    return [r for r in cp.received("POST") if r.json().get("dry_run") is not True]


def in_flight_unknown(run, *slugs: str) -> None:
    outcomes = {t["slug"]: t["outcome"] for t in run.report["tenants"]}
    assert {s: outcomes[s] for s in slugs} == {s: "unknown" for s in slugs}


# -- reaching the control plane --------------------------------------------------------------------


def test_cp_connection_refused_is_retried_on_the_schedule_then_fails_clearly(rollout, fast_retries):
    port = ClosedPort()
    try:
        run = rollout(port.url, "--cp-timeout-seconds", "2")
    finally:
        port.close()
    rollout.fault(run, f"control plane unreachable at {port.url}: connection refused", "gave up after 4 attempts")
    # every attempt says so: a refused connection never leaves silent seconds
    assert [w.split(" (attempt ")[1][:6] for w in run.warnings()] == ["1 of 4", "2 of 4", "3 of 4"]
    assert 0.6 < run.elapsed < 2.5


def test_cp_connection_refused_is_not_retried_past_the_calls_deadline(rollout):
    port = ClosedPort()
    try:
        run = rollout(port.url, "--cp-timeout-seconds", "2")
    finally:
        port.close()
    rollout.fault(run, "connection refused", "the next retry (in ", "would pass the call's deadline")
    assert run.elapsed < 1.5 and run.warnings() == []
    assert run.report["calls"][0]["error"].startswith(f"control plane unreachable at {port.url}: connection refused")
    assert run.report["rollout"]["verdict"] == "failed"


def test_cp_refused_at_first_is_retried_until_it_listens(rollout, serve, fast_retries):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok}, listen_after=0.6)
    run = rollout(cp.url, "--cp-timeout-seconds", "5")
    assert run.code == 0, run.log
    assert [r.json()["dry_run"] for r in cp.requests] == [True, True, False]  # enumeration, probe, batch


def test_cp_connect_timeout_is_bounded_by_cp_timeout(rollout):
    full = BacklogFull()
    try:
        run = rollout(full.url, "--cp-timeout-seconds", "1.5")
    finally:
        full.close()
    rollout.fault(
        run,
        f"control plane unreachable at {full.url}: TCP connect to 127.0.0.1:{full.port} did not finish within 1.5 s",
    )
    assert run.elapsed < 3.5


def test_cp_read_timeout_after_the_post_is_not_resent_and_says_check_the_cp(rollout, serve):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: stall()})
    run = rollout(cp.url, "--cp-timeout-seconds", "1.5")
    rollout.fault(run, "no answer from the control plane within 1.5 s after POST", "check the control plane")
    assert len(real_calls(cp)) == 1  # outcome unknown: never sent twice
    assert real_calls(cp)[0].headers["authorization"] == BEARER
    assert run.elapsed < 4
    in_flight_unknown(run, "acme", "birch")
    post = run.report["calls"][2]
    assert post["kind"] == "batch" and post["body"]["only_slugs"] == ["acme", "birch"] and "unknown" in post["error"]


def test_cp_headers_dripped_byte_by_byte_still_end_at_cp_timeout(rollout, serve):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: header_drip()})
    run = rollout(cp.url, "--cp-timeout-seconds", "1.5")
    rollout.fault(run, "after POST", "check the control plane")
    assert run.elapsed < 4  # a read timeout alone restarts with every byte
    assert len(real_calls(cp)) == 1
    in_flight_unknown(run, "acme", "birch")


@pytest.mark.parametrize(
    "behaviour, cause",
    [
        (reset(), "connection reset"),
        (reset(head(200, 400) + b'{"ok": true, "res'), "broke off: connection reset"),
        (truncated(200, 400, b'{"ok": true, "results": []'), "broke off: answer truncated"),
    ],
    ids=["reset-before-answer", "reset-mid-body", "truncated-body"],
)
def test_cp_post_broken_off_is_not_resent_and_the_outcome_is_unknown(rollout, serve, behaviour, cause):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: behaviour})
    run = rollout(cp.url)
    rollout.fault(run, cause, "outcome is unknown", "check the control plane")
    assert len(real_calls(cp)) == 1
    in_flight_unknown(run, "acme", "birch")


@pytest.mark.parametrize(
    "behaviour, cause",
    [
        (reset(head(200, 400) + b'{"ok": true, "results": [{"slug"'), "broke off: connection reset"),
        (truncated(200, 400, b'{"ok": true, "results": [{"slug": "acme"}]}'), "broke off: answer truncated"),
    ],
    ids=["reset-mid-body", "truncated-body"],
)
def test_cp_enumeration_broken_off_makes_no_redeploy(rollout, serve, behaviour, cause):
    cp = serve({DRY: behaviour})
    run = rollout(cp.url)
    rollout.fault(run, "POST /cp/admin/tenants/redeploy-fleet", cause)
    assert "outcome is unknown" not in run.errors()[0]  # a dry run deployed nothing
    enumerated_only(cp)


# -- what the control plane answered -----------------------------------------------------------------


@pytest.mark.parametrize(
    "status, hint",
    [(401, "(check cp-token)"), (403, "(the token lacks permission for this call)"), (404, "(check cp-url)")],
)
def test_cp_auth_and_not_found_statuses_name_the_fix(rollout, serve, status, hint):
    # The error page quotes the token back; it must not reach any artefact or exception.
    cp = serve({DRY: echoing(status, '{"error": "rejected Authorization: {auth}"}')})
    run = rollout(cp.url)
    rollout.fault(run, f"with HTTP {status}", hint)
    assert "***" in run.errors()[0]  # the echoed token, redacted
    enumerated_only(cp)
    assert len(cp.requests) == 1  # a refusal is not retried
    assert run.report["calls"][0]["status"] == status


def test_cp_error_that_echoes_the_token_is_redacted_in_the_exception_itself(serve):
    cp = serve({DRY: echoing(401, "<html>denied for {auth}</html>", "text/html")})
    client = ControlPlane(cp.url, TOKEN, timeout=2)
    with pytest.raises(CPError) as caught:
        client.enumerate({"target_tag": "v1", "confirm": True})
    assert "denied for Bearer ***" in str(caught.value)
    assert TOKEN not in "".join(traceback.format_exception(caught.value))
    assert TOKEN not in json.dumps(client.calls)
    assert TOKEN not in repr(client.__dict__)  # the client does not show its token either


def test_cp_429_retry_after_is_honoured_before_the_post_is_sent_again(rollout, serve):
    busy = reply(429, '{"error": "busy"}', headers=("Retry-After: 1",))
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: [busy, redeploy_ok]})
    run = rollout(cp.url, "--cp-timeout-seconds", "5")
    assert run.code == 0, run.log
    first, second = real_calls(cp)  # a 429 was refused unprocessed: the POST may go again
    assert 1.0 <= second.at - first.at < 2.5
    assert first.body == second.body


@pytest.mark.parametrize(
    "retry_after",
    ["3600", email.utils.formatdate(time.time() + 3600, usegmt=True)],
    ids=["seconds", "http-date"],
)
def test_cp_429_retry_after_beyond_cp_timeout_fails_at_once(rollout, serve, retry_after):
    busy = reply(429, '{"error": "busy"}', headers=(f"Retry-After: {retry_after}",))
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: busy})
    run = rollout(cp.url, "--cp-timeout-seconds", "3")
    rollout.fault(
        run, "POST /cp/admin/tenants/redeploy-fleet with HTTP 429", "would pass the call's deadline (3 s left)"
    )
    assert run.elapsed < 1.5  # no pointless wait for a retry that could not happen
    assert len(real_calls(cp)) == 1


def test_cp_500_without_the_result_shape_fails_with_its_error(rollout, serve):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: json_reply({"error": "database is down"}, 500)})
    run = rollout(cp.url)
    rollout.fault(run, "POST /cp/admin/tenants/redeploy-fleet with HTTP 500: 'database is down'")
    assert len(real_calls(cp)) == 1
    in_flight_unknown(run, "acme", "birch")


BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1> {auth}</body></html>"


def test_cp_502_html_page_on_the_post_is_not_resent_past_the_calls_deadline(rollout, serve):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: echoing(502, BAD_GATEWAY, "text/html")})
    run = rollout(cp.url)  # cp-timeout 2 s: the first retry, about 5 s later, would pass it
    rollout.fault(run, "with HTTP 502 with a non-JSON body", "would pass the call's deadline", "outcome is unknown")
    assert len(real_calls(cp)) == 1
    assert "<html>" not in run.summary and "&lt;html&gt;" in run.summary  # inert in the summary
    in_flight_unknown(run, "acme", "birch")


def test_cp_502_html_page_on_the_enumeration_is_retried_three_times_then_fails(rollout, serve, fast_retries):
    cp = serve({DRY: echoing(502, BAD_GATEWAY, "text/html")})
    run = rollout(cp.url, "--cp-timeout-seconds", "5")
    rollout.fault(run, "POST /cp/admin/tenants/redeploy-fleet with HTTP 502", "gave up after 4 attempts")
    assert len(cp.requests) == 4
    assert run.warnings() == [
        f"::warning::control plane answered HTTP 502 (attempt {n} of 4); sending it again in {d:.1f} s"
        for n, d in ((1, 0.1), (2, 0.2), (3, 0.4))
    ]
    assert run.report["calls"][0]["attempts"] == 4
    assert run.elapsed < 3.5
    enumerated_only(cp)


@pytest.mark.parametrize("call", ["enumeration", "redeploy"])
def test_cp_redirect_is_not_followed_with_the_token(rollout, serve, call):
    elsewhere = serve({})
    if call == "enumeration":
        cp = serve({DRY: redirect(elsewhere.url + "/steal", 302)})
    else:
        cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: redirect(elsewhere.url + "/steal", 307)})
    run = rollout(cp.url)
    rollout.fault(run, "with a redirect", "not followed with the token")
    assert elsewhere.connections == 0 and elsewhere.requests == []
    if call == "enumeration":
        enumerated_only(cp)
    else:
        assert len(real_calls(cp)) == 1


def test_cp_non_json_enumeration_is_rejected_before_any_redeploy(rollout, serve):
    cp = serve({DRY: echoing(200, "tenants: acme, birch ({auth})", "text/plain")})
    run = rollout(cp.url)
    rollout.fault(run, "control plane answer to POST /cp/admin/tenants/redeploy-fleet (HTTP 200): body is not JSON")
    enumerated_only(cp)


def test_cp_non_json_redeploy_answer_leaves_the_outcome_unknown(rollout, serve):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: reply(200, "OK, deploying", "text/plain")})
    run = rollout(cp.url)
    rollout.fault(run, "answer to POST /cp/admin/tenants/redeploy-fleet (HTTP 200): body is not JSON")
    assert len(real_calls(cp)) == 1
    in_flight_unknown(run, "acme", "birch")


def padded_enumeration(size: int) -> bytes:
    """A valid dry-run answer, padded with whitespace to `size` bytes: only the cap stands in its way."""
    doc = json.dumps({"ok": True, "results": [{"slug": "acme"}, {"slug": "birch"}]}).encode()
    return doc + b" " * (size - len(doc))


def test_cp_huge_enumeration_is_capped(rollout, serve, monkeypatch):
    monkeypatch.setattr(http, "MAX_CP_BODY", 64 * 1024)
    cp = serve({DRY: reply(200, padded_enumeration(1024 * 1024))})
    run = rollout(cp.url)
    rollout.fault(run, "POST /cp/admin/tenants/redeploy-fleet: body larger than 65536 bytes")
    enumerated_only(cp)


def test_cp_default_body_cap_is_16_mib(rollout, serve):
    assert http.MAX_CP_BODY == 16 * 1024 * 1024
    cp = serve({DRY: reply(200, padded_enumeration(http.MAX_CP_BODY + 1))})
    run = rollout(cp.url, "--cp-timeout-seconds", "10")
    rollout.fault(run, f"body larger than {http.MAX_CP_BODY} bytes")
    enumerated_only(cp)


@pytest.mark.parametrize(
    "body, cause",
    [
        ('{"ok": true, "results": [{"slug": "acme"}], "weight": NaN}', "non-standard JSON constant NaN"),
        ('{"ok": true, "results": [{"slug": "acme"}], "weight": -Infinity}', "non-standard JSON constant -Infinity"),
        ('{"ok": true, "results": [{"slug": "acme"}], "results": [{"slug": "birch"}]}', "duplicate key 'results'"),
    ],
    ids=["nan", "infinity", "duplicate-key"],
)
def test_cp_enumeration_with_nonstandard_json_is_rejected(rollout, serve, body, cause):
    cp = serve({DRY: reply(200, body)})
    run = rollout(cp.url)
    rollout.fault(run, "POST /cp/admin/tenants/redeploy-fleet (HTTP 200)", cause)
    enumerated_only(cp)


def test_cp_redeploy_answer_with_duplicate_ok_is_rejected(rollout, serve):
    results = '[{"slug": "acme", "verified_on_target": true}, {"slug": "birch", "verified_on_target": true}]'
    body = '{"ok": false, "ok": true, "results": ' + results + "}"
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: reply(200, body)})
    run = rollout(cp.url)
    rollout.fault(run, "duplicate key 'ok'")
    in_flight_unknown(run, "acme", "birch")


@pytest.mark.parametrize(
    "answer, cause",
    [
        ({"ok": True, "results": [{"slug": "acme", "verified_on_target": "true"},
                                  {"slug": "birch", "verified_on_target": True}]},
         "results[0].verified_on_target must be of type boolean"),
        ({"ok": "yes", "results": []}, "ok must be of type boolean"),
        ({"ok": True, "results": {"acme": True}}, "results must be of type array"),
        ({"ok": True, "results": [{"slug": "Acme", "verified_on_target": True}]}, "is not a valid slug"),
        ({"results": []}, "is missing required field 'ok'"),
    ],
    ids=["verified-as-string", "ok-as-string", "results-as-object", "bad-slug", "no-ok"],
)  # fmt: skip
def test_cp_schema_invalid_redeploy_answer_is_rejected(rollout, serve, answer, cause):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: json_reply(answer)})
    run = rollout(cp.url)
    rollout.fault(run, "redeploy answer (HTTP 200) rejected", cause)
    assert len(real_calls(cp)) == 1
    in_flight_unknown(run, "acme", "birch")
    assert all(t["outcome"] != "redeployed" for t in run.report["tenants"])


# -- the fleet's enumeration (an unscoped dry run) -----------------------------------------------------


@pytest.mark.parametrize(
    "tenants, cause",
    [
        ([], "it lists no tenants"),
        (["acme", "birch", "acme"], "duplicate slug 'acme'"),
        (["acme", "evil.example.com/x"], "'evil.example.com/x'"),
        (["acme", "Reno"], "'Reno'"),
        (["acme", "a--"], "'a--'"),
        (["acme", "acme\n"], "'acme\\n'"),
        (["acme", 7], "results[1].slug"),
    ],
    ids=["empty", "duplicate", "host-and-path", "upper-case", "trailing-hyphen", "trailing-newline", "not-a-string"],
)
def test_cp_bad_fleet_enumeration_is_refused_before_any_redeploy(rollout, serve, tenants, cause):
    rows = [{"slug": s, "phase": "batch-1", "ssm_status": "DryRun"} for s in tenants]
    cp = serve({DRY: json_reply({"ok": True, "results": rows})})
    run = rollout(cp.url)
    rollout.fault(run, cause)
    enumerated_only(cp)
    assert run.report["calls"][0]["kind"] == "enumerate"
    assert run.code == 1  # a bad answer from the control plane (nothing was deployed: no real call)
    assert "scope" not in run.report["plan"]


def test_cp_enumeration_without_results_field_is_refused(rollout, serve):
    cp = serve({DRY: json_reply({"ok": True, "fleet": [{"slug": "acme"}]})})
    run = rollout(cp.url)
    rollout.fault(run, "is missing required field 'results'")
    enumerated_only(cp)


# -- which URLs may be used -----------------------------------------------------------------------------


@pytest.fixture
def resolutions(monkeypatch):
    """Host names looked up; any name but loopback fails the lookup, so no network is ever used."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return asked


def test_cp_plain_http_to_a_remote_host_is_refused_without_allow_http(rollout, resolutions):
    run = rollout("http://cp.fleet.invalid")
    rollout.fault(run, "cp-url uses plain http to a non-loopback host", "allow-http")
    assert run.code == 2
    assert resolutions == []  # refused before any lookup or connection
    assert run.report["calls"] == []


def test_cp_plain_http_to_a_remote_host_is_used_with_allow_http(rollout, resolutions):
    run = rollout("http://cp.fleet.invalid", "--allow-http", "true", "--cp-timeout-seconds", "1")
    rollout.fault(run, "control plane unreachable at http://cp.fleet.invalid: host name not found")
    assert "cp.fleet.invalid" in resolutions  # the opt-in was the only thing in the way


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_cp_untrusted_certificate_fails_without_fallback(rollout, serve, certs):
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok}, tls=certs.server_context())
    run = rollout(cp.url)
    rollout.fault(run, "POST /cp/admin/tenants/redeploy-fleet", "TLS certificate verification failed")
    assert cp.tls_failures == 1 and cp.requests == [] and cp.plaintext == []  # no second try, over http or not


def test_cp_certificate_verifies_with_the_right_ca_bundle_whatever_the_environment_says(
    rollout, serve, certs, monkeypatch
):
    # requests lets these variables override a session's CA bundle; ca-bundle must still win.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok}, tls=certs.server_context())
    run = rollout(cp.url, "--ca-bundle", str(certs.ca))
    assert run.code == 0, run.log
    assert [r.headers["authorization"] for r in cp.requests] == [BEARER, BEARER, BEARER]


# -- the real dialect: retries of gateway flakes, scope safety ----------------------------------------


@pytest.mark.parametrize("status", [502, 503, 504])
def test_cp_gateway_flake_on_a_real_call_is_sent_again_and_the_rollout_goes_on(rollout, serve, fast_retries, status):
    flake = echoing(status, BAD_GATEWAY, "text/html")
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: [flake, flake, redeploy_ok]})
    run = rollout(cp.url, "--cp-timeout-seconds", "5")
    assert run.code == 0, run.log
    first, second, third = real_calls(cp)
    assert first.body == second.body == third.body  # declarative: the same redeploy, sent again
    assert run.warnings() == [
        f"::warning::control plane answered HTTP {status} (attempt 1 of 4); sending it again in 0.1 s",
        f"::warning::control plane answered HTTP {status} (attempt 2 of 4); sending it again in 0.2 s",
    ]
    assert run.report["calls"][-1]["attempts"] == 3 and run.report["calls"][-1]["status"] == 200


def test_cp_500_with_the_answers_shape_is_the_verdict_and_never_sent_again(rollout, serve, fast_retries):
    answer = {"ok": False, "error": "canary failed", "results": [{"slug": "acme", "verified_on_target": False}]}
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: json_reply(answer, 500)})
    run = rollout(cp.url, "--cp-timeout-seconds", "5")
    rollout.fault(run, "2 stragglers, max tolerated 0 (acme, birch)")
    assert len(real_calls(cp)) == 1 and not any("sending it again" in w for w in run.warnings())
    assert run.report["calls"][-1]["attempts"] == 1


def ignores_scope(*fleet: str) -> object:
    """A control plane that answers every call, dry or real, for the whole fleet."""
    rows = [{"slug": s, "phase": "batch-1", "verified_on_target": True} for s in fleet]
    return json_reply({"ok": True, "results": rows})


def test_cp_that_ignores_only_slugs_is_caught_by_the_probe_before_any_real_call(rollout, serve):
    cp = serve({DRY: ignores_scope("acme", "birch", "cobalt"), REDEPLOY: redeploy_ok})
    run = rollout(cp.url, "--batch-size", "1")
    rollout.fault(run, "cannot scope a call", "only_slugs acme", "answered for birch, cobalt too", "use mode: fleet")
    assert real_calls(cp) == []  # nothing deployed
    assert [c["kind"] for c in run.report["calls"]] == ["enumerate", "probe"]
    assert run.report["rollout"]["verdict"] == "cannot-scope"
    assert {t["outcome"] for t in run.report["tenants"]} == {"not-attempted"}


def test_cp_that_refuses_only_slugs_is_quoted_and_pointed_to_fleet_mode(rollout, serve):
    refuses = json_reply({"ok": False, "error": "unknown field: only_slugs"}, 400)
    cp = serve({DRY: [dry_runs("acme", "birch"), refuses], REDEPLOY: redeploy_ok})
    run = rollout(cp.url)
    rollout.fault(run, "cannot scope a call", "'unknown field: only_slugs'", "use mode: fleet")
    assert real_calls(cp) == []


def test_cp_that_widens_a_real_call_halts_the_rollout_after_that_call(rollout, serve):
    widened = ignores_scope("acme", "birch", "cobalt", "dune")
    cp = serve({DRY: dry_runs("acme", "birch", "cobalt", "dune"), REDEPLOY: [redeploy_ok, widened]})
    run = rollout(cp.url, "--batch-size", "1", "--max-stragglers", "3")
    rollout.fault(run, "widened the batch 2 call beyond its only_slugs", "redeploying acme, cobalt, dune", "halted")
    assert len(real_calls(cp)) == 2  # batch 1, then batch 2 widened: no batch 3
    assert run.report["rollout"]["verdict"] == "widened"
    assert run.report["outside_scope"] == ["acme", "cobalt", "dune"]
    assert "Touched outside the call's scope" in run.summary and "`cobalt`" in run.summary
    outcomes = {t["slug"]: t["outcome"] for t in run.report["tenants"]}
    # the widened call's rows for cobalt and dune say what it did to them: they are not left as untouched
    assert outcomes == {"acme": "redeployed", "birch": "redeployed", "cobalt": "redeployed", "dune": "redeployed"}


def test_an_older_control_planes_500_for_stragglers_within_the_budget_lets_the_rollout_go_on(rollout, serve):
    # An older control plane answers 500 whenever any tenant failed, whatever max_stragglers says.
    def older(conn):
        slugs = conn.request.json()["only_slugs"]
        rows = [{"slug": s, "phase": "batch-1", "verified_on_target": s != "birch"} for s in slugs]
        ok = all(r["verified_on_target"] for r in rows)
        json_reply({"ok": ok, "error": None if ok else "a tenant failed", "results": rows}, 200 if ok else 500)(conn)

    cp = serve({DRY: dry_runs("acme", "birch", "cobalt"), REDEPLOY: older})
    run = rollout(cp.url, "--max-stragglers", "1", "--batch-size", "2")
    assert run.code == 0, run.log
    assert run.report["rollout"]["verdict"] == "shipped-with-quarantine" and run.report["stragglers"] == ["birch"]
    assert len(real_calls(cp)) == 2  # the 500 of batch 1 did not halt batch 2
    assert any("answered HTTP 500 for stragglers the budget allows (birch)" in line for line in run.log.splitlines())
    strict = rollout(cp.url, "--max-stragglers", "0", "--batch-size", "2")
    assert strict.code == 1 and strict.report["rollout"]["verdict"] == "systemic"


def test_a_500_without_a_row_for_every_tenant_still_fails_the_rollout(rollout, serve):
    answer = {"ok": False, "error": "halted", "results": [{"slug": "acme", "verified_on_target": True}]}
    cp = serve({DRY: dry_runs("acme", "birch", "cobalt"), REDEPLOY: json_reply(answer, 500)})
    run = rollout(cp.url, "--max-stragglers", "1", "--batch-size", "3")
    rollout.fault(run, "2 stragglers, max tolerated 1")


def test_a_429_that_outlasts_the_retries_leaves_the_call_not_attempted_not_unknown(rollout, serve, fast_retries):
    busy = reply(429, '{"error": "busy"}')
    cp = serve({DRY: dry_runs("acme", "birch"), REDEPLOY: busy})
    run = rollout(cp.url, "--cp-timeout-seconds", "5")
    rollout.fault(run, "HTTP 429", "gave up after 4 attempts")
    assert "outcome is unknown" not in run.errors()[0]  # a 429 was turned away: nothing was done
    assert {t["outcome"] for t in run.report["tenants"]} == {"not-attempted"}


# -- a connection that never carried the POST -----------------------------------------------------------


def test_cp_tls_handshake_that_times_out_names_its_phase_and_leaves_the_call_not_attempted(
    rollout, serve, certs, monkeypatch
):
    monkeypatch.setattr(cp_module, "CONNECT_TIMEOUT", 0.5)
    # the enumeration and the scope probe get through; the batch's connection is accepted, its ClientHello ignored
    routes = {DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok}
    cp = serve(routes, tls=certs.server_context(), silent_handshakes=range(3, 100))
    run = rollout(cp.url, "--ca-bundle", str(certs.ca), "--cp-timeout-seconds", "3")
    rollout.fault(
        run,
        f"control plane unreachable at {cp.url}: TLS handshake with 127.0.0.1:{cp.port} did not finish within 0.5 s",
        "would pass the call's deadline",
    )
    assert "outcome is unknown" not in run.errors()[0]  # the POST was never sent
    assert run.elapsed < 2.5  # the connect timeout, not the call's 3 s
    assert real_calls(cp) == [] and cp.connections == 3
    assert {t["outcome"] for t in run.report["tenants"]} == {"not-attempted"}


def test_cp_tls_handshake_that_times_out_is_sent_again_like_a_connection_that_never_opened(
    rollout, serve, certs, monkeypatch, fast_retries
):
    monkeypatch.setattr(cp_module, "CONNECT_TIMEOUT", 0.5)
    routes = {DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok}
    cp = serve(routes, tls=certs.server_context(), silent_handshakes={3})  # only the batch's first connection
    run = rollout(cp.url, "--ca-bundle", str(certs.ca), "--cp-timeout-seconds", "5")
    assert run.code == 0, run.log
    assert len(real_calls(cp)) == 1 and run.report["calls"][-1]["attempts"] == 2
    assert run.warnings() == [
        f"::warning::control plane unreachable at {cp.url}: TLS handshake with 127.0.0.1:{cp.port} did not finish "
        "within 0.5 s (attempt 1 of 4); sending it again in 0.1 s"
    ]


# -- the token in another form -------------------------------------------------------------------------

ODD_TOKEN = "cpt-Echo/Sentinel+7a'Q&z<1>~"  # characters that URL-encoding, HTML and base64 each change


def _forms(token: str) -> dict[str, str]:
    bearer = f"Bearer {token}".encode()
    return {
        "url-encoded": urllib.parse.quote(token, safe=""),
        "url-encoded-plus": urllib.parse.quote_plus(token),
        "html-escaped": html.escape(token),
        "html-escaped-decimal": html.escape(token, quote=False).replace("'", "&#39;"),
        "base64": base64.b64encode(token.encode()).decode(),
        "base64-urlsafe-unpadded": base64.urlsafe_b64encode(token.encode()).decode().rstrip("="),
        "base64-bearer": base64.b64encode(bearer).decode(),
        "base64-basic-credentials": base64.b64encode(f"x:{token}".encode()).decode(),  # another alignment
    }


@pytest.mark.parametrize("form", list(_forms(ODD_TOKEN)))
def test_cp_error_that_echoes_the_token_in_another_form_is_scrubbed_everywhere(
    tmp_path, capsys, monkeypatch, serve, form
):
    echoed = _forms(ODD_TOKEN)[form]
    assert echoed != ODD_TOKEN and ODD_TOKEN not in echoed
    cp = serve({DRY: json_reply({"error": f"rejected {echoed} here"}, 401)})
    report = tmp_path / "report.json"
    argv = ["--cp-url", cp.url, "--target-tag", TAG, "--cp-timeout-seconds", "2", "--report", str(report)]
    run = run_step(main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=ODD_TOKEN)
    # (in base64 at another alignment, the few characters that hold a neighbour's bits too remain)
    assert_fault(run, "with HTTP 401: 'rejected ", "*** here'", token=ODD_TOKEN, report_file=report)
    assert cp.requests[0].headers["authorization"] == f"Bearer {ODD_TOKEN}"
    assert_no_token(echoed, run.log, run.summary, report.read_text(), *run.outputs.values())
