"""Transport rules shared by the control-plane client and the tenant poller: which URLs may be used,
and how a body is read within a deadline and a size cap."""

from __future__ import annotations

import contextlib
import http.client
import io
import ipaddress
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import urllib3

from fleet.contract import ContractError, show

MAX_CP_BODY = 16 * 1024 * 1024
MAX_TENANT_BODY = 64 * 1024


class BodyError(Exception):
    """A body that could not be read whole: too slow or too large."""


class BodyTooLarge(BodyError):
    """The body passed the size cap; the status line is still good."""


# Needles in an exception's type and text, and the short cause each stands for; first match wins.
_CAUSES = (
    ("timeout", "timed out"),
    ("timed out", "timed out"),
    ("refused", "connection refused"),
    ("nameresolution", "host name not found"),
    ("name or service", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("temporary failure in name resolution", "host name not found"),
    ("certificate", "TLS certificate verification failed"),
    ("ssl", "TLS handshake failed"),
    ("reset", "connection reset"),
    ("remote end closed", "connection closed without an answer"),
    ("remotedisconnected", "connection closed without an answer"),
    ("incomplete", "answer truncated"),
    ("aborted", "connection aborted"),
    ("protocol", "connection broken"),
)


def describe(exc: BaseException) -> str:
    """A short cause for a failed request, without URLs or headers."""
    if isinstance(exc, BodyError):
        return str(exc)
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    text = f"{type(exc).__name__} {exc}".lower()
    for needle, words in _CAUSES:
        if needle in text:
            return words
    return type(exc).__name__


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


class _DeadlineReader(io.RawIOBase):
    """A socket's reader that gives each read only the time left before the deadline."""

    def __init__(self, raw, sock, deadline: float) -> None:
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
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

    def __init__(self, sock, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def makefile(self, mode: str = "rb", *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self._sock.makefile("rb", buffering=0), self._sock, self._deadline))


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, **kwargs) -> None:
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


def read_body(response, deadline: float, cap: int) -> bytes:
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
