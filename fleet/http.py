"""Transport rules shared by the control-plane client and the tenant poller: which URLs may be used,
and how a body is read within a deadline and a size cap."""

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
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import urllib3
from urllib3.util.ssl_match_hostname import CertificateError as _HostnameMismatch

from fleet.contract import ContractError, show

MAX_CP_BODY = 16 * 1024 * 1024
MAX_TENANT_BODY = 64 * 1024


class BodyError(Exception):
    """A body that could not be read whole: too slow or too large."""


class BodyTooLarge(BodyError):
    """The body passed the size cap; the status line is still good."""


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
    for link in chain:
        cause = _cause(link)
        if cause is not None:
            return cause
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
# - read_body reads with urllib3.response.HTTPResponse.read1(amt, decode_content=...), new in urllib3 2.
class _DeadlineReader(io.RawIOBase):
    """A socket's reader that gives each read only the time left before the deadline."""

    def __init__(self, raw: Any, sock: socket.socket, deadline: float) -> None:
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the answer did not arrive before the deadline")
        self._sock.settimeout(left)
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


class _HTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _DeadlineResponse


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
