"""Control-plane faults, served by real loopback sockets: each test names the handling it shows, and fails
if that handling is removed. Every failing case also leaves a report, one `::error::` line naming the
cause, and the token in no artefact or exception."""

from __future__ import annotations

import email.utils
import json
import socket
import time
import traceback
from types import SimpleNamespace

import certifi
import pytest
from faultservers import (
    LIST,
    REDEPLOY,
    BacklogFull,
    ClosedPort,
    FaultServer,
    assert_fault,
    echoing,
    head,
    header_drip,
    json_reply,
    listing,
    make_certs,
    redeploy_ok,
    redirect,
    reply,
    reset,
    stall,
    truncated,
)
from support import TAG, run_step

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
        def list_fleet(self):
            try:
                return super().list_fleet()
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


def listed_only(cp: FaultServer) -> None:
    """The listing was asked for, with the token, and no redeploy was made."""
    assert [r.method for r in cp.requests] and all(r.method == "GET" for r in cp.requests)
    assert cp.requests[0].headers["authorization"] == BEARER
    assert cp.received("POST") == []


def in_flight_unknown(run, *slugs: str) -> None:
    outcomes = {t["slug"]: t["outcome"] for t in run.report["tenants"]}
    assert {s: outcomes[s] for s in slugs} == {s: "unknown" for s in slugs}


# -- reaching the control plane --------------------------------------------------------------------


def test_cp_connection_refused_is_retried_within_the_timeout_then_fails_clearly(rollout):
    port = ClosedPort()
    try:
        run = rollout(port.url, "--cp-timeout-seconds", "2")
    finally:
        port.close()
    rollout.fault(run, f"control plane unreachable at {port.url}: connection refused")
    # retried (a single refusal takes no time), but not beyond cp-timeout-seconds
    assert 0.5 < run.elapsed < 3.5
    assert run.report["calls"][0]["error"].endswith("connection refused")
    assert run.report["rollout"]["verdict"] == "failed"


def test_cp_refused_at_first_is_retried_until_it_listens(rollout, serve):
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: redeploy_ok}, listen_after=0.6)
    run = rollout(cp.url, "--cp-timeout-seconds", "5")
    assert run.code == 0, run.log
    assert [r.method for r in cp.requests] == ["GET", "POST"]


def test_cp_connect_timeout_is_bounded_by_cp_timeout(rollout):
    full = BacklogFull()
    try:
        run = rollout(full.url, "--cp-timeout-seconds", "1.5")
    finally:
        full.close()
    rollout.fault(run, f"control plane unreachable at {full.url}: timed out")
    assert run.elapsed < 3.5


def test_cp_read_timeout_after_the_post_is_not_resent_and_says_check_the_cp(rollout, serve):
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: stall()})
    run = rollout(cp.url, "--cp-timeout-seconds", "1.5")
    rollout.fault(run, "no answer from the control plane within 1.5 s after POST", "check the control plane")
    assert len(cp.received("POST")) == 1  # outcome unknown: never sent twice
    assert cp.received("POST")[0].headers["authorization"] == BEARER
    assert run.elapsed < 4
    in_flight_unknown(run, "acme", "birch")
    post = run.report["calls"][1]
    assert post["method"] == "POST" and post["body"]["slugs"] == ["acme", "birch"] and "unknown" in post["error"]


def test_cp_headers_dripped_byte_by_byte_still_end_at_cp_timeout(rollout, serve):
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: header_drip()})
    run = rollout(cp.url, "--cp-timeout-seconds", "1.5")
    rollout.fault(run, "after POST", "check the control plane")
    assert run.elapsed < 4  # a read timeout alone restarts with every byte
    assert len(cp.received("POST")) == 1
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
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: behaviour})
    run = rollout(cp.url)
    rollout.fault(run, cause, "outcome is unknown", "check the control plane")
    assert len(cp.received("POST")) == 1
    in_flight_unknown(run, "acme", "birch")


