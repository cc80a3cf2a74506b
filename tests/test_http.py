"""fleet/http.py, the one HTTP client: the whole-answer deadline, the phase and cause of each failure, kept
alive connections, a proxy over TLS, one User-Agent for every client, and that it stands on public APIs
only (no subclass of urllib3 or http.client, and neither requests nor urllib3 imported)."""

from __future__ import annotations

import contextlib
import errno
import inspect
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http import client as http_client
from pathlib import Path

import pytest
from faultservers import (
    DRY,
    HOST,
    BacklogFull,
    Behaviour,
    Certs,
    ClosedPort,
    Conn,
    ConnectProxy,
    FaultServer,
    _read_request,
    body_drip,
    dry_runs,
    head,
    header_drip,
    json_reply,
    make_certs,
    raw,
    reply,
    reset,
    stall,
    truncated,
)

import fleet
from fleet import http
from fleet.cp import ControlPlane
from fleet.forge import Forge, Where
from fleet.tenant import TenantClient

ROOT = Path(__file__).resolve().parents[1]

# -- public APIs only -----------------------------------------------------------------------------------


def test_no_class_of_the_client_subclasses_urllib3_or_http_client():
    for name, cls in inspect.getmembers(http, inspect.isclass):
        if cls.__module__ != http.__name__:
            continue
        for base in cls.__mro__[1:]:
            assert not base.__module__.startswith(("urllib3", "http.client", "requests")), (name, base)


def test_the_clients_import_neither_requests_nor_urllib3_nor_jsonschema():
    code = (
        "import sys; import fleet.cp, fleet.tenant, fleet.forge; "
        "print(sorted(m for m in ('requests', 'urllib3', 'jsonschema') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# -- one User-Agent ------------------------------------------------------------------------------------


def test_the_user_agent_names_the_package_version():
    assert http.USER_AGENT == f"fleet-rollout/{fleet.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", fleet.__version__)
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M)
    assert re.search(r'^version = \{ ?attr = "fleet.__version__" ?\}$', pyproject, re.M)


def test_the_control_plane_tenants_and_forge_send_the_same_user_agent(serve, monkeypatch):
    monkeypatch.setenv("GITHUB_REPOSITORY", "acme/app")
    routes = {
        DRY: dry_runs("acme"),
        "/t/acme/healthz": reply(200, "ok", "text/plain"),
        "/repos/acme/app/branches/main": json_reply({"commit": {"sha": "c0ffee" * 6 + "c0ff"}}),
    }
    server = serve(routes)
    ControlPlane(server.url, "cpt-UA", timeout=3).enumerate({"target_tag": "v1", "confirm": True})
    assert (
        TenantClient(server.url + "/t/{slug}", allow_http=False, ca_bundle=None)
        .get(server.url + "/t/acme/healthz", time.monotonic() + 3)
        .status
        == 200
    )
    Forge(server.url, "ghs-UA", allow_http=False, ca_bundle=None).branch_head(Where("acme/app", "main"))
    agents = {r.path: r.headers.get("user-agent") for r in server.requests}
    assert set(agents) == {"/cp/admin/tenants/redeploy-fleet", "/t/acme/healthz", "/repos/acme/app/branches/main"}
    assert set(agents.values()) == {f"fleet-rollout/{fleet.__version__}"}


# -- the whole-answer deadline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    """One loopback server for the module, a behaviour per path."""
    routes: dict[str, Behaviour | list[Behaviour]] = {
        "/hello": reply(200, b"hello"),
        "/big": reply(200, b"x" * 5000),
        "/redirect": reply(302, b"", "text/plain", ("Location: http://127.0.0.1:9/elsewhere",)),
        "/header-drip": header_drip(seconds=5, interval=0.05),
        "/body-drip": body_drip(b"x" * 200, 0.05),
        "/stall": stall(),
        "/reset": reset(),
        "/reset-mid-body": reset(head(200, 400) + b'{"ok": tr'),
        "/closed": raw(b""),
        "/truncated": truncated(200, 400, b'{"ok": tr'),
        "/garbage": raw(b"HELLO\r\n\r\n"),  # not a status line
    }
    with FaultServer(routes) as started:
        yield started


def fetch(url: str, *, seconds: float = 1.0, connect: float = 1.0, cap: int = 1000, **client) -> http.Response:
    return http.Client(ca_bundle=client.pop("ca", None), **client).request(
        "GET", url, deadline=time.monotonic() + seconds, connect=connect, cap=cap
    )


