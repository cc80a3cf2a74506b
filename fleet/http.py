"""Transport rules shared by the control-plane, tenant and forge clients: which URLs may be used, which
go through a proxy, which CA file verifies them, and how a body is read within a deadline and a size cap."""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import certifi
import urllib3
from urllib3.util.ssl_match_hostname import CertificateError as _HostnameMismatch

from fleet.contract import ContractError, show

MAX_CP_BODY = 16 * 1024 * 1024
MAX_TENANT_BODY = 64 * 1024


class BodyError(Exception):
    """A body that could not be read whole: too slow or too large."""


class BodyTooLarge(BodyError):
    """The body passed the size cap; the status line is still good."""


class NeverConnected(urllib3.exceptions.ConnectTimeoutError):
    """A connection that never carried the request: its TCP connect, the proxy's tunnel or its TLS
    handshake did not finish. `cause` names the phase, where, and the time it was allowed. A
    ConnectTimeoutError, as urllib3 and requests class every connection that never opened."""

    def __init__(self, conn: Any, cause: str) -> None:
        super().__init__(conn, cause)
        self.cause = cause


# The short cause an exception stands for, by its class, checked in this order: several of these
# classes subclass others (RemoteDisconnected is a ConnectionResetError; TimeoutError, ssl.SSLError and
# socket.gaierror are OSErrors; urllib3's IncompleteRead and InvalidChunkLength are http.client's
# IncompleteRead). urllib3's NewConnectionError (a ConnectTimeoutError) is left to what it wraps.
_CAUSES: tuple[tuple[tuple[type[BaseException], ...], str], ...] = (
    ((urllib3.exceptions.NameResolutionError, socket.gaierror), "host name not found"),
    ((urllib3.exceptions.TimeoutError, TimeoutError), "timed out"),  # socket.timeout is TimeoutError
    ((ssl.SSLCertVerificationError, _HostnameMismatch), "TLS certificate verification failed"),
    ((ssl.SSLError,), "TLS handshake failed"),
    ((http.client.RemoteDisconnected,), "connection closed without an answer"),
    ((http.client.IncompleteRead,), "answer truncated"),
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

# Wrappers whose own class says less than what they wrap: the cause used only when nothing under them
# has a class above.
_WRAPPER_CAUSES: tuple[tuple[type[BaseException], str], ...] = (
    (urllib3.exceptions.NewConnectionError, "connection failed"),
    (urllib3.exceptions.SSLError, "TLS handshake failed"),
    (urllib3.exceptions.ProtocolError, "connection broken"),
)


def _cause(exc: BaseException) -> str | None:
    if isinstance(exc, NeverConnected):
        return exc.cause
    if isinstance(exc, BodyError):
        return str(exc)
    if isinstance(exc, urllib3.exceptions.NewConnectionError) and not isinstance(
        exc, urllib3.exceptions.NameResolutionError
    ):
        return None  # the OSError it was raised from says why
    for classes, cause in _CAUSES:
        if isinstance(exc, classes):
            return cause
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno > 0:
        return _ERRNO_CAUSES.get(exc.errno) or os.strerror(exc.errno).lower()
    return None


def _links(exc: BaseException) -> list[BaseException]:
    """What `exc` wraps, nearest first: MaxRetryError's reason, exceptions among its args (ProtocolError,
    urllib3's SSLError, requests' wrappers), its __cause__, then its __context__ unless suppressed."""
    links = [getattr(exc, "reason", None), *exc.args, exc.__cause__]
    if not exc.__suppress_context__:
        links.append(exc.__context__)
    return [link for link in links if isinstance(link, BaseException)]


def _walk(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps, depth first, each once."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < 64:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(reversed(_links(current)))


def _is_wrapper(exc: BaseException) -> bool:
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        return exc.reason is not None
    return len(exc.args) == 1 and isinstance(exc.args[0], BaseException)


def describe(exc: BaseException) -> str:
    """A short cause for a failed request, without URLs or headers: by the class of the exception or of
    one it wraps (the outermost that says), never by its text. Failing that, the class's name."""
    chain = list(_walk(exc))
    # urllib3 wraps what stopped a connection to the proxy itself; say so, unless the cause names it.
    via = "connecting to the proxy: " if any(isinstance(x, urllib3.exceptions.ProxyError) for x in chain) else ""
    for link in chain:
        cause = _cause(link)
        if cause is not None:
            return cause if isinstance(link, NeverConnected) else via + cause
    for link in chain:
        for cls, cause in _WRAPPER_CAUSES:
            if isinstance(link, cls):
                return cause
    named = next((link for link in chain if not _is_wrapper(link)), exc)
    return type(named).__name__


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
        raise ContractError(f"{what} must be an http(s) URL with a host: {show(url)}")
    if parts.username or parts.password:
        raise ContractError(f"{what} must not carry credentials in the URL")
    if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        raise ContractError(
            f"{what} uses plain http to a non-loopback host ({show(parts.hostname)}); "
            "use https, or opt in with allow-http"
        )
    return url.rstrip("/")


def default_ca(ca_bundle: str | None) -> str:
    """The CA file every client verifies with (requests' rule, kept for all): ca-bundle first, then
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, then certifi's set."""
    return ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()


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
        found = urllib.request.getproxies_environment()
        proxy = found.get("https") or found.get("all") or None
        if proxy and "://" not in proxy:
            proxy = "http://" + proxy  # as curl and requests take a bare host:port
        if proxy and urlsplit(proxy).scheme not in ("http", "https"):
            raise ContractError(
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
    return urllib3.util.make_headers(proxy_basic_auth=credentials)


class Pools:
    """A client's urllib3 pools: direct, or through the environment's proxy by the `Proxies` rule;
    each one `bounded`. The proxy manager is made on first use."""

    def __init__(self, **pool_kw: Any) -> None:
        self.proxies = Proxies.from_environment()
        self._kw = pool_kw
        self._direct = bounded(urllib3.PoolManager(**pool_kw))
        self._via: urllib3.ProxyManager | None = None
        self._lock = threading.Lock()

    def request(self, method: str, url: str, **kw: Any) -> Any:
        return self._for(url).request(method, url, **kw)

    def _for(self, url: str) -> urllib3.PoolManager:
        proxy = self.proxies.for_url(url)
        if proxy is None:
            return self._direct
        with self._lock:
            if self._via is None:
                self._via = urllib3.ProxyManager(proxy, proxy_headers=proxy_headers(proxy), **self._kw)
                bounded(self._via)
            return self._via


_answer = threading.local()


@contextlib.contextmanager
def answer_by(deadline: float) -> Iterator[None]:
    """Within the block, a response from a `bounded` pool manager must arrive whole (status line,
    headers and body) by `deadline` (monotonic): each read waits only for the time left. A read
    timeout alone restarts with every byte, so a server that drips its headers would never time out."""
    previous = getattr(_answer, "deadline", None)
    _answer.deadline = deadline
    try:
        yield
    finally:
        _answer.deadline = previous


# The deadline reader relies on these urllib3 2.x / http.client internals (urllib3 is pinned >=2,<3;
# tests/test_http.py fails if any of them moves):
# - urllib3.PoolManager builds its pools from the instance attribute `pool_classes_by_scheme`
#   (`bounded` replaces it), and HTTP(S)ConnectionPool builds connections from the class attribute
#   `ConnectionCls`;
# - urllib3.connection.HTTPConnection.getresponse() calls http.client.HTTPConnection.getresponse(),
#   which makes the response as `self.response_class(self.sock, method=...)`;
# - http.client.HTTPResponse.__init__(sock, ...) touches the socket only through `sock.makefile("rb")`,
#   and reads the status line, headers and body only through that file;
# - the connection's socket (socket.socket or ssl.SSLSocket) has `makefile("rb", buffering=0)` (a raw
#   reader with readinto) and `settimeout`, and its timeout (socket.timeout, i.e. TimeoutError) is what
#   urllib3 turns into ReadTimeoutError;
# - read_body reads with urllib3.response.HTTPResponse.read1(amt, decode_content=...), new in urllib3 2;
# - the connection's connect() raises ConnectTimeoutError for a TCP connect that timed out and lets the
#   TLS handshake's TimeoutError through; behind a proxy it calls `_tunnel()` (http.client's, or
#   urllib3's copy), with the proxy in `host`/`port` and the target in `_tunnel_host`/`_tunnel_port`.
class _DeadlineReader(io.RawIOBase):
    """A socket's reader that gives each read only the time left before the deadline."""

    def __init__(self, raw: Any, sock: socket.socket, deadline: float) -> None:
        self._raw, self._sock, self._deadline = raw, sock, deadline
        self._limit = sock.gettimeout()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer did not arrive before the deadline")
        # Never longer than the socket's own timeout: a proxy's answer to CONNECT keeps the connect timeout.
        self._sock.settimeout(left if self._limit is None else min(left, self._limit))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _DeadlineSocket:
    """What http.client's response asks of its socket (a reader), with the deadline applied."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock.makefile("rb", buffering=0), self._sock, self._deadline))


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock: Any, *args: Any, **kwargs: Any) -> None:
        deadline = getattr(_answer, "deadline", None)
        # http.client only calls makefile() on what it is given, which _DeadlineSocket provides.
        wrapped: Any = sock if deadline is None else _DeadlineSocket(sock, deadline)
        super().__init__(wrapped, *args, **kwargs)


def _where(host: str | None, port: int | None) -> str:
    host = host or "?"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _within(conn: Any) -> str:
    seconds = conn.timeout
    return f" within {round(seconds, 1):g} s" if isinstance(seconds, int | float) else ""


@contextlib.contextmanager
def _connecting(conn: Any) -> Iterator[None]:
    """Name the phase a connection stopped in: the TCP connect (to the proxy, when there is one) or the
    TLS handshake. A handshake that times out never sent the request, though urllib3 would report it
    as a read timeout."""
    proxy = " the proxy" if conn._tunnel_host else ""
    try:
        yield
    except (NeverConnected, urllib3.exceptions.NewConnectionError):
        raise  # named already, or refused / not found: their classes say
    except urllib3.exceptions.ConnectTimeoutError as exc:
        cause = f"TCP connect to{proxy} {_where(conn.host, conn.port)} did not finish{_within(conn)}"
        raise NeverConnected(conn, cause) from exc
    except TimeoutError as exc:
        tunnelled = getattr(conn, "_tunnel_open", False)
        host, port = (conn._tunnel_host, conn._tunnel_port) if tunnelled else (conn.host, conn.port)
        what = "" if tunnelled or not proxy else proxy
        cause = f"TLS handshake with{what} {_where(host, port)} did not finish{_within(conn)}"
        raise NeverConnected(conn, cause) from exc


class _HTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _DeadlineResponse

    def connect(self) -> None:
        with _connecting(self):
            super().connect()


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _DeadlineResponse

    def connect(self) -> None:
        self._tunnel_open = False
        with _connecting(self):
            super().connect()

    def _tunnel(self) -> None:
        """The proxy's CONNECT: a tunnel it did not open never carried the request."""
        target = _where(self._tunnel_host, self._tunnel_port)
        try:
            super()._tunnel()  # type: ignore[misc]
        except TimeoutError as exc:
            cause = f"the proxy {_where(self.host, self.port)} did not open a tunnel to {target}{_within(self)}"
            raise NeverConnected(self, cause) from exc
        except OSError as exc:
            why = _cause(exc) or "refused"  # a status other than 200 is an OSError without errno
            raise NeverConnected(
                self, f"the proxy {_where(self.host, self.port)} did not open a tunnel to {target}: {why}"
            ) from exc
        self._tunnel_open = True


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def bounded(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    """Make `manager`'s connections honour `answer_by`."""
    manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
    return manager


def read_body(response: Any, deadline: float, cap: int) -> bytes:
    """Read a urllib3 response (preload_content=False) whole, by `deadline` (monotonic) and within
    `cap` bytes. The response comes from a `bounded` pool under `answer_by`, so each read waits only
    for the time left: a server that drips a byte at a time still hits the deadline."""
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BodyError("body not received before the deadline")
            chunk = response.read1(65536, decode_content=True)
            if not chunk:
                break
            size += len(chunk)
            if size > cap:
                raise BodyTooLarge(f"body larger than {cap} bytes")
            chunks.append(chunk)
    except BaseException:
        response.close()
        raise
    response.release_conn()
    return b"".join(chunks)
