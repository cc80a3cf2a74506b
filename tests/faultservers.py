"""Loopback servers that misbehave on purpose, for the fault tests.

`FaultServer` is a raw-socket HTTP/1.1 server on 127.0.0.1: for each connection it reads one request,
records it, and hands the socket to a scripted behaviour (answer, stall, reset, drip, truncate,
redirect...). Behaviours are chosen per path by `routes`; a list of behaviours for one path is used one
per request, the last one repeating. Optionally it speaks TLS, and then also records any plain-HTTP
request that arrives on its port. `BacklogFull` is a port whose connections are never accepted (a
connect to it times out); `ClosedPort` is a port that refuses connections. `ConnectProxy` is a forward
proxy that records what it is asked and tunnels CONNECT.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import ssl
import struct
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
READ_LIMIT = 1024 * 1024  # a request larger than this is a test bug, not a fault to serve


@dataclass
class Request:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    raw: bytes
    at: float  # time.monotonic() when the request was complete

    def json(self) -> Any:
        return json.loads(self.body)


class Conn:
    """The accepted connection, as a behaviour sees it."""

    def __init__(self, sock: socket.socket, request: Request, server: FaultServer) -> None:
        self.sock = sock
        self.request = request
        self.server = server

    def send(self, data: bytes) -> bool:
        """Send, and say whether the client was still there to take it."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def hold(self, seconds: float = 3600.0) -> None:
        """Keep the connection open and silent until the client leaves, the server stops or time is up."""
        end = time.monotonic() + seconds
        while not self.server.stopping.is_set() and time.monotonic() < end:
            readable, _, _ = select.select([self.sock], [], [], 0.05)
            if readable:
                try:
                    if not self.sock.recv(65536):
                        return
                except OSError:
                    return

    def reset(self) -> None:
        """Abort the connection: the client sees a TCP RST, not an orderly close."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.sock.close()


Behaviour = Callable[[Conn], None]


# -- behaviours ----------------------------------------------------------------------------------


def head(status: int, length: int | None, content_type: str = "application/json", extra: Iterable[str] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += ["Connection: close", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


_REASONS = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def reply(status: int = 200, body: bytes | str = b"", content_type: str = "application/json", headers=()) -> Behaviour:
    data = body.encode() if isinstance(body, str) else body

    def behave(conn: Conn) -> None:
        conn.send(head(status, len(data), content_type, headers) + data)

    return behave


def json_reply(doc: Any, status: int = 200, headers=()) -> Behaviour:
    return reply(status, json.dumps(doc), "application/json", headers)


def raw(data: bytes) -> Behaviour:
    """Send exactly these bytes, then close."""
    return lambda conn: conn.send(data)


def stall() -> Behaviour:
    """Take the request and never answer."""
    return lambda conn: conn.hold()


def reset(prefix: bytes = b"") -> Behaviour:
    """Send `prefix` (perhaps nothing), then abort the connection with a RST."""

    def behave(conn: Conn) -> None:
        if prefix:
            conn.send(prefix)
            time.sleep(0.05)  # let the prefix leave before the RST discards the send queue
        conn.reset()

    return behave


def truncated(status: int, declared: int, sent: bytes) -> Behaviour:
    """Promise `declared` bytes of body, send fewer, then close cleanly."""
    return lambda conn: conn.send(head(status, declared) + sent)


def drip(data: bytes, interval: float, *, then_hold: bool = True) -> Behaviour:
    """Send `data` one byte at a time, `interval` apart (headers included if `data` holds them)."""

    def behave(conn: Conn) -> None:
        for i in range(len(data)):
            if conn.server.stopping.is_set() or not conn.send(data[i : i + 1]):
                return
            time.sleep(interval)
        if then_hold:
            conn.hold()

    return behave


def redirect(location: str, status: int = 302) -> Behaviour:
    return reply(status, b"", "text/plain", (f"Location: {location}",))


def header_drip(seconds: float = 15.0, interval: float = 0.05) -> Behaviour:
    """A status line, then header bytes one every `interval` for `seconds`: headers that never end in
    time. (Finite, so a client without a deadline makes its test slow and failing, never hung.)"""
    return drip(b"HTTP/1.1 200 OK\r\nX-Drip: " + b"a" * int(seconds / interval), interval, then_hold=False)


def body_drip(body: bytes, interval: float, status: int = 200) -> Behaviour:
    """Prompt headers that promise `body`, then the body one byte every `interval`."""

    def behave(conn: Conn) -> None:
        if conn.send(head(status, len(body))):
            drip(body, interval)(conn)

    return behave


# -- the server ----------------------------------------------------------------------------------


@dataclass
class _Route:
    behaviours: list[Behaviour]
    served: int = 0

    def next(self) -> Behaviour:
        behaviour = self.behaviours[min(self.served, len(self.behaviours) - 1)]
        self.served += 1
        return behaviour


@dataclass
class FaultServer:
    """A scripted HTTP server on loopback. `routes` maps a path (or "METHOD path", or "DRY METHOD path"
    for requests whose JSON body says dry_run: true) to a behaviour or a list of them; anything else is
    answered 404. `listen_after` binds the port at once but listens
    only after that many seconds, so early connections are refused."""

    routes: dict[str, Behaviour | list[Behaviour]] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None
    listen_after: float = 0.0
    # With `tls`: the connections (numbered from 1) accepted whose ClientHello is never answered.
    silent_handshakes: Container[int] = ()
    requests: list[Request] = field(default_factory=list)
    plaintext: list[bytes] = field(default_factory=list)  # plain HTTP sent to a TLS port
    tls_failures: int = 0
    connections: int = 0

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._routes = {k: _Route(v if isinstance(v, list) else [v]) for k, v in self.routes.items()}
        self._open: set[socket.socket] = set()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"fault-{self.port}")

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def start(self) -> FaultServer:
        if not self.listen_after:
            self._sock.listen(64)  # before start() returns: a client may connect at once
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2)

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def route(self, key: str, behaviour: Behaviour | list[Behaviour]) -> None:
        with self._lock:
            self._routes[key] = _Route(behaviour if isinstance(behaviour, list) else [behaviour])

    def received(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if (method in (None, r.method)) and (path in (None, r.path))]

    def wait_for(self, count: int = 1, path: str | None = None, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if len(self.received(path=path)) >= count:
                return True
            time.sleep(0.01)
        return False

    # -- plumbing ------------------------------------------------------------------------------

    def _serve(self) -> None:
        if self.listen_after:
            if self.stopping.wait(self.listen_after):
                return
            self._sock.listen(64)
        self._sock.settimeout(0.1)
        while not self.stopping.is_set():
            try:
                sock, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._handle, args=(sock, number), daemon=True).start()

    def _handle(self, plain: socket.socket, number: int) -> None:
        sock: socket.socket = plain
        with self._lock:
            self._open.add(plain)
        try:
            plain.settimeout(5)
            if self.tls is not None and number in self.silent_handshakes:
                Conn(plain, Request("", "", {}, b"", b"", time.monotonic()), self).hold()
                return
            if self.tls is not None:
                secure = self._handshake(plain)
                if secure is None:
                    return
                sock = secure
                with self._lock:
                    self._open.add(sock)
            request = _read_request(sock)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
                route = (
                    (self._routes.get(f"DRY {request.method} {request.path}") if _dry(request) else None)
                    or self._routes.get(f"{request.method} {request.path}")
                    or self._routes.get(request.path)
                )
                behaviour = route.next() if route else reply(404, b'{"error": "not found"}')
            sock.settimeout(None)
            behaviour(Conn(sock, request, self))
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(sock)
                self._open.discard(plain)
            with contextlib.suppress(OSError):
                sock.close()
            with contextlib.suppress(OSError):
                plain.close()

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket | None:
        first = sock.recv(8, socket.MSG_PEEK)
        if first and first[:1] != b"\x16":  # not a TLS handshake record: plain text on a TLS port
            request = _read_request(sock)
            with self._lock:
                self.plaintext.append(request.raw if request else first)
            return None
        try:
            assert self.tls is not None
            return self.tls.wrap_socket(sock, server_side=True)
        except (ssl.SSLError, OSError):
            with self._lock:
                self.tls_failures += 1
            return None


def _dry(request: Request) -> bool:
    try:
        return request.json().get("dry_run") is True
    except (ValueError, AttributeError):
        return False


def _read_request(sock: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > READ_LIMIT:
            return None
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Request(method, path, headers, body, data, time.monotonic())


# -- ports that fail to connect --------------------------------------------------------------------


class ClosedPort:
    """A port bound on loopback but not listening: every connection to it is refused."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"

    def close(self) -> None:
        self._sock.close()