def failure(url: str, **kwargs) -> http.RequestError:
    with pytest.raises(http.RequestError) as raised:
        fetch(url, **kwargs)
    assert HOST not in raised.value.cause or "did not" in raised.value.cause  # a cause, not the URL
    return raised.value


def test_an_answer_is_read_whole(server):
    answer = fetch(server.url + "/hello")
    assert (answer.status, answer.body, answer.headers["content-type"]) == (200, b"hello", "application/json")


def test_a_redirect_is_returned_as_it_is_never_followed(server):
    answer = fetch(server.url + "/redirect")
    assert answer.status == 302 and answer.headers["location"] == "http://127.0.0.1:9/elsewhere"


def test_headers_dripping_a_byte_at_a_time_end_at_the_deadline(server):
    # Each header byte comes well within any read timeout: only the deadline can end it.
    start = time.monotonic()
    exc = failure(server.url + "/header-drip", seconds=0.4)
    assert time.monotonic() - start < 1.5
    assert isinstance(exc, http.NoAnswer) and exc.timed_out and exc.cause == "timed out"


def test_a_body_dripping_a_byte_at_a_time_ends_at_the_deadline(server):
    start = time.monotonic()
    exc = failure(server.url + "/body-drip", seconds=0.4)
    assert time.monotonic() - start < 1.5
    assert isinstance(exc, http.BodyError) and exc.cause == "body not received before the deadline"


def test_a_body_past_the_cap_is_too_large_with_its_status(server):
    exc = failure(server.url + "/big", cap=4096)
    assert isinstance(exc, http.BodyTooLarge) and exc.status == 200 and exc.cause == "body larger than 4096 bytes"


# -- each failure: its phase and cause ----------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(certs) -> Iterator[FaultServer]:
    with FaultServer({"/": reply(200, b"{}")}, tls=certs.server_context()) as started:
        yield started


def test_a_closed_port_never_connected_connection_refused():
    port = ClosedPort()
    try:
        exc = failure(port.url)
    finally:
        port.close()
    assert isinstance(exc, http.NeverConnected) and not exc.lasting and exc.cause == "connection refused"


def test_a_connect_that_gets_no_answer_names_its_phase_and_time():
    full = BacklogFull()
    try:
        start = time.monotonic()
        exc = failure(full.url, connect=0.3)
        assert time.monotonic() - start < 1.5
    finally:
        full.close()
    assert isinstance(exc, http.NeverConnected) and exc.timed_out
    assert exc.cause == f"TCP connect to {HOST}:{full.port} did not finish within 0.3 s"


def test_no_answer_within_the_deadline_timed_out(server):
    exc = failure(server.url + "/stall", seconds=0.3)
    assert isinstance(exc, http.NoAnswer) and exc.cause == "timed out"


@pytest.mark.parametrize(
    "path, phase, cause",
    [
        ("/reset", http.NoAnswer, "connection reset"),
        ("/closed", http.NoAnswer, "connection closed without an answer"),
        ("/garbage", http.NoAnswer, "not an HTTP answer"),
        ("/reset-mid-body", http.BodyError, "connection reset"),
        ("/truncated", http.BodyError, "answer truncated"),
    ],
)
def test_a_broken_answer_names_its_phase_and_cause(server, path, phase, cause):
    exc = failure(server.url + path)
    assert type(exc) is phase and exc.cause == cause


def test_an_untrusted_certificate_never_connected_and_lasts(tls_server):
    exc = failure(tls_server.url + "/")
    assert isinstance(exc, http.NeverConnected) and exc.lasting
    assert exc.cause == "TLS certificate verification failed"


def test_a_certificate_for_another_name_fails_verification(tls_server, certs):
    exc = failure(f"https://localhost:{tls_server.port}/", ca=str(certs.ca))  # it names 127.0.0.1 only
    assert exc.cause == "TLS certificate verification failed"


def test_the_right_ca_file_verifies(tls_server, certs):
    assert fetch(tls_server.url + "/", ca=str(certs.ca)).status == 200


@contextlib.contextmanager
def _answers_plain_text() -> Iterator[int]:
    """A port that answers anything, a TLS hello included, with plain HTTP, then closes."""
    listener = socket.create_server((HOST, 0))
    listener.settimeout(2)

    def serve_one() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(2)
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=3)


def test_plain_http_on_an_https_url_is_tls_handshake_failed():
    with _answers_plain_text() as port:
        exc = failure(f"https://{HOST}:{port}/")
    assert isinstance(exc, http.NeverConnected) and exc.cause == "TLS handshake failed"


