"""Tenant faults during verify (and the canary's soak), served by real loopback sockets. The control
plane and the tenants share one server, and the CP token is in the environment, so a token that leaked
into a tenant request would be seen; after every test, no tenant request carried Authorization or the
token."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from faultservers import (
    DRY,
    REDEPLOY,
    FaultServer,
    assert_fault,
    body_drip,
    dry_runs,
    head,
    header_drip,
    json_reply,
    make_certs,
    redeploy_ok,
    redirect,
    reply,
    reset,
)
from support import SHA, TAG, run_step

from fleet import tenant as fleet_tenant
from fleet.tenant import TenantClient, health_problem
from fleet.vocabulary import State
from rollout import drive
from rollout.cli import main as rollout_main
from verify.cli import main

TOKEN = "cpt-Tenant-Sentinel-93b1fZ"
OLD_SHA = "cd" * 20
ON_TARGET = json.dumps({"git_sha": SHA, "tag": TAG})
STALE = json.dumps({"git_sha": OLD_SHA})
UP = reply(200, "ok", "text/plain")
DOWN = reply(503, "unavailable", "text/plain")
PADDED = (ON_TARGET[:-1] + " " * (70 * 1024) + "}").encode()  # on target, and larger than a tenant body may be


def tenant(slug: str, healthz=UP, buildinfo=None) -> dict:
    return {f"/t/{slug}/healthz": healthz, f"/t/{slug}/buildinfo": buildinfo or reply(200, ON_TARGET)}


@pytest.fixture
def serve(serve):
    """The shared fault servers, with one more check after each test: no tenant request carried the
    token."""
    servers: list[FaultServer] = []

    def _serve(routes=None, **kwargs) -> FaultServer:
        server = serve(routes, **kwargs)
        servers.append(server)
        return server

    yield _serve
    for server in servers:
        for request in server.requests:
            if request.path.startswith("/t/"):
                assert "authorization" not in request.headers, request.path
                assert TOKEN.encode() not in request.raw, request.path


@pytest.fixture
def verify(tmp_path, capsys, monkeypatch):
    report = tmp_path / "verify.json"

    def _run(cp: FaultServer, *flags: str, template: str | None = None, slugs=("acme", "birch")):
        # The fleet comes from a control plane's answer, as a deploy script would have saved it.
        answer = tmp_path / "answer.json"
        answer.write_text(json.dumps({"ok": True, "results": [{"slug": s} for s in slugs]}))
        argv = [
            "--response", str(answer), "--tenant-url-template", template or cp.url + "/t/{slug}",
            "--expected-sha", SHA, "--poll-interval-seconds", "0.2", "--verify-timeout-seconds", "2",
            "--report", str(report), *flags,
        ]  # fmt: skip
        began = time.monotonic()
        run = run_step(main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=TOKEN)
        run.elapsed = time.monotonic() - began
        return run

    _run.fault = lambda run, *causes: assert_fault(run, *causes, token=TOKEN, report_file=report)
    return _run


def verdicts(run) -> dict[str, tuple[str, str | None]]:
    return {t["slug"]: (t["state"], t["reason"]) for t in run.report["verify"]["tenants"]}


def fleet(*tenants: dict) -> dict:
    """One server for the control plane (dry runs answered for acme and birch) and the tenants."""
    routes: dict = {DRY: dry_runs("acme", "birch")}
    for routes_of_one in tenants:
        routes.update(routes_of_one)
    return routes


# -- slow tenants ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "acme",
    [
        tenant("acme", healthz=header_drip()),
        tenant("acme", buildinfo=body_drip(PADDED[:4000] + b"}", 0.02)),  # on target, if it ever ended
    ],
    ids=["healthz-headers-drip", "buildinfo-body-drips"],
)
def test_tenant_dripping_a_byte_at_a_time_still_ends_at_the_verify_deadline(verify, serve, acme):
    cp = serve(fleet(acme, tenant("birch")))
    run = verify(cp, "--verify-timeout-seconds", "1.5")
    verify.fault(run, "1 of 2 tenants failed verification", "acme (unreachable")
    assert run.elapsed < 3.5
    state, reason = verdicts(run)["acme"]
    assert state == "unreachable" and ("timed out" in reason or "deadline" in reason), reason
    assert verdicts(run)["birch"][0] == "verified"


def test_tenants_get_with_dripping_headers_returns_at_its_deadline(serve):
    server = serve(tenant("acme", healthz=header_drip()))
    tenants = TenantClient(server.url + "/t/{slug}", allow_http=False, ca_bundle=None)
    began = time.monotonic()
    reply_ = tenants.get(tenants.base("acme") + "/healthz", time.monotonic() + 1.0)
    assert time.monotonic() - began < 1.5  # a read timeout alone restarts with every byte
    assert reply_.status is None and reply_.error == "timed out"


def test_canary_soak_with_dripping_healthz_ends_on_time(tmp_path, capsys, monkeypatch, serve):
    # The soak's first look finds healthz answering; the next one drips its headers for ever. Each
    # look may take up to REQUEST_SECONDS (here 1 s), however slowly the bytes come.
    monkeypatch.setattr(fleet_tenant, "REQUEST_SECONDS", 1.0)
    monkeypatch.setattr(drive, "REQUEST_SECONDS", 1.0)
    cp = serve(fleet(tenant("acme", healthz=[UP, header_drip()]), tenant("birch")) | {REDEPLOY: redeploy_ok})
    report = tmp_path / "report.json"
    argv = [
        "--cp-url", cp.url, "--target-tag", TAG, "--canary-slug", "acme", "--soak-seconds", "2",
        "--poll-interval-seconds", "0.2", "--tenant-url-template", cp.url + "/t/{slug}", "--expected-sha", SHA,
        "--report", str(report),
    ]  # fmt: skip
    began = time.monotonic()
    run = run_step(rollout_main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=monkeypatch, token=TOKEN)
    assert time.monotonic() - began < 5
    assert_fault(run, "canary acme turned unhealthy while soaking", "timed out", token=TOKEN, report_file=report)
    real = [r.json() for r in cp.received("POST") if not r.json()["dry_run"]]
    assert [b["only_slugs"] for b in real] == [["acme"]]  # birch never moved


# -- broken tenants ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "acme, reason",
    [
        (tenant("acme", healthz=reset()), "healthz: connection reset"),
        (tenant("acme", buildinfo=reset(head(200, 200) + b'{"git_sha": "ab')), "buildinfo: connection reset"),
    ],
    ids=["healthz-reset", "buildinfo-reset-mid-body"],
)
def test_tenant_connection_reset_is_unreachable(verify, serve, acme, reason):
    cp = serve(fleet(acme, tenant("birch")))
    run = verify(cp, "--verify-timeout-seconds", "0.6")
    verify.fault(run, "acme (unreachable", reason)
    assert verdicts(run)["acme"] == ("unreachable", reason)
    assert len(cp.received(path="/t/acme/healthz")) >= 2  # polled again until the deadline


@pytest.mark.parametrize(
    "acme, reason",
    [
        (tenant("acme", healthz=None), "healthz answered HTTP 302 (redirect, not followed)"),
        (tenant("acme", buildinfo=None), "buildinfo answered HTTP 301"),
    ],
    ids=["healthz", "buildinfo"],
)
def test_tenant_redirect_is_unhealthy_and_not_followed(verify, serve, acme, reason):
    elsewhere = serve(tenant("acme"))
    if acme["/t/acme/healthz"] is None:
        acme["/t/acme/healthz"] = redirect(elsewhere.url + "/t/acme/healthz", 302)
    else:
        acme["/t/acme/healthz"] = UP
        acme["/t/acme/buildinfo"] = redirect(elsewhere.url + "/t/acme/buildinfo", 301)
    cp = serve(fleet(acme, tenant("birch")))
    run = verify(cp, "--verify-timeout-seconds", "0.6")
    verify.fault(run, "acme (unhealthy", reason)
    assert verdicts(run)["acme"] == ("unhealthy", reason)
    assert elsewhere.connections == 0


@pytest.mark.parametrize(
    "buildinfo, reason",
    [
        (reply(200, "<html>build ab12</html>", "text/html"), "buildinfo: body is not JSON"),
        (json_reply({"sha": SHA}), "is missing required field 'git_sha'"),
        (json_reply({"git_sha": 7}), "git_sha must be of type string"),
        (reply(200, '{"git_sha": NaN}'), "non-standard JSON constant NaN"),
        (reply(200, json.dumps({"git_sha": OLD_SHA})[:-1] + f', "git_sha": "{SHA}"}}'), "duplicate key 'git_sha'"),
        (reply(200, PADDED), "buildinfo body too large"),
        (reply(500, ON_TARGET), "buildinfo answered HTTP 500"),
    ],
    ids=["not-json", "no-git_sha", "git_sha-not-string", "nan", "duplicate-key", "oversize", "status-500"],
)
def test_tenant_bad_buildinfo_is_unhealthy_with_the_reason(verify, serve, buildinfo, reason):
    cp = serve(fleet(tenant("acme", buildinfo=buildinfo), tenant("birch")))
    run = verify(cp, "--verify-timeout-seconds", "0.6")
    verify.fault(run, "acme (unhealthy")
    state, said = verdicts(run)["acme"]
    assert state == "unhealthy" and reason in said, said


def test_tenant_flapping_health_is_judged_on_what_was_seen_last(verify, serve):
    # acme flaps, then stays down on the old build; birch flaps on the target and is verified when
    # caught healthy.
    acme = tenant("acme", healthz=[UP, DOWN, UP, DOWN, UP, DOWN], buildinfo=reply(200, STALE))
    birch = tenant("birch", healthz=[DOWN, DOWN, UP, DOWN, UP])
    cp = serve(fleet(acme, birch))
    run = verify(cp, "--poll-interval-seconds", "0.1", "--verify-timeout-seconds", "1.2")
    verify.fault(run, "1 of 2 tenants failed verification", "acme (unhealthy: healthz answered HTTP 503)")
    assert verdicts(run)["acme"] == ("unhealthy", "healthz answered HTTP 503")  # not the "stale" it first showed
    assert len(cp.received(path="/t/acme/healthz")) >= 6
    assert verdicts(run)["birch"][0] == "verified"
    assert len(cp.received(path="/t/birch/healthz")) == 3  # done once verified


# -- TLS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tenant_with_an_untrusted_certificate_is_unreachable_without_fallback(verify, serve, certs):
    tenants = serve(tenant("acme") | tenant("birch"), tls=certs.server_context())
    cp = serve(fleet())
    run = verify(cp, "--verify-timeout-seconds", "0.6", template=tenants.url + "/t/{slug}")
    verify.fault(run, "2 of 2 tenants failed verification", "TLS certificate verification failed")
    assert verdicts(run)["acme"] == ("unreachable", "healthz: TLS certificate verification failed")
    assert tenants.tls_failures >= 2 and tenants.requests == []
    assert tenants.plaintext == []  # no retry over plain http on the tenant's port...
    assert cp.requests == []  # ...nor anywhere else


def test_tenant_certificate_verifies_with_the_right_ca_bundle(verify, serve, certs):
    tenants = serve(tenant("acme") | tenant("birch"), tls=certs.server_context())
    cp = serve(fleet())
    run = verify(cp, "--ca-bundle", str(certs.ca), template=tenants.url + "/t/{slug}")
    assert run.code == 0, run.log
    assert run.outputs["verified-count"] == "2"
    assert tenants.tls_failures == 0 and tenants.plaintext == []


# -- the token and the URLs --------------------------------------------------------------------------------


def test_tenant_requests_never_carry_the_token_even_on_the_cp_host(verify, serve):
    cp = serve(fleet(tenant("acme"), tenant("birch")))
    run = verify(cp)
    assert run.code == 0, run.log
    assert cp.received("POST") == []  # verify never calls the control plane
    hits = [r for r in cp.requests if r.path.startswith("/t/")]
    assert {r.path for r in hits} == {f"/t/{s}/{w}" for s in ("acme", "birch") for w in ("healthz", "buildinfo")}
    assert all("authorization" not in r.headers and TOKEN.encode() not in r.raw for r in hits)


@pytest.mark.parametrize("slug", ["evil.example.com/x", "Reno", "a--", "acme\n"])
def test_verify_refuses_a_bad_answer_before_any_tenant_request(verify, serve, slug):
    cp = serve(fleet(tenant("acme")))
    run = verify(cp, slugs=("acme", slug))
    verify.fault(run, "rejected: results[1].slug", "is not a valid slug")
    assert run.code == 2 and cp.requests == []


@pytest.fixture
def resolutions(monkeypatch):
    """Host names looked up; any name but loopback fails the lookup, so no network is ever used."""
    asked: list[str] = []
    real = socket.getaddrinfo
    lock = threading.Lock()

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            with lock:
                asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return asked


def test_tenant_plain_http_to_a_remote_host_is_refused_without_allow_http(verify, serve, resolutions):
    cp = serve(fleet())
    run = verify(cp, template="http://{slug}.fleet.invalid")
    verify.fault(run, "tenant-url-template uses plain http to a non-loopback host", "allow-http")
    assert run.code == 2
    assert resolutions == []  # refused before any lookup or connection
    assert cp.requests == []


def test_tenant_plain_http_to_a_remote_host_is_used_with_allow_http(verify, serve, resolutions):
    cp = serve(fleet())
    run = verify(cp, "--allow-http", "true", "--verify-timeout-seconds", "0.6", template="http://{slug}.fleet.invalid")
    verify.fault(run, "2 of 2 tenants failed verification")
    assert verdicts(run)["acme"] == ("unreachable", "healthz: host name not found")
    assert "acme.fleet.invalid" in resolutions  # the opt-in was the only thing in the way


def test_tenant_tls_handshake_that_times_out_names_its_phase_and_time(serve, certs):
    server = serve(tenant("acme"), tls=certs.server_context(), silent_handshakes=range(1, 100))
    tenants = TenantClient(server.url + "/t/{slug}", allow_http=False, ca_bundle=str(certs.ca))
    began = time.monotonic()
    reply_ = tenants.get(tenants.base("acme") + "/healthz", time.monotonic() + 0.6)
    assert time.monotonic() - began < 1.5
    assert reply_.error == f"TLS handshake with 127.0.0.1:{server.port} did not finish within 0.6 s"
    assert health_problem(reply_) == (State.UNREACHABLE, f"healthz: {reply_.error}")