class BacklogFull:
    """A listening socket that never accepts, its backlog filled: a new connection's SYN is dropped and
    connect() times out (Linux, tcp_abort_on_overflow=0)."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self._sock.listen(0)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._fill: list[socket.socket] = []
        for _ in range(64):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                client.connect((HOST, self.port))
            self._fill.append(client)
            _, writable, _ = select.select([], [client], [], 0.2)
            if not writable:
                break  # this one hangs in SYN_SENT: the queue is full
        else:
            raise RuntimeError("could not fill the listen backlog")

    def close(self) -> None:
        for sock in [*self._fill, self._sock]:
            sock.close()


# -- a forward proxy -------------------------------------------------------------------------------


@dataclass
class ConnectProxy:
    """A forward proxy on loopback, as a corporate one: it records the request line of everything it is
    sent. A CONNECT is tunnelled to its target (bytes copied both ways), unless `on_connect` scripts the
    proxy's answer instead (a stall, a drip). A plain-HTTP request in absolute form is recorded in
    `in_clear`, with its headers, and answered 502, never forwarded."""

    on_connect: Behaviour | None = None
    lines: list[str] = field(default_factory=list)  # "CONNECT 127.0.0.1:443 HTTP/1.1", ...
    in_clear: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        self._thread = threading.Thread(target=self._serve, daemon=True, name=f"proxy-{self.port}")
        self._thread.start()

    def tunnels(self) -> list[str]:
        """The host:port of each CONNECT, in order."""
        with self._lock:
            return [line.split(" ")[1] for line in self.lines if line.startswith("CONNECT ")]

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=2)

    def __enter__(self) -> ConnectProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                sock, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(sock,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        with self._lock:
            self._open.add(client)
        try:
            client.settimeout(5)
            request = _read_request(client)
            if request is None:
                return
            with self._lock:
                self.lines.append(request.raw.split(b"\r\n", 1)[0].decode("latin-1"))
            if request.method != "CONNECT":
                with self._lock:
                    self.in_clear.append(request)
                client.sendall(head(502, 0, "text/plain"))
                return
            if self.on_connect is not None:
                client.settimeout(None)
                self.on_connect(Conn(client, request, self))  # type: ignore[arg-type]
                return
            host, _, port = request.path.rpartition(":")
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
            with self._lock:
                self._open.add(upstream)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pump(client, upstream)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.stopping.is_set():
            readable, _, _ = select.select(list(peers), [], [], 0.05)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)


# -- TLS material ----------------------------------------------------------------------------------


@dataclass
class Certs:
    """A CA and a server certificate for 127.0.0.1 signed by it, made with the openssl CLI."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def make_certs(directory: Path) -> Certs:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fault test CA",
        "-keyout", "ca.key", "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-out", "server.pem", "-extfile", "ext.cnf")  # fmt: skip
    return Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key")