@pytest.mark.parametrize(
    "behaviour, cause",
    [
        (reset(head(200, 400) + b'{"tenants": [{"slug"'), "broke off: connection reset"),
        (truncated(200, 400, b'{"tenants": [{"slug": "acme"}]}'), "broke off: answer truncated"),
    ],
    ids=["reset-mid-body", "truncated-body"],
)
def test_cp_listing_broken_off_makes_no_redeploy(rollout, serve, behaviour, cause):
    cp = serve({LIST: behaviour})
    run = rollout(cp.url)
    rollout.fault(run, "GET /cp/admin/tenants", cause)
    listed_only(cp)


# -- what the control plane answered -----------------------------------------------------------------


@pytest.mark.parametrize(
    "status, hint",
    [(401, "(check cp-token)"), (403, "(the token lacks permission for this call)"), (404, "(check cp-url)")],
)
def test_cp_auth_and_not_found_statuses_name_the_fix(rollout, serve, status, hint):
    # The error page quotes the token back; it must not reach any artefact or exception.
    cp = serve({LIST: echoing(status, '{"error": "rejected Authorization: {auth}"}')})
    run = rollout(cp.url)
    rollout.fault(run, f"with HTTP {status}", hint)
    assert "***" in run.errors()[0]  # the echoed token, redacted
    listed_only(cp)
    assert len(cp.requests) == 1  # a refusal is not retried
    assert run.report["calls"][0]["status"] == status


def test_cp_error_that_echoes_the_token_is_redacted_in_the_exception_itself(serve):
    cp = serve({LIST: echoing(401, "<html>denied for {auth}</html>", "text/html")})
    client = ControlPlane(cp.url, TOKEN, timeout=2)
    with pytest.raises(CPError) as caught:
        client.list_fleet()
    assert "denied for Bearer ***" in str(caught.value)
    assert TOKEN not in "".join(traceback.format_exception(caught.value))
    assert TOKEN not in json.dumps(client.calls)
    assert TOKEN not in repr(client.__dict__)  # the client does not show its token either


def test_cp_429_retry_after_is_honoured_before_the_post_is_sent_again(rollout, serve):
    busy = reply(429, '{"error": "busy"}', headers=("Retry-After: 1",))
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: [busy, redeploy_ok]})
    run = rollout(cp.url, "--cp-timeout-seconds", "5")
    assert run.code == 0, run.log
    first, second = cp.received("POST")  # a 429 was refused unprocessed: the one POST that may go again
    assert 1.0 <= second.at - first.at < 2.5
    assert first.body == second.body


@pytest.mark.parametrize(
    "retry_after",
    ["3600", email.utils.formatdate(time.time() + 3600, usegmt=True)],
    ids=["seconds", "http-date"],
)
def test_cp_429_retry_after_beyond_cp_timeout_fails_at_once(rollout, serve, retry_after):
    busy = reply(429, '{"error": "busy"}', headers=(f"Retry-After: {retry_after}",))
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: busy})
    run = rollout(cp.url, "--cp-timeout-seconds", "3")
    rollout.fault(run, "POST /cp/admin/tenants/redeploy-fleet with HTTP 429", "exceeds the 3 s left")
    assert run.elapsed < 1.5  # no pointless wait for a retry that could not happen
    assert len(cp.received("POST")) == 1


def test_cp_500_without_the_result_shape_fails_with_its_error(rollout, serve):
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: json_reply({"error": "database is down"}, 500)})
    run = rollout(cp.url)
    rollout.fault(run, "POST /cp/admin/tenants/redeploy-fleet with HTTP 500: 'database is down'")
    assert len(cp.received("POST")) == 1
    in_flight_unknown(run, "acme", "birch")


BAD_GATEWAY = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1> {auth}</body></html>"


def test_cp_502_html_page_on_the_post_is_not_resent_and_the_outcome_is_unknown(rollout, serve):
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: echoing(502, BAD_GATEWAY, "text/html")})
    run = rollout(cp.url)
    rollout.fault(run, "with HTTP 502 with a non-JSON body", "outcome is unknown")
    assert len(cp.received("POST")) == 1
    assert "<html>" not in run.summary and "&lt;html&gt;" in run.summary  # inert in the summary
    in_flight_unknown(run, "acme", "birch")