def test_a_header_with_a_line_break_is_never_sent(server):
    with pytest.raises(http.NeverConnected, match="the request's X-Token header holds a line break"):
        http.Client(ca_bundle=None).request(
            "GET", server.url + "/hello", headers={"X-Token": "a\r\nX-Evil: 1"}, deadline=time.monotonic() + 1,
            connect=1, cap=100,
        )  # fmt: skip
    assert all("x-evil" not in r.headers for r in server.requests)


# -- describe(): exceptions built directly ------------------------------------------------------------


def _context_of(inner: Exception) -> BaseException:
    try:
        try:
            raise inner
        except type(inner):
            raise RuntimeError("while handling it")  # noqa: B904 (the implicit __context__ is the point)
    except RuntimeError as exc:
        return exc


def _raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    "exc, cause",
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "host name not found"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "connection refused"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "host unreachable"),
        (TimeoutError("the answer did not arrive before the deadline"), "timed out"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "TLS certificate verification failed"),
        (ssl.SSLError(1, "wrong version number"), "TLS handshake failed"),
        (ConnectionResetError(errno.ECONNRESET, ""), "connection reset"),
        (http_client.RemoteDisconnected("Remote end closed"), "connection closed without an answer"),
        (http_client.IncompleteRead(b"ab", 10), "answer truncated"),
        (http_client.BadStatusLine("HELLO"), "not an HTTP answer"),
        (ConnectionAbortedError(errno.ECONNABORTED, ""), "connection aborted"),
        (BrokenPipeError(errno.EPIPE, ""), "connection broken"),
        (http.BodyTooLarge("body larger than 10 bytes", 200), "body larger than 10 bytes"),
        (_context_of(ConnectionResetError(errno.ECONNRESET, "")), "connection reset"),
        (_raised_from(RuntimeError("wrapped"), TimeoutError()), "timed out"),
    ],
)
def test_describe_maps_each_class_to_its_cause(exc, cause):
    assert http.describe(exc) == cause


@pytest.mark.parametrize(
    "exc, cause",
    [
        # Only the class counts, never the text.
        (ValueError("connection refused: timed out, certificate reset"), "ValueError"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "timed out"), "connection refused"),
        (http_client.IncompleteRead(b"", None), "answer truncated"),
    ],
)
def test_describe_ignores_the_exceptions_text(exc, cause):
    assert http.describe(exc) == cause


def test_describe_ends_on_a_cycle():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert http.describe(a) == "RuntimeError"


# -- connections kept alive ---------------------------------------------------------------------------

KEPT = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


def kept_alive(*answers: bytes | None, seen: list[str]) -> Behaviour:
    """Answer the requests on one connection in turn, keeping it open; None closes it unanswered. The
    path of each request after the first is added to `seen`."""

    def behave(conn: Conn) -> None:
        for number, answer in enumerate(answers):
            if number:
                request = _read_request(conn.sock)
                if request is None:
                    return
                seen.append(request.path)
            if answer is None:
                return
            conn.send(answer)
        conn.hold()

    return behave


def test_a_kept_alive_connection_carries_the_next_request(serve):
    later: list[str] = []
    server = serve({"/a": kept_alive(KEPT, KEPT, seen=later)})
    client = http.Client(ca_bundle=None, keep_alive=True)
    for _ in range(2):
        answer = client.request("GET", server.url + "/a", deadline=time.monotonic() + 2, connect=1, cap=100)
        assert (answer.status, answer.body) == (200, b"ok")
    assert server.connections == 1 and later == ["/a"]


def test_an_answer_that_asks_to_close_is_not_kept(serve):
    server = serve({"/a": reply(200, "ok", "text/plain")})  # Connection: close
    client = http.Client(ca_bundle=None, keep_alive=True)
    for _ in range(2):
        assert client.request("GET", server.url + "/a", deadline=time.monotonic() + 2, connect=1, cap=100).body == b"ok"
    assert server.connections == 2


def test_a_get_on_a_kept_connection_the_server_dropped_is_sent_again_once_on_a_new_one(serve):
    later: list[str] = []
    server = serve({"/a": [kept_alive(KEPT, None, seen=later), reply(200, "ok", "text/plain")]})
    client = http.Client(ca_bundle=None, keep_alive=True)
    for _ in range(2):
        assert client.request("GET", server.url + "/a", deadline=time.monotonic() + 2, connect=1, cap=100).body == b"ok"
    assert server.connections == 2 and later == ["/a"]  # the second GET: on the kept connection, then anew


