"""fleet/http.py: a failed request's cause, by exception class; and the urllib3 / http.client internals the
deadline reader relies on (these tests fail if any of them moves)."""

from __future__ import annotations

import contextlib
import errno
import inspect
import io
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http import client as http_client

import certifi
import pytest
import requests
import urllib3
from faultservers import (
    HOST,
    BacklogFull,
    Behaviour,
    Certs,
    ClosedPort,
    FaultServer,
    body_drip,
    head,
    header_drip,
    make_certs,
    raw,
    reply,
    reset,
    stall,
    truncated,
)

from fleet import http

# -- the internals the deadline reader relies on -----------------------------------------------------


def test_urllib3_is_major_version_2():
    assert int(urllib3.__version__.split(".")[0]) == 2, urllib3.__version__


def test_pool_manager_builds_its_pools_from_pool_classes_by_scheme():
    manager = urllib3.PoolManager()
    assert manager.pool_classes_by_scheme == {"http": urllib3.HTTPConnectionPool, "https": urllib3.HTTPSConnectionPool}
    http.bounded(manager)
    assert type(manager.connection_from_url("http://127.0.0.1:9/")) is http._HTTPPool
    assert type(manager.connection_from_url("https://127.0.0.1:9/")) is http._HTTPSPool


def test_pools_build_their_connections_from_connection_cls():
    assert urllib3.HTTPConnectionPool.ConnectionCls is urllib3.connection.HTTPConnection
    assert urllib3.HTTPSConnectionPool.ConnectionCls is urllib3.connection.HTTPSConnection
    assert issubclass(http._HTTPPool.ConnectionCls, urllib3.connection.HTTPConnection)
    assert issubclass(http._HTTPSPool.ConnectionCls, urllib3.connection.HTTPSConnection)


def test_urllib3_connections_make_their_response_with_http_clients_response_class():
    assert issubclass(urllib3.connection.HTTPConnection, http_client.HTTPConnection)
    assert http_client.HTTPConnection.response_class is http_client.HTTPResponse
    for cls in (http._HTTPConnection, http._HTTPSConnection):
        assert issubclass(cls.response_class, http_client.HTTPResponse)