def test_cp_502_html_page_on_the_listing_is_retried_then_fails(rollout, serve):
    cp = serve({LIST: echoing(502, BAD_GATEWAY, "text/html")})
    run = rollout(cp.url, "--cp-timeout-seconds", "2")
    rollout.fault(run, "GET /cp/admin/tenants with HTTP 502; still failing after")
    assert len(cp.requests) >= 2  # a GET is idempotent: retried
    assert run.elapsed < 3.5
    listed_only(cp)


@pytest.mark.parametrize("call", ["listing", "redeploy"])
def test_cp_redirect_is_not_followed_with_the_token(rollout, serve, call):
    elsewhere = serve({})
    if call == "listing":
        cp = serve({LIST: redirect(elsewhere.url + "/steal", 302)})
    else:
        cp = serve({LIST: listing("acme", "birch"), REDEPLOY: redirect(elsewhere.url + "/steal", 307)})
    run = rollout(cp.url)
    rollout.fault(run, "with a redirect", "not followed with the token")
    assert elsewhere.connections == 0 and elsewhere.requests == []
    if call == "listing":
        listed_only(cp)
    else:
        assert len(cp.received("POST")) == 1


def test_cp_non_json_listing_is_rejected_before_any_redeploy(rollout, serve):
    cp = serve({LIST: echoing(200, "tenants: acme, birch ({auth})", "text/plain")})
    run = rollout(cp.url)
    rollout.fault(run, "control plane answer to GET /cp/admin/tenants (HTTP 200): body is not JSON")
    listed_only(cp)


def test_cp_non_json_redeploy_answer_leaves_the_outcome_unknown(rollout, serve):
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: reply(200, "OK, deploying", "text/plain")})
    run = rollout(cp.url)
    rollout.fault(run, "answer to POST /cp/admin/tenants/redeploy-fleet (HTTP 200): body is not JSON")
    assert len(cp.received("POST")) == 1
    in_flight_unknown(run, "acme", "birch")


def padded_listing(size: int) -> bytes:
    """A valid listing, padded with whitespace to `size` bytes: only the cap stands in its way."""
    doc = json.dumps({"tenants": [{"slug": "acme"}, {"slug": "birch"}]}).encode()
    return doc + b" " * (size - len(doc))


def test_cp_huge_listing_is_capped(rollout, serve, monkeypatch):
    monkeypatch.setattr(http, "MAX_CP_BODY", 64 * 1024)
    cp = serve({LIST: reply(200, padded_listing(1024 * 1024))})
    run = rollout(cp.url)
    rollout.fault(run, "GET /cp/admin/tenants: body larger than 65536 bytes")
    listed_only(cp)


def test_cp_default_body_cap_is_16_mib(rollout, serve):
    assert http.MAX_CP_BODY == 16 * 1024 * 1024
    cp = serve({LIST: reply(200, padded_listing(http.MAX_CP_BODY + 1))})
    run = rollout(cp.url, "--cp-timeout-seconds", "10")
    rollout.fault(run, f"body larger than {http.MAX_CP_BODY} bytes")
    listed_only(cp)


@pytest.mark.parametrize(
    "body, cause",
    [
        ('{"tenants": [{"slug": "acme"}], "weight": NaN}', "non-standard JSON constant NaN"),
        ('{"tenants": [{"slug": "acme"}], "weight": -Infinity}', "non-standard JSON constant -Infinity"),
        ('{"tenants": [{"slug": "acme"}], "tenants": [{"slug": "birch"}]}', "duplicate key 'tenants'"),
    ],
    ids=["nan", "infinity", "duplicate-key"],
)
def test_cp_listing_with_nonstandard_json_is_rejected(rollout, serve, body, cause):
    cp = serve({LIST: reply(200, body)})
    run = rollout(cp.url)
    rollout.fault(run, "GET /cp/admin/tenants (HTTP 200)", cause)
    listed_only(cp)


