"""Proxies, through a real loopback forward proxy (tests/faultservers.py's ConnectProxy): one rule for the
control-plane, tenant and forge clients. Plain http never goes through a proxy (it would carry the token
in clear); https goes through HTTPS_PROXY in a CONNECT tunnel unless NO_PROXY names the host; and the
whole-answer deadline holds through the proxy."""

from __future__ import annotations

import json
import time

import pytest
from faultservers import (
    DRY,
    REDEPLOY,
    ConnectProxy,
    FaultServer,
    assert_fault,
    assert_no_token,
    drip,
    dry_runs,
    header_drip,
    json_reply,
    make_certs,
    redeploy_ok,
    reply,
    stall,
)
from support import SHA, TAG, run_step

from fleet import cp as cp_module
from fleet.tenant import TenantClient
from rollout.cli import main

TOKEN = "cpt-Proxy-Sentinel-2b7eR4"
FORGE_TOKEN = "ghs-Proxy-Forge-Sentinel-9d3c"
SWITCH = "FLEET_DEPLOYS_DISABLED"
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")
ON_TARGET = json.dumps({"git_sha": SHA})
UP = reply(200, "ok", "text/plain")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def environment(monkeypatch):
    """No proxy variable but those the test sets; a repository and branch for the forge's reads."""
    for name in PROXY_VARIABLES + NO_PROXY_VARIABLES + ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("PROD_AUTO_DEPLOY_MAX_STRAGGLERS", raising=False)
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/app")
    monkeypatch.setenv("GITHUB_REF", "refs/heads/main")
    monkeypatch.setenv("GITHUB_REF_NAME", "main")
    monkeypatch.setenv("GITHUB_REF_TYPE", "branch")
    monkeypatch.setenv("API_TOKEN", FORGE_TOKEN)
    return monkeypatch


@pytest.fixture
def proxy():
    proxies: list[ConnectProxy] = []

    def _proxy(**kwargs) -> ConnectProxy:
        started = ConnectProxy(**kwargs)
        proxies.append(started)
        return started

    yield _proxy
    for started in proxies:
        started.stop()


def the_fleet(**extra) -> dict:
    """A control plane, two tenants and a forge (the kill switch off, the branch on SHA), on one server."""
    routes = {DRY: dry_runs("acme", "birch"), REDEPLOY: redeploy_ok}
    for slug in ("acme", "birch"):
        routes |= {f"/t/{slug}/healthz": UP, f"/t/{slug}/buildinfo": reply(200, ON_TARGET)}
    routes[f"/repos/acme/app/actions/variables/{SWITCH}"] = json_reply({"name": SWITCH, "value": "false"})
    routes["/repos/acme/app/branches/main"] = json_reply({"commit": {"sha": SHA}})
    return routes | extra


@pytest.fixture
def rollout(tmp_path, capsys, environment):
    report = tmp_path / "report.json"

    def _run(server: FaultServer, *flags: str, env: dict[str, str] = {}):  # noqa: B006 (never mutated)
        for name, value in env.items():
            environment.setenv(name, value)
        argv = [
            "--cp-url", server.url, "--tenant-url-template", server.url + "/t/{slug}", "--api-url", server.url,
            "--kill-switch-variable", SWITCH, "--target-tag", TAG, "--expected-sha", SHA, "--soak-seconds", "0",
            "--max-stragglers", "0", "--batch-size", "2", "--cp-timeout-seconds", "3", "--verify", "true",
            "--verify-timeout-seconds", "3", "--poll-interval-seconds", "0.2", "--report", str(report), *flags,
        ]  # fmt: skip
        began = time.monotonic()
        run = run_step(main, argv, tmp_path=tmp_path, capsys=capsys, monkeypatch=environment, token=TOKEN)
        run.elapsed = time.monotonic() - began
        for token in (TOKEN, FORGE_TOKEN):
            assert_no_token(token, run.log, run.summary, report.read_text(), *run.outputs.values())
        return run

    _run.fault = lambda run, *causes: assert_fault(run, *causes, token=TOKEN, report_file=report)
    return _run


def reached_by_every_client(server: FaultServer) -> None:
    paths = [r.path for r in server.requests]
    assert "/cp/admin/tenants/redeploy-fleet" in paths  # the control plane
    assert "/t/acme/healthz" in paths and "/t/birch/buildinfo" in paths  # the tenants
    assert f"/repos/acme/app/actions/variables/{SWITCH}" in paths  # the forge (the kill switch)


def nothing_in_clear(proxy: ConnectProxy) -> None:
    assert proxy.in_clear == []
    for token in (TOKEN, FORGE_TOKEN):
        assert not any(token in line for line in proxy.lines)


# -- plain http: never through a proxy -----------------------------------------------------------------


def test_plain_http_to_loopback_never_goes_through_a_proxy(rollout, serve, proxy):
    through = proxy()
    server = serve(the_fleet())
    # Every variable a client could read a proxy from, upper and lower case.
    run = rollout(server, env=dict.fromkeys(PROXY_VARIABLES, through.url))
    assert run.code == 0, run.log
    assert through.lines == []  # the token never crossed the proxy, in clear or at all
    reached_by_every_client(server)


