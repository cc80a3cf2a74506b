"""HTTP to tenants: one client whose connections are kept alive and shared by the poll's workers (through
the environment's proxy as `http.Proxies` decides), no token, no redirects followed, TLS always verified,
and a deadline on every request (a tenant that drips a byte at a time still times out)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fleet import http
from fleet.vocabulary import State

REQUEST_SECONDS = 10.0
CONNECT_SECONDS = 5.0


@dataclass(frozen=True)
class Reply:
    """What one request saw: a status and body, or `error` when nothing usable came back."""

    status: int | None = None
    body: bytes = b""
    error: str | None = None
    oversize: bool = False


def health_problem(reply: Reply) -> tuple[State, str] | None:
    """What is wrong with a healthz reply, as (state, reason): no answer is unreachable, an answer
    that is not 2xx (a redirect included: it is never followed) is unhealthy. None when healthy."""
    if reply.error:
        return State.UNREACHABLE, f"healthz: {reply.error}"
    status = reply.status or 0
    if not 200 <= status < 300:
        return State.UNHEALTHY, f"healthz answered HTTP {status}" + (
            " (redirect, not followed)" if 300 <= status < 400 else ""
        )
    return None


@dataclass(frozen=True)
class TenantAccess:
    """How the tenants are reached: the URL template, their health and build paths, and TLS rules."""

    template: str
    healthz_path: str
    buildinfo_path: str
    allow_http: bool
    ca_bundle: str | None

    def client(self, concurrency: int = 32) -> TenantClient:
        return TenantClient(
            self.template,
            allow_http=self.allow_http,
            ca_bundle=self.ca_bundle,
            concurrency=concurrency,
            healthz_path=self.healthz_path,
            buildinfo_path=self.buildinfo_path,
        )


class TenantClient:
    def __init__(
        self,
        template: str,
        *,
        allow_http: bool,
        ca_bundle: str | None,
        concurrency: int = 32,
        healthz_path: str = "/healthz",
        buildinfo_path: str = "/buildinfo",
    ) -> None:
        self.template = template
        self.allow_http = allow_http
        self.healthz_path = healthz_path
        self.buildinfo_path = buildinfo_path
        # Each worker and its companion hold a connection at a time: that many are kept between polls.
        self.client = http.Client(ca_bundle=ca_bundle, keep_alive=True, idle=max(2, 2 * concurrency))

    def base(self, slug: str) -> str:
        """The tenant's base URL; checked like any URL (plain http only to loopback, unless allowed)."""
        return http.check_url(self.template.replace("{slug}", slug), f"tenant URL for {slug}", self.allow_http)

    def get(self, url: str, deadline: float) -> Reply:
        """GET within min(deadline, now + REQUEST_SECONDS); never raises for the tenant's faults."""
        stop = min(deadline, time.monotonic() + REQUEST_SECONDS)
        left = stop - time.monotonic()
        if left <= 0:
            return Reply(error="no time left before the deadline")
        try:
            answer = self.client.request("GET", url, deadline=stop, connect=CONNECT_SECONDS, cap=http.MAX_TENANT_BODY)
        except http.BodyTooLarge as exc:
            return Reply(status=exc.status, oversize=True)
        except http.RequestError as exc:
            return Reply(error=exc.cause)
        return Reply(status=answer.status, body=answer.body)