def test_cp_redeploy_answer_with_duplicate_ok_is_rejected(rollout, serve):
    results = '[{"slug": "acme", "verified_on_target": true}, {"slug": "birch", "verified_on_target": true}]'
    body = '{"ok": false, "ok": true, "results": ' + results + "}"
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: reply(200, body)})
    run = rollout(cp.url)
    rollout.fault(run, "duplicate key 'ok'")
    in_flight_unknown(run, "acme", "birch")


@pytest.mark.parametrize(
    "answer, cause",
    [
        ({"ok": True, "results": [{"slug": "acme"}, {"slug": "birch", "verified_on_target": True}]},
         "results[0] is missing required field 'verified_on_target'"),
        ({"ok": True, "results": [{"slug": "acme", "verified_on_target": "true"},
                                  {"slug": "birch", "verified_on_target": True}]},
         "results[0].verified_on_target must be of type boolean"),
        ({"ok": "yes", "results": []}, "ok must be of type boolean"),
        ({"ok": True, "results": {"acme": True}}, "results must be of type array"),
        ({"ok": True, "results": [{"slug": "Acme", "verified_on_target": True}]}, "is not a valid slug"),
        ({"results": []}, "is missing required field 'ok'"),
    ],
    ids=["no-verified_on_target", "verified-as-string", "ok-as-string", "results-as-object", "bad-slug", "no-ok"],
)  # fmt: skip
def test_cp_schema_invalid_redeploy_answer_is_rejected(rollout, serve, answer, cause):
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: json_reply(answer)})
    run = rollout(cp.url)
    rollout.fault(run, "redeploy answer (HTTP 200) rejected", cause)
    assert len(cp.received("POST")) == 1
    in_flight_unknown(run, "acme", "birch")
    assert all(t["outcome"] != "shipped" for t in run.report["tenants"])


# -- the fleet listing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tenants, cause",
    [
        ([], "the control plane lists no tenants"),
        (["acme", "birch", "acme"], "duplicate slug 'acme'"),
        (["acme", "evil.example.com/x"], "'evil.example.com/x'"),
        (["acme", "Reno"], "'Reno'"),
        (["acme", "a--"], "'a--'"),
        (["acme", "acme\n"], "'acme\\n'"),
        (["acme", 7], "tenants[1].slug"),
    ],
    ids=["empty", "duplicate", "host-and-path", "upper-case", "trailing-hyphen", "trailing-newline", "not-a-string"],
)
def test_cp_bad_fleet_listing_is_refused_before_any_redeploy(rollout, serve, tenants, cause):
    cp = serve({LIST: listing(*tenants)})
    run = rollout(cp.url)
    rollout.fault(run, cause)
    listed_only(cp)
    assert run.report["calls"][0]["kind"] == "list"
    assert "scope" not in run.report["plan"]


def test_cp_listing_without_tenants_field_is_refused(rollout, serve):
    cp = serve({LIST: json_reply({"fleet": [{"slug": "acme"}]})})
    run = rollout(cp.url)
    rollout.fault(run, "is missing required field 'tenants'")
    listed_only(cp)


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
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: redeploy_ok}, tls=certs.server_context())
    run = rollout(cp.url)
    rollout.fault(run, "GET /cp/admin/tenants", "TLS certificate verification failed")
    assert cp.tls_failures == 1 and cp.requests == [] and cp.plaintext == []  # no second try, over http or not


def test_cp_certificate_verifies_with_the_right_ca_bundle_whatever_the_environment_says(
    rollout, serve, certs, monkeypatch
):
    # requests lets these variables override a session's CA bundle; ca-bundle must still win.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    cp = serve({LIST: listing("acme", "birch"), REDEPLOY: redeploy_ok}, tls=certs.server_context())
    run = rollout(cp.url, "--ca-bundle", str(certs.ca))
    assert run.code == 0, run.log
    assert [r.headers["authorization"] for r in cp.requests] == [BEARER, BEARER]