def test_http_client_response_reads_only_through_sock_makefile_rb():
    params = list(inspect.signature(http_client.HTTPResponse.__init__).parameters)
    assert params[:2] == ["self", "sock"], params

    class OnlyMakefile:
        calls: list[tuple] = []

        def makefile(self, *args, **kwargs):
            self.calls.append((args, kwargs))
            return io.BufferedReader(io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"))

    sock = OnlyMakefile()
    response = http_client.HTTPResponse(sock, method="GET")  # type: ignore[arg-type]
    response.begin()
    assert sock.calls == [(("rb",), {})]
    assert (response.status, response.read()) == (200, b"hi")


def test_sockets_give_a_raw_reader_and_take_a_timeout():
    assert ssl.SSLSocket.makefile is socket.socket.makefile
    assert callable(ssl.SSLSocket.settimeout)
    a, b = socket.socketpair()
    with a, b:
        reader = a.makefile("rb", buffering=0)
        b.sendall(b"x")
        buffer = bytearray(4)
        a.settimeout(1)
        assert reader.readinto(buffer) == 1 and buffer[:1] == b"x"
        reader.close()


def test_urllib3_response_has_read1_with_decode_content():
    assert "decode_content" in inspect.signature(urllib3.response.HTTPResponse.read1).parameters


def _bounded_pool(**kwargs) -> urllib3.PoolManager:
    return http.bounded(urllib3.PoolManager(retries=False, **kwargs))


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    """One loopback server for the module, a behaviour per path."""
    routes: dict[str, Behaviour | list[Behaviour]] = {
        "/hello": reply(200, b"hello"),
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


def test_a_bounded_response_is_read_through_the_deadline_reader(server):
    pool = _bounded_pool()
    deadline = time.monotonic() + 2
    with http.answer_by(deadline):
        resp = pool.request("GET", server.url + "/hello", preload_content=False, timeout=urllib3.Timeout(1, 1))
        assert isinstance(resp.connection, http._HTTPConnection)
        assert isinstance(resp._original_response, http._DeadlineResponse)
        assert isinstance(resp._original_response.fp.raw, http._DeadlineReader)
        assert http.read_body(resp, deadline, 100) == b"hello"
    resp = pool.request("GET", server.url + "/hello", preload_content=False, timeout=urllib3.Timeout(1, 1))
    assert not isinstance(resp._original_response.fp.raw, http._DeadlineReader)  # no deadline, no wrapper
    assert http.read_body(resp, time.monotonic() + 2, 100) == b"hello"


def test_a_bounded_request_with_dripping_headers_ends_at_the_deadline(server):
    # Each header byte comes well within the read timeout: only the deadline can end it.
    start = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError) as raised, http.answer_by(start + 0.4):
        _bounded_pool().request(
            "GET", server.url + "/header-drip", preload_content=False, timeout=urllib3.Timeout(1, 3)
        )
    assert time.monotonic() - start < 1.5
    assert http.describe(raised.value) == "timed out"


def test_a_bounded_body_dripping_a_byte_at_a_time_ends_at_the_deadline(server):
    start = time.monotonic()
    deadline = start + 0.4
    with pytest.raises((urllib3.exceptions.HTTPError, http.BodyError)) as raised, http.answer_by(deadline):
        resp = _bounded_pool().request(
            "GET", server.url + "/body-drip", preload_content=False, timeout=urllib3.Timeout(1, 3)
        )
        http.read_body(resp, deadline, 1000)
    assert time.monotonic() - start < 1.5
    assert http.describe(raised.value) in ("timed out", "body not received before the deadline")


# -- describe(): real failures over loopback -----------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(certs) -> Iterator[FaultServer]:
    with FaultServer({"/": reply(200, b"{}")}, tls=certs.server_context()) as started:
        yield started


@pytest.fixture(scope="module")
def backlog_full() -> Iterator[BacklogFull]:
    full = BacklogFull()
    yield full
    full.close()


Fetch = Callable[..., BaseException]


def _via_urllib3(url: str, *, connect: float = 1.0, read: float = 1.0, ca: str | None = None) -> BaseException:
    # The deadline is the read timeout: under answer_by, each read waits only for the time left.
    pool = _bounded_pool(cert_reqs="CERT_REQUIRED", ca_certs=ca or certifi.where())
    deadline = time.monotonic() + read
    try:
        with http.answer_by(deadline):
            resp = pool.request("GET", url, preload_content=False, timeout=urllib3.Timeout(connect, read))
            http.read_body(resp, deadline, 1000)
    except (urllib3.exceptions.HTTPError, http.BodyError, OSError, ValueError) as exc:
        return exc
    finally:
        pool.clear()
    raise AssertionError("the request succeeded")


def _via_requests(url: str, *, connect: float = 1.0, read: float = 1.0, ca: str | None = None) -> BaseException:
    # As the control-plane client does it: a bounded session, the body read from resp.raw.
    session = requests.Session()
    session.trust_env = False  # no proxy, no CA bundle from the environment
    for adapter in session.adapters.values():
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            http.bounded(adapter.poolmanager)
    deadline = time.monotonic() + read
    try:
        with http.answer_by(deadline):
            resp = session.get(url, timeout=(connect, read), stream=True, verify=ca or certifi.where())
            http.read_body(resp.raw, deadline, 1000)
    except (requests.RequestException, urllib3.exceptions.HTTPError, http.BodyError, OSError) as exc:
        return exc
    finally:
        session.close()
    raise AssertionError("the request succeeded")


both = pytest.mark.parametrize("fetch", [_via_urllib3, _via_requests], ids=["urllib3", "requests"])


def _cause(exc: BaseException, host: str = HOST) -> str:
    said = http.describe(exc)
    assert host not in said, said  # a cause, not the exception's text
    return said


@both
def test_a_closed_port_is_connection_refused(fetch: Fetch):
    port = ClosedPort()
    try:
        exc = fetch(port.url)
    finally:
        port.close()
    assert _cause(exc) == "connection refused"


@both
def test_a_connect_that_gets_no_answer_timed_out(fetch: Fetch, backlog_full):
    start = time.monotonic()
    exc = fetch(backlog_full.url, connect=0.3)
    assert time.monotonic() - start < 1.5
    # the phase, where and the time allowed, composed from the connection (not the exception's text)
    assert http.describe(exc) == f"TCP connect to {HOST}:{backlog_full.port} did not finish within 0.3 s"


@both
def test_no_answer_within_the_read_timeout_timed_out(fetch: Fetch, server):
    assert _cause(fetch(server.url + "/stall", read=0.3)) == "timed out"


@both
@pytest.mark.parametrize(
    "path, cause",
    [
        ("/reset", "connection reset"),
        ("/reset-mid-body", "connection reset"),
        ("/closed", "connection closed without an answer"),
        ("/truncated", "answer truncated"),
        ("/garbage", "connection broken"),
    ],
)
def test_a_broken_answer_is_described_by_its_class(fetch: Fetch, server, path, cause):
    assert _cause(fetch(server.url + path)) == cause


@both
def test_an_untrusted_certificate_is_tls_certificate_verification_failed(fetch: Fetch, tls_server):
    assert _cause(fetch(tls_server.url + "/")) == "TLS certificate verification failed"


@both
def test_a_certificate_for_another_name_is_tls_certificate_verification_failed(fetch: Fetch, tls_server, certs):
    url = f"https://localhost:{tls_server.port}/"  # the certificate names 127.0.0.1 only
    assert _cause(fetch(url, ca=str(certs.ca))) == "TLS certificate verification failed"


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


@both
def test_plain_http_on_an_https_url_is_tls_handshake_failed(fetch: Fetch):
    with _answers_plain_text() as port:
        assert _cause(fetch(f"https://{HOST}:{port}/")) == "TLS handshake failed"


# -- describe(): exceptions built directly ------------------------------------------------------------


def _conn() -> urllib3.connection.HTTPConnection:
    return urllib3.connection.HTTPConnection("cp.fleet.invalid", 443)


def _raised_from(exc: BaseException, cause: BaseException | None) -> BaseException:
    exc.__cause__ = cause
    return exc


def _new_connection_error(cause: BaseException | None) -> BaseException:
    return _raised_from(urllib3.exceptions.NewConnectionError(_conn(), "Failed to establish a new connection"), cause)


def _wrapped(exc: BaseException) -> list[BaseException]:
    """`exc` as urllib3 with retries, and requests, hand it on."""
    retried = urllib3.exceptions.MaxRetryError(None, "https://cp.fleet.invalid/x", exc)  # type: ignore[arg-type]
    return [exc, retried, _raised_from(requests.ConnectionError(retried), retried)]


def _context_of(inner: Exception) -> BaseException:
    try:
        try:
            raise inner
        except type(inner):
            raise RuntimeError("while handling it")  # noqa: B904 (the implicit __context__ is the point)
    except RuntimeError as exc:
        return exc


_gaierror = socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.mark.parametrize(
    "exc, cause",
    [
        (urllib3.exceptions.NameResolutionError("cp.fleet.invalid", _conn(), _gaierror), "host name not found"),
        (_gaierror, "host name not found"),
        (_new_connection_error(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")), "connection refused"),
        (_new_connection_error(OSError(errno.ENETUNREACH, "Network is unreachable")), "network unreachable"),
        (_new_connection_error(OSError(errno.EHOSTUNREACH, "No route to host")), "host unreachable"),
        (_new_connection_error(OSError("getaddrinfo returns an empty list")), "connection failed"),
        (_new_connection_error(None), "connection failed"),
        (_raised_from(urllib3.exceptions.ConnectTimeoutError(_conn(), "..."), TimeoutError("timed out")), "timed out"),
        (urllib3.exceptions.ReadTimeoutError(None, None, "Read timed out."), "timed out"),  # type: ignore[arg-type]
        (TimeoutError("the answer did not arrive before the deadline"), "timed out"),
        (
            urllib3.exceptions.SSLError(ssl.SSLCertVerificationError(1, "certificate verify failed")),
            "TLS certificate verification failed",
        ),  # noqa: E501
        (urllib3.exceptions.SSLError(ssl.SSLError(1, "wrong version number")), "TLS handshake failed"),
        (urllib3.exceptions.SSLError("no ssl module"), "TLS handshake failed"),
        (
            urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError(errno.ECONNRESET, "")),
            "connection reset",
        ),  # noqa: E501
        (
            urllib3.exceptions.ProtocolError(
                "Connection aborted.", http_client.RemoteDisconnected("Remote end closed")
            ),
            "connection closed without an answer",
        ),  # noqa: E501
        (
            urllib3.exceptions.ProtocolError("Connection broken", urllib3.exceptions.IncompleteRead(9, 391)),
            "answer truncated",
        ),  # noqa: E501
        (http_client.IncompleteRead(b"ab", 10), "answer truncated"),
        (
            urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionAbortedError(errno.ECONNABORTED, "")),
            "connection aborted",
        ),  # noqa: E501
        (
            urllib3.exceptions.ProtocolError("Connection aborted.", BrokenPipeError(errno.EPIPE, "")),
            "connection broken",
        ),
        (
            urllib3.exceptions.ProtocolError("Connection aborted.", http_client.BadStatusLine("HELLO")),
            "connection broken",
        ),
        (urllib3.exceptions.ProtocolError("Connection broken"), "connection broken"),
        (http.BodyError("body not received before the deadline"), "body not received before the deadline"),
        (http.BodyTooLarge("body larger than 10 bytes"), "body larger than 10 bytes"),
        (_context_of(ConnectionResetError(errno.ECONNRESET, "")), "connection reset"),
    ],
)
def test_describe_maps_each_class_to_its_cause(exc, cause):
    for each in _wrapped(exc):
        assert _cause(each, "cp.fleet.invalid") == cause, repr(each)


@pytest.mark.parametrize(
    "exc, cause",
    [
        # Text that the old substring matching would have misread: only the class counts.
        (ValueError("connection refused: timed out, certificate reset"), "ValueError"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "timed out"), "connection refused"),
        (urllib3.exceptions.ProtocolError("ssl certificate timeout refused"), "connection broken"),
        (http_client.IncompleteRead(b"", None), "answer truncated"),
    ],
)
def test_describe_ignores_the_exceptions_text(exc, cause):
    assert http.describe(exc) == cause


def test_describe_falls_back_to_the_class_name_of_what_failed():
    assert http.describe(ValueError("x")) == "ValueError"
    too_many = urllib3.exceptions.ResponseError("too many 500 error responses")
    assert http.describe(urllib3.exceptions.MaxRetryError(None, "/", too_many)) == "ResponseError"  # type: ignore[arg-type]
    assert http.describe(requests.ConnectionError("plain")) == "ConnectionError"
    decode = urllib3.exceptions.DecodeError("failed to decode it", zlib.error("bad data"))
    assert http.describe(decode) == "DecodeError"


def test_describe_ends_on_a_cycle():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert http.describe(a) == "RuntimeError"
