"""The one HTTP client of the control-plane, tenant and forge clients, and the rules it keeps for all
three: which URLs may be used, which go through a proxy, which CA file verifies them, that a redirect is
never followed, that an answer arrives whole (status line, headers and body) by the request's deadline
and within a size cap, and why a request failed, in a few words.

The connection is made in named phases (TCP connect, the proxy's tunnel, the TLS handshake), so a
failure says where it stopped and whether the request can have been sent. http.client then reads the
answer through a reader that gives each read only the time left before the deadline: a read timeout
alone restarts with every byte, so a server that drips its headers would never time out."""

from __future__ import annotations

import base64
import contextlib
import errno
import http.client
import io
import ipaddress
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, quote, unquote, urlsplit

from fleet import __version__
from fleet.contract import BadInput, show

MAX_CP_BODY = 16 * 1024 * 1024
MAX_TENANT_BODY = 64 * 1024
USER_AGENT = f"fleet-rollout/{__version__}"
MAX_PROXY_ANSWER = 16 * 1024  # the proxy's answer to CONNECT: a status line and a few headers


# -- why a request failed ------------------------------------------------------------------------------


class RequestError(Exception):
    """A request that gave no usable answer. `cause` says why in a few words, without the URL."""

    def __init__(self, cause: str, *, timed_out: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.timed_out = timed_out


class NeverConnected(RequestError):
    """The request was never sent: the name lookup, TCP connect, the proxy's tunnel or the TLS handshake
    failed. `lasting`: a failure another try would meet again (the certificate, the TLS handshake)."""

    def __init__(self, cause: str, *, timed_out: bool = False, lasting: bool = False) -> None:
        super().__init__(cause, timed_out=timed_out)
        self.lasting = lasting


class NoAnswer(RequestError):
    """The request was sent, or partly sent, and no whole status line and headers came back: the server
    may have acted on it."""


class BodyError(RequestError):
    """The status line and headers came, the body did not arrive whole."""


class BodyTooLarge(BodyError):
    """The body passed the size cap; the status is still good."""

    def __init__(self, cause: str, status: int) -> None:
        super().__init__(cause)
        self.status = status


# The short cause an exception stands for, by its class, checked in this order: several of these
# classes subclass others (RemoteDisconnected is a ConnectionResetError; TimeoutError, ssl.SSLError and
# socket.gaierror are OSErrors; IncompleteRead is an HTTPException).
_CAUSES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((socket.gaierror,), "host name not found"),
    ((TimeoutError,), "timed out"),  # socket.timeout is TimeoutError
    ((ssl.SSLCertVerificationError,), "TLS certificate verification failed"),  # the host name too
    ((ssl.SSLError,), "TLS handshake failed"),
    ((http.client.RemoteDisconnected,), "connection closed without an answer"),
    ((http.client.IncompleteRead,), "answer truncated"),
    ((http.client.HTTPException,), "not an HTTP answer"),
    ((ConnectionRefusedError,), "connection refused"),
    ((ConnectionResetError,), "connection reset"),
    ((ConnectionAbortedError,), "connection aborted"),
    ((BrokenPipeError,), "connection broken"),
)

# Other socket errors a connect can end with, by errno.
_ERRNO_CAUSES = {
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETDOWN: "network down",
    errno.EHOSTDOWN: "host down",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EACCES: "connection not permitted",
    errno.EPERM: "connection not permitted",
}


def _cause(exc: BaseException) -> str | None:
    if isinstance(exc, RequestError):
        return exc.cause
    for classes, cause in _CAUSES:
        if isinstance(exc, classes):
            return cause
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return _ERRNO_CAUSES.get(exc.errno) or os.strerror(exc.errno).lower()
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or while handling, nearest first, each once."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 16:
        seen.add(id(link))
        yield link
        link = link.__cause__ or (None if link.__suppress_context__ else link.__context__)


def describe(exc: BaseException) -> str:
    """A short cause for a failed request, without URLs or headers: by the class of the exception or of
    one it was raised from, never by its text. Failing that, the class's name."""
    for link in _chain(exc):
        cause = _cause(link)
        if cause is not None:
            return cause
    return type(exc).__name__