def test_a_post_on_a_kept_connection_the_server_dropped_is_never_sent_again(serve):
    later: list[str] = []
    server = serve({"/a": [kept_alive(KEPT, None, seen=later), reply(200, "ok", "text/plain")]})
    client = http.Client(ca_bundle=None, keep_alive=True)
    client.request("POST", server.url + "/a", body=b"{}", deadline=time.monotonic() + 2, connect=1, cap=100)
    with pytest.raises(http.NoAnswer, match="connection closed without an answer"):
        client.request("POST", server.url + "/a", body=b"{}", deadline=time.monotonic() + 2, connect=1, cap=100)
    assert server.connections == 1 and later == ["/a"]


def test_the_control_plane_asks_for_one_connection_per_call(serve):
    server = serve({DRY: dry_runs("acme")})
    ControlPlane(server.url, "cpt-conn", timeout=3).enumerate({"target_tag": "v1", "confirm": True})
    assert server.requests[0].headers["connection"] == "close"


# -- a proxy that speaks TLS --------------------------------------------------------------------------


@contextlib.contextmanager
def tls_front(port: int, context: ssl.SSLContext) -> Iterator[str]:
    """An https:// proxy: TLS from the client, the bytes inside relayed to `port` (a ConnectProxy)."""
    listener = socket.create_server((HOST, 0))
    stopping = threading.Event()

    def relay(client: socket.socket) -> None:
        with contextlib.suppress(OSError), context.wrap_socket(client, server_side=True) as secure:
            with socket.create_connection((HOST, port)) as upstream:
                peers = {secure: upstream, upstream: secure}
                while not stopping.is_set():
                    ready = [secure] if secure.pending() else select.select(list(peers), [], [], 0.05)[0]
                    for sock in ready:
                        data = sock.recv(65536)
                        if not data:
                            return
                        peers[sock].sendall(data)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=relay, args=(client,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"https://{HOST}:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        listener.close()


def _proxy_environment(monkeypatch, proxy: str) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy)


def test_an_https_proxy_carries_tls_inside_tls(certs, tls_server, monkeypatch):
    with ConnectProxy() as proxy, tls_front(proxy.port, certs.server_context()) as front:
        _proxy_environment(monkeypatch, front)
        answer = fetch(tls_server.url + "/", ca=str(certs.ca))
        assert (answer.status, answer.body) == (200, b"{}")
        assert proxy.tunnels() == [f"{HOST}:{tls_server.port}"] and proxy.in_clear == []


def test_a_proxy_that_refuses_the_tunnel_says_its_status_and_gets_the_credentials(tls_server, monkeypatch):
    asked: list[dict[str, str]] = []

    def refuse(conn: Conn) -> None:
        asked.append(conn.request.headers)
        conn.send(head(407, 0, "text/plain"))

    with ConnectProxy(on_connect=refuse) as proxy:
        _proxy_environment(monkeypatch, f"http://ops:s%40cret@{HOST}:{proxy.port}")
        exc = failure(tls_server.url + "/")
    assert isinstance(exc, http.NeverConnected) and not exc.lasting
    assert (
        exc.cause
        == f"the proxy {HOST}:{proxy.port} did not open a tunnel to {HOST}:{tls_server.port}: it answered HTTP 407"
    )
    assert asked[0]["proxy-authorization"] == "Basic b3BzOnNAY3JldA=="  # ops:s@cret
    assert asked[0]["user-agent"] == http.USER_AGENT


def test_a_connection_the_server_closed_while_idle_is_not_used(serve):
    closed = threading.Event()

    def answer_then_close(conn: Conn) -> None:
        conn.send(KEPT)  # no Connection: close, yet the server closes it
        conn.sock.close()
        closed.set()

    server = serve({"/a": [answer_then_close, reply(200, "ok", "text/plain")]})
    client = http.Client(ca_bundle=None, keep_alive=True)
    client.request("POST", server.url + "/a", body=b"{}", deadline=time.monotonic() + 2, connect=1, cap=100)
    assert closed.wait(2)
    # a POST is never sent twice: it reaches the server only because the closed connection was left
    answer = client.request("POST", server.url + "/a", body=b"{}", deadline=time.monotonic() + 2, connect=1, cap=100)
    assert answer.body == b"ok" and server.connections == 2