# -- https: through HTTPS_PROXY, in a tunnel ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy"])
def test_https_goes_through_the_proxy_in_a_tunnel_for_every_client(rollout, serve, proxy, certs, name):
    through = proxy()
    server = serve(the_fleet(), tls=certs.server_context())
    run = rollout(server, "--ca-bundle", str(certs.ca), env={name: through.url, "NO_PROXY": "example.com"})
    assert run.code == 0, run.log
    reached_by_every_client(server)
    # every connection the server saw came through a tunnel: control plane, tenants and forge alike
    assert through.tunnels() == [f"127.0.0.1:{server.port}"] * server.connections
    nothing_in_clear(through)
    assert server.requests[0].headers["authorization"] == f"Bearer {TOKEN}"  # inside the tunnel, to the CP


@pytest.mark.parametrize(
    "env",
    [{"HTTPS_PROXY": "{proxy}", "NO_PROXY": "127.0.0.1"}, {"https_proxy": "{proxy}", "no_proxy": "127.0.0.0/8"}],
    ids=["named-upper-case", "network-lower-case"],
)
def test_no_proxy_naming_the_host_connects_directly(rollout, serve, proxy, certs, env):
    through = proxy()
    server = serve(the_fleet(), tls=certs.server_context())
    run = rollout(server, "--ca-bundle", str(certs.ca), env={k: v.format(proxy=through.url) for k, v in env.items()})
    assert run.code == 0, run.log
    reached_by_every_client(server)
    assert through.lines == []


# -- a proxy that stalls or drips: the deadlines still hold -----------------------------------------------


def test_a_proxy_that_never_opens_the_tunnel_ends_at_the_connect_timeout(rollout, serve, proxy, certs, monkeypatch):
    monkeypatch.setattr(cp_module, "CONNECT_TIMEOUT", 0.5)
    through = proxy(on_connect=stall())
    server = serve(the_fleet(), tls=certs.server_context())
    run = rollout(server, "--ca-bundle", str(certs.ca), env={"HTTPS_PROXY": through.url})
    target = f"127.0.0.1:{server.port}"
    rollout.fault(run, f"the proxy 127.0.0.1:{through.port} did not open a tunnel to {target} within 0.5 s")
    assert run.elapsed < 2.5 and server.connections == 0


def test_a_proxy_that_drips_its_answer_to_connect_ends_at_the_calls_deadline(rollout, serve, proxy, certs):
    # one byte every 50 ms: no single read waits long, only the call's deadline can end it
    through = proxy(on_connect=drip(b"HTTP/1.1 200 Connection established\r\nX-Drip: " + b"a" * 300, 0.05))
    server = serve(the_fleet(), tls=certs.server_context())
    run = rollout(server, "--ca-bundle", str(certs.ca), "--cp-timeout-seconds", "1.5", env={"HTTPS_PROXY": through.url})
    rollout.fault(run, f"the proxy 127.0.0.1:{through.port} did not open a tunnel")
    assert run.elapsed < 3.5 and server.connections == 0


def test_the_whole_answer_deadline_holds_through_the_tunnel_for_the_control_plane(rollout, serve, proxy, certs):
    through = proxy()
    server = serve(the_fleet(**{REDEPLOY: header_drip()}), tls=certs.server_context())
    run = rollout(server, "--ca-bundle", str(certs.ca), "--cp-timeout-seconds", "1.5", env={"HTTPS_PROXY": through.url})
    rollout.fault(run, "no answer from the control plane within 1.5 s after POST", "check the control plane")
    assert run.elapsed < 4  # a read timeout alone restarts with every byte
    assert len(through.tunnels()) == server.connections >= 3


def test_the_whole_answer_deadline_holds_through_the_tunnel_for_a_tenant(serve, proxy, certs, environment):
    through = proxy()
    server = serve({"/t/acme/healthz": header_drip()}, tls=certs.server_context())
    environment.setenv("https_proxy", through.url)
    tenants = TenantClient(server.url + "/t/{slug}", allow_http=False, ca_bundle=str(certs.ca))
    began = time.monotonic()
    answer = tenants.get(server.url + "/t/acme/healthz", time.monotonic() + 0.8)
    assert time.monotonic() - began < 2.0
    assert answer.status is None and answer.error == "timed out"
    assert through.tunnels() == [f"127.0.0.1:{server.port}"]


def test_a_proxy_that_is_not_http_is_refused_before_any_call(rollout, serve, certs):
    server = serve(the_fleet(), tls=certs.server_context())
    run = rollout(server, "--ca-bundle", str(certs.ca), env={"ALL_PROXY": "socks5://127.0.0.1:1080"})
    rollout.fault(run, "the proxy in HTTPS_PROXY (or ALL_PROXY) must be an http:// or https:// URL, not 'socks5://'")
    assert run.code == 2 and server.connections == 0