# -- which URLs may be used ---------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str, allow_http: bool) -> str:
    """An http(s) URL with a host; plain http only to loopback unless the user opted in."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"{what} must be an http(s) URL with a host: {show(url)}")
    if parts.username or parts.password:
        raise BadInput(f"{what} must not carry credentials in the URL")
    if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        raise BadInput(
            f"{what} uses plain http to a non-loopback host ({show(parts.hostname)}); "
            "use https, or opt in with allow-http"
        )
    return url.rstrip("/")


# -- which CA file verifies them ------------------------------------------------------------------------


def default_ca(ca_bundle: str | None) -> str:
    """The CA file every client verifies with (requests' rule, kept for all): ca-bundle first, then
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, then certifi's set."""
    found = ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if found:
        return found
    import certifi  # only when a TLS connection needs it: its import costs a run over plain http

    return certifi.where()


_contexts: dict[str, ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def tls_context(ca_file: str) -> ssl.SSLContext:
    """One verifying context per CA file: the certificate chain and the host name are always checked."""
    with _contexts_lock:
        context = _contexts.get(ca_file)
        if context is None:
            context = ssl.create_default_context(cafile=ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            # An intermediate in the CA file is trusted as an anchor, as urllib3 2 does.
            context.verify_flags |= getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
            _contexts[ca_file] = context
        return context


# -- which go through a proxy -------------------------------------------------------------------------


@dataclass(frozen=True)
class Proxies:
    """The one proxy rule, for every client. Plain http (loopback, or allowed by allow-http) never goes
    through a proxy: the proxy would read it, the token included. https goes through HTTPS_PROXY (or
    ALL_PROXY; lower case wins, as curl and requests read them) unless NO_PROXY names the host, a
    domain above it, or (as requests reads it) a network holding its address. The tunnel (CONNECT)
    carries TLS end to end: the proxy sees the host and port, never a header."""

    https: str | None
    no_proxy: str

    @classmethod
    def from_environment(cls) -> Proxies:
        if not any(name.lower().endswith("_proxy") for name in os.environ):
            return cls(None, "")  # spares the import below
        import urllib.request

        found = urllib.request.getproxies_environment()
        proxy = found.get("https") or found.get("all") or None
        if proxy and "://" not in proxy:
            proxy = "http://" + proxy  # as curl and requests take a bare host:port
        if proxy and urlsplit(proxy).scheme not in ("http", "https"):
            raise BadInput(
                f"the proxy in HTTPS_PROXY (or ALL_PROXY) must be an http:// or https:// URL, "
                f"not {show(urlsplit(proxy).scheme + '://')}"
            )
        return cls(proxy, found.get("no", ""))

    def for_url(self, url: str) -> str | None:
        """The proxy a request to `url` goes through; None to connect directly."""
        parts = urlsplit(url)
        if (
            parts.scheme != "https"
            or not parts.hostname
            or not self.https
            or self._bypassed(parts.hostname, parts.port)
        ):
            return None
        return self.https

    def _bypassed(self, host: str, port: int | None) -> bool:
        import urllib.request

        named = host if ":" in host or port is None else f"{host}:{port}"
        if urllib.request.proxy_bypass_environment(named, {"no": self.no_proxy}):  # type: ignore[attr-defined]
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        for entry in self.no_proxy.split(","):
            with contextlib.suppress(ValueError):
                if "/" in entry and address in ipaddress.ip_network(entry.strip(), strict=False):
                    return True
        return False


def proxy_headers(proxy: str) -> dict[str, str]:
    """Basic credentials for the proxy, from its URL (user:password@), as requests sends them."""
    parts = urlsplit(proxy)
    if parts.username is None:
        return {}
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return {"Proxy-Authorization": "Basic " + base64.b64encode(credentials.encode("latin-1")).decode()}


# -- connecting, in named phases ------------------------------------------------------------------------


class _Transport(Protocol):
    """What a connection is read and written through: a socket, a TLS socket, or TLS inside TLS."""

    def sendall(self, data: bytes, /) -> None: ...
    def recv_into(self, buffer: Any, /) -> int: ...
    def settimeout(self, seconds: float | None, /) -> None: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def of(cls, parts: SplitResult) -> _Endpoint:
        return cls(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


def _allowed(connect: float, deadline: float, phase: str) -> float:
    """The seconds one phase of connecting may take: the connect timeout, less near the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise NeverConnected(f"no time left before the deadline for the {phase}", timed_out=True)
    return min(connect, left)


def _seconds(allowed: float) -> str:
    return f"{round(allowed, 1):g} s"


def _tcp(where: _Endpoint, allowed: float, proxy: bool) -> socket.socket:
    what = " the proxy" if proxy else ""
    try:
        sock = socket.create_connection((where.host, where.port), timeout=allowed)
    except TimeoutError as exc:
        raise NeverConnected(
            f"TCP connect to{what} {where} did not finish within {_seconds(allowed)}", timed_out=True
        ) from exc
    except OSError as exc:
        raise NeverConnected(("connecting to the proxy: " if proxy else "") + describe(exc)) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # headers and body leave without delay
    return sock


def _handshake(
    sock: _Transport, context: ssl.SSLContext, where: _Endpoint, allowed: float, what: str = ""
) -> _Transport:
    """TLS with `where`, verified against the context's CA file; `what` names the proxy when it is one."""
    try:
        if isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket):
            sock.settimeout(allowed)
            return context.wrap_socket(sock, server_hostname=where.host)
        return _NestedTLS(sock, context, where.host, allowed)
    except TimeoutError as exc:
        sock.close()
        cause = f"TLS handshake with{what} {where} did not finish within {_seconds(allowed)}"
        raise NeverConnected(cause, timed_out=True) from exc
    except ssl.SSLError as exc:
        sock.close()
        raise NeverConnected(describe(exc), lasting=True) from exc
    except OSError as exc:
        sock.close()
        raise NeverConnected(describe(exc)) from exc


def _tunnel(sock: _Transport, proxy: str, target: _Endpoint, allowed: float) -> None:
    """Ask the proxy for a tunnel to `target` (CONNECT) and read its answer within `allowed` seconds,
    a byte at a time: nothing past the answer may be taken from the socket."""
    where = _Endpoint.of(urlsplit(proxy))
    failed = f"the proxy {where} did not open a tunnel to {target}"
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: {USER_AGENT}"]
    lines += [f"{name}: {value}" for name, value in proxy_headers(proxy).items()]
    reader = _Deadline(sock, time.monotonic() + allowed)
    try:
        reader.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = _head_of_connect(reader)
    except TimeoutError as exc:
        sock.close()
        raise NeverConnected(f"{failed} within {_seconds(allowed)}", timed_out=True) from exc
    except OSError as exc:
        sock.close()
        raise NeverConnected(f"{failed}: {describe(exc)}") from exc
    status = re.match(rb"HTTP/1\.[01] (\d{3})[ \r]", answer)
    if status is None or not 200 <= int(status[1]) < 300:
        sock.close()
        said = f"it answered HTTP {int(status[1])}" if status else "its answer was not HTTP"
        raise NeverConnected(f"{failed}: {said}")


def _head_of_connect(reader: _Deadline) -> bytes:
    answer = bytearray()
    byte = bytearray(1)
    while not answer.endswith(b"\r\n\r\n"):
        if len(answer) > MAX_PROXY_ANSWER or not reader.recv_into(byte):
            raise ConnectionAbortedError(errno.ECONNABORTED, "the proxy's answer ended early")
        answer += byte
    return bytes(answer)


class _NestedTLS:
    """TLS with the target inside the TLS connection to an https:// proxy, through ssl's memory BIOs
    (a TLS socket cannot be wrapped again)."""

    def __init__(self, outer: _Transport, context: ssl.SSLContext, host: str, allowed: float) -> None:
        self._outer = outer
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        self._until: float | None = None
        self.settimeout(allowed)
        self._pump(self._tls.do_handshake)

    def _pump(self, operation: Any, *args: Any) -> Any:
        while True:
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                self._flush()
                if self._until is not None:
                    left = self._until - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out") from None
                    self._outer.settimeout(left)
                data = bytearray(65536)
                received = self._outer.recv_into(data)
                if received:
                    self._incoming.write(data[:received])
                else:
                    self._incoming.write_eof()
                continue
            self._flush()
            return result

    def _flush(self) -> None:
        pending = self._outgoing.read()
        if pending:
            self._outer.sendall(pending)

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._pump(self._tls.write, view) :]

    def recv_into(self, buffer: Any) -> int:
        try:
            return int(self._pump(self._tls.read, len(buffer), buffer))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0  # the end of the stream, with or without TLS's own goodbye (as a TLS socket reads it)

    def settimeout(self, seconds: float | None) -> None:
        self._until = None if seconds is None else time.monotonic() + seconds
        self._outer.settimeout(seconds)

    def fileno(self) -> int:
        return self._outer.fileno()

    def close(self) -> None:
        self._outer.close()


# -- reading an answer by its deadline ------------------------------------------------------------------


class _Deadline:
    """A connection as http.client's response sees it (it only calls makefile("rb")), with every send and
    read given only the time left before the request's deadline (monotonic)."""

    def __init__(self, transport: _Transport, deadline: float) -> None:
        self.transport = transport
        self.deadline = deadline

    def _wait(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer did not arrive before the deadline")
        self.transport.settimeout(left)

    def sendall(self, data: bytes) -> None:
        self._wait()
        self.transport.sendall(data)

    def recv_into(self, buffer: Any) -> int:
        self._wait()
        return self.transport.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def dropped(self) -> bool:
        """Whether an idle connection was closed by the server (or has something unasked to say)."""
        try:
            readable, _, _ = select.select([self.transport], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.transport.close()


class _Reader(io.RawIOBase):
    """The raw reader under the response's buffer; closing it leaves the connection to its owner."""

    def __init__(self, connection: _Deadline) -> None:
        self._connection = connection

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._connection.recv_into(buffer)


# -- the client ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """A whole answer: a redirect (3xx) is one too, as it is never followed."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes


_LINE_BREAK = re.compile(r"[\r\n\x00]")
_Key = tuple[str, str, int]


def _target(parts: SplitResult) -> str:
    """The request target, with anything a request line cannot carry percent-encoded."""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if target.isascii() and target.isprintable() and " " not in target:
        return target
    return "".join(char if " " < char < "\x7f" else quote(char) for char in target)


class Client:
    """HTTP/1.1 for one kind of server: the environment's proxy (`Proxies`), TLS always verified with the
    CA file `default_ca` picks, redirects never followed, one User-Agent, and each answer read whole by
    its deadline. `keep_alive`: an answer read whole, whose server did not ask to close, leaves its
    connection for the next request to the same scheme, host and port (at most `idle` of them, each
    kept while the server keeps it); otherwise every request has its own connection."""

    def __init__(self, *, ca_bundle: str | None, keep_alive: bool = False, idle: int = 64) -> None:
        self.proxies = Proxies.from_environment()
        self._ca_bundle = ca_bundle
        self._keep_alive = keep_alive
        self._idle_limit = idle
        self._idle: dict[_Key, list[_Deadline]] = {}
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        url: str,
        *,
        deadline: float,
        connect: float,
        cap: int,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Response:
        """Send one request and read its answer whole by `deadline` (monotonic), each phase of connecting
        within `connect` seconds, the body within `cap` bytes. Raises a RequestError saying which phase
        failed: NeverConnected (never sent), NoAnswer (sent, no answer), BodyError, BodyTooLarge."""
        parts = urlsplit(url)
        try:
            key = (parts.scheme, parts.hostname or "", _Endpoint.of(parts).port)
        except ValueError:
            raise NeverConnected("the URL's port is not a number", lasting=True) from None
        head = self._head(method, parts, headers or {}, body)
        connection = self._take(key, deadline)
        if connection is not None:
            try:
                return self._exchange(key, connection, head, method, cap)
            except NoAnswer as exc:
                if method != "GET" or not isinstance(exc.__cause__, ConnectionError):
                    raise
                # The server closed the idle connection as it was taken: a GET is sent again, once.
        connection = _Deadline(self._connect(parts, url, connect, deadline), deadline)
        return self._exchange(key, connection, head, method, cap)

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _head(self, method: str, parts: SplitResult, headers: Mapping[str, str], body: bytes | None) -> bytes:
        where = _Endpoint.of(parts)
        default = 443 if parts.scheme == "https" else 80
        host = str(where) if where.port != default else str(where).rsplit(":", 1)[0]
        fields = {"Host": host, "User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        if body is not None:
            fields["Content-Length"] = str(len(body))
        if not self._keep_alive:
            fields["Connection"] = "close"
        for name, value in fields.items():
            if _LINE_BREAK.search(name + value):
                raise NeverConnected(f"the request's {name} header holds a line break", lasting=True)
        lines = [f"{method} {_target(parts)} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def _connect(self, parts: SplitResult, url: str, connect: float, deadline: float) -> _Transport:
        target = _Endpoint.of(parts)
        proxy = self.proxies.for_url(url)
        if proxy is None:
            sock: _Transport = _tcp(target, _allowed(connect, deadline, "TCP connect"), proxy=False)
        else:
            via = urlsplit(proxy)
            sock = _tcp(_Endpoint.of(via), _allowed(connect, deadline, "TCP connect"), proxy=True)
            if via.scheme == "https":
                allowed = _allowed(connect, deadline, "TLS handshake")
                sock = _handshake(sock, self._context(), _Endpoint.of(via), allowed, " the proxy")
            _tunnel(sock, proxy, target, _allowed(connect, deadline, "proxy's tunnel"))
        if parts.scheme == "https":
            sock = _handshake(sock, self._context(), target, _allowed(connect, deadline, "TLS handshake"))
        return sock

    def _context(self) -> ssl.SSLContext:
        return tls_context(default_ca(self._ca_bundle))

    def _exchange(self, key: _Key, connection: _Deadline, head: bytes, method: str, cap: int) -> Response:
        try:
            connection.sendall(head)
            response = http.client.HTTPResponse(connection, method=method)  # type: ignore[arg-type]
            response.begin()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise NoAnswer(describe(exc), timed_out=isinstance(exc, TimeoutError)) from exc
        try:
            body = _read_body(response, cap)
        except BaseException:
            connection.close()
            raise
        if response.will_close or not self._keep_alive:
            connection.close()
        else:
            self._give_back(key, connection)
        return Response(response.status, response.headers, body)

    def _take(self, key: _Key, deadline: float) -> _Deadline | None:
        while True:
            with self._lock:
                connections = self._idle.get(key)
                if not connections:
                    return None
                connection = connections.pop()
                if not connections:
                    del self._idle[key]
            if not connection.dropped():
                connection.deadline = deadline
                return connection
            connection.close()

    def _give_back(self, key: _Key, connection: _Deadline) -> None:
        with self._lock:
            if sum(len(each) for each in self._idle.values()) < self._idle_limit:
                self._idle.setdefault(key, []).append(connection)
                return
        connection.close()


def _read_body(response: http.client.HTTPResponse, cap: int) -> bytes:
    """The body, read in chunks (each read waits only for the time left), within `cap` bytes."""
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := response.read1(65536):
            size += len(chunk)
            if size > cap:
                raise BodyTooLarge(f"body larger than {cap} bytes", response.status)
            chunks.append(chunk)
    except TimeoutError as exc:
        raise BodyError("body not received before the deadline", timed_out=True) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise BodyError(describe(exc)) from exc
    if response.length:  # the connection ended before Content-Length bytes came
        raise BodyError(describe(http.client.IncompleteRead(b"", response.length)))
    return b"".join(chunks)