# -- a control plane's answers ---------------------------------------------------------------------

REDEPLOY = "POST /cp/admin/tenants/redeploy-fleet"
# The same endpoint's dry runs (the fleet's enumeration and the scope probes), routed apart.
DRY = "DRY " + REDEPLOY


def dry_runs(*slugs: Any) -> Behaviour:
    """A control plane that can scope: a dry run answers bare rows for its only_slugs, or for `slugs`
    (the fleet) when it has none."""

    def behave(conn: Conn) -> None:
        scope = conn.request.json().get("only_slugs") or list(slugs)
        json_reply({"ok": True, "results": [{"slug": s, "phase": "batch-1", "ssm_status": "DryRun"} for s in scope]})(
            conn
        )

    return behave


def redeploy_ok(conn: Conn) -> None:
    """A redeploy that verified every tenant it was asked for."""
    slugs = conn.request.json().get("only_slugs") or []
    results = [{"slug": s, "phase": "batch-1", "verified_on_target": True} for s in slugs]
    json_reply({"ok": True, "results": results})(conn)


def echoing(status: int, template: str, content_type: str = "application/json") -> Behaviour:
    """An answer that quotes the request's Authorization header back (`{auth}` in `template`), as a
    careless error page might."""

    def behave(conn: Conn) -> None:
        auth = conn.request.headers.get("authorization", "")
        text = template.replace("{auth}", json.dumps(auth)[1:-1] if "json" in content_type else auth)
        reply(status, text, content_type)(conn)

    return behave


# -- what every fault must leave behind -------------------------------------------------------------


def assert_no_token(token: str, *texts: str) -> None:
    """`token` in none of `texts`. The runner's own `::add-mask::` command is the one line allowed to
    carry it: that is how the runner learns what to hide."""
    for text in texts:
        kept = "\n".join(line for line in text.splitlines() if not line.startswith("::add-mask::"))
        assert token not in kept, f"token leaked into: {kept[:300]!r}"


def assert_fault(run, *causes: str, token: str, report_file: Path, errors: Iterable[BaseException] = ()) -> None:
    """A failed step: non-zero exit, exactly one `::error::` line that names the cause, a report (run_step
    has validated it against its schema), `ok` false, and the token in no artefact or exception."""
    assert run.code != 0, run.log
    lines = run.errors()
    assert len(lines) == 1, lines
    for cause in causes:
        assert cause in lines[0], f"{cause!r} not in {lines[0]!r}"
    assert run.report is not None, "no report written"
    assert run.report["ok"] is False
    assert run.outputs["ok"] == "false"
    texts = [run.log, run.summary, report_file.read_text(), *run.outputs.values()]
    for exc in errors:
        texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    assert_no_token(token, *texts)
