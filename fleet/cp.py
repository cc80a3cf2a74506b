"""The control-plane client: two calls, one retry policy, every answer checked against the contract.

A redeploy POST is never re-sent once it may have reached the control plane; only a connection that
never opened (refused, connect timeout, DNS) or an explicit 429 is tried again, within a bounded time.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3

from fleet import contract, http, runner
from fleet.contract import ContractError, show

LIST_PATH = "/cp/admin/tenants"
REDEPLOY_PATH = "/cp/admin/tenants/redeploy-fleet"
CONNECT_TIMEOUT = 10.0
USER_AGENT = "fleet-rollout/0.1"


class CPError(Exception):
    """A control-plane call that failed; the message is one line that names the cause."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is tried again, and how long to wait."""

    budget_seconds: float = 30.0  # total time spent on retries of one call
    base_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 8.0
    idempotent_statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def delay(self, attempt: int) -> float:
        raw = min(self.max_delay, self.base_delay * self.factor**attempt)
        return raw * random.uniform(0.5, 1.0)

    def retry_status(self, method: str, status: int) -> bool:
        # 429 means the request was refused unprocessed, so even a POST may go again.
        return status == 429 or (method == "GET" and status in self.idempotent_statuses)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _never_opened(exc: requests.RequestException) -> bool:
    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen = exc
    for _ in range(6):
        seen = seen.__context__ or seen.__cause__ or (seen.args[0] if seen.args else None)
        if isinstance(seen, urllib3.exceptions.NewConnectionError | urllib3.exceptions.NameResolutionError):
            return True
        if isinstance(seen, urllib3.exceptions.MaxRetryError):
            seen = seen.reason
            if isinstance(seen, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
                return True
        if not isinstance(seen, BaseException):
            return False
    return False


class _Bearer(requests.auth.AuthBase):
    """Carries the token; passing auth explicitly also keeps ~/.netrc from replacing it."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(***)"


@dataclass
class Answer:
    status: int
    document: Any


class ControlPlane:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float,
        ca_bundle: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry = retry
        self.calls: list[dict[str, Any]] = []  # every call and its answer, for the report
        self.deadline: float | None = None  # monotonic; set, no call goes past it
        self._session = requests.Session()
        for adapter in self._session.adapters.values():
            http.bounded(adapter.poolmanager)  # the deadline covers the headers too, not just each read
        runner.register_secret(token)  # scrubbed from every message this client makes
        self._session.auth = _Bearer(token)
        self._session.verify = ca_bundle or True
        self._session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})

    # -- the two calls -------------------------------------------------------------------------

    def list_fleet(self) -> list[str]:
        """The fleet's slugs, validated (schema, then uniqueness) before anything uses them."""
        record = self._record("list", "GET", LIST_PATH, None)
        status, doc = self._call(record, "GET", LIST_PATH, None)
        if status != 200:
            raise self._fail(record, self._status_message("GET", LIST_PATH, status, doc))
        try:
            return contract.fleet_slugs(doc)
        except ContractError as exc:
            raise self._fail(record, str(exc)) from None

    def redeploy(self, body: dict[str, Any], kind: str) -> Answer:
        """One redeploy call. 200 and 500 both carry the response shape (500: the call failed)."""
        contract.validate("redeploy-request", body, "redeploy request not sent")
        record = self._record(kind, "POST", REDEPLOY_PATH, body)
        status, doc = self._call(record, "POST", REDEPLOY_PATH, body)
        if status not in (200, 500) or (status == 500 and not _has_shape(doc)):
            raise self._fail(record, self._status_message("POST", REDEPLOY_PATH, status, doc))
        try:
            contract.validate("redeploy-response", doc, f"redeploy answer (HTTP {status}) rejected")
        except ContractError as exc:
            raise self._fail(record, str(exc)) from None
        return Answer(status, doc)

    # -- plumbing ------------------------------------------------------------------------------

    def _record(self, kind: str, method: str, path: str, body: dict | None) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": kind, "method": method, "path": path}
        if body is not None:
            record["body"] = body
        record.update(status=None, response=None, error=None, elapsed_seconds=0.0)
        self.calls.append(record)
        return record

    def _fail(self, record: dict[str, Any], message: str) -> CPError:
        message = runner.scrub(message)  # should the control plane have echoed the token back
        record["error"] = message
        return CPError(message)

    def _status_message(self, method: str, path: str, status: int, doc: Any) -> str:
        said = ""
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            said = f": {show(doc['error'])}"
        elif isinstance(doc, _Unparsed):
            said = f" with a non-JSON body: {show(doc.text, 60)}"
        hint = {
            401: " (check cp-token)",
            403: " (the token lacks permission for this call)",
            404: " (check cp-url)",
        }.get(status, "")
        if 300 <= status < 400:
            return (
                f"control plane answered {method} {path} with a redirect (HTTP {status}); not followed with the token"
            )
        if status >= 500:
            # A server or gateway error: the control plane may have acted on the request all the same.
            hint = self._unknown(method)
        return f"control plane answered {method} {path} with HTTP {status}{said}{hint}"

    def _call(self, record: dict[str, Any], method: str, path: str, body: dict | None) -> tuple[int, Any]:
        start = time.monotonic()
        try:
            status, raw = self._send(method, path, body, start)
        except CPError as exc:
            raise self._fail(record, str(exc)) from None
        finally:
            record["elapsed_seconds"] = round(time.monotonic() - start, 3)
        record["status"] = status
        try:
            doc: Any = contract.parse_json(raw, f"control plane answer to {method} {path} (HTTP {status})")
        except ContractError as exc:
            if 200 <= status < 300:
                raise self._fail(record, str(exc)) from None
            doc = _Unparsed(runner.scrub(raw.decode("utf-8", "replace")))
        # An error page may quote the request's headers: the token must not reach a message or the report.
        doc = runner.scrub_values(doc)
        record["response"] = doc if not isinstance(doc, _Unparsed) else doc.text[:2000]
        return status, doc

    def _send(self, method: str, path: str, body: dict | None, start: float) -> tuple[int, bytes]:
        """Send once, retrying only where the request cannot have been acted on."""
        url = self.url + path
        deadline = start + self.timeout if self.deadline is None else min(start + self.timeout, self.deadline)
        if deadline <= start:
            raise CPError(f"the rollout's deadline passed before {method} {path} could be sent")
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                with http.answer_by(deadline):
                    resp = self._session.request(
                        method,
                        url,
                        json=body,
                        timeout=(min(CONNECT_TIMEOUT, max(left, 0.01)), max(left, 0.01)),
                        allow_redirects=False,
                        # Given per request: the session's own `verify` loses to REQUESTS_CA_BUNDLE or
                        # CURL_CA_BUNDLE in the environment (psf/requests#3829), and ca-bundle with it.
                        verify=self._session.verify,
                        stream=True,
                        # One connection per call: a stale kept-alive socket would leave a POST's fate unknown.
                        headers={"Connection": "close"},
                    )
            except requests.RequestException as exc:
                if _never_opened(exc) and self._may_retry(attempt, start, deadline):
                    time.sleep(self.retry.delay(attempt))
                    attempt += 1
                    continue
                raise CPError(self._transport_message(method, path, exc)) from None
            if self.retry.retry_status(method, resp.status_code):
                asked = _retry_after(resp.headers.get("Retry-After"))
                wait = self.retry.delay(attempt) if asked is None else asked
                resp.close()
                left = min(deadline, start + self.retry.budget_seconds) - time.monotonic()
                if wait > left:
                    said = f"still failing after {attempt + 1} attempts in {time.monotonic() - start:.0f} s"
                    if asked is not None:
                        said = f"Retry-After {wait:.0f} s exceeds the {max(left, 0):.0f} s left"
                    raise CPError(f"control plane answered {method} {path} with HTTP {resp.status_code}; {said}")
                time.sleep(wait)
                attempt += 1
                continue
            try:
                return resp.status_code, http.read_body(resp.raw, deadline, http.MAX_CP_BODY)
            except http.BodyError as exc:
                raise CPError(f"control plane answer to {method} {path}: {exc}{self._unknown(method)}") from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise CPError(
                    f"control plane answer to {method} {path} broke off: {http.describe(exc)}{self._unknown(method)}"
                ) from None

    def _may_retry(self, attempt: int, start: float, deadline: float) -> bool:
        stop = min(deadline, start + self.retry.budget_seconds)
        return time.monotonic() + self.retry.delay(attempt) < stop

    @staticmethod
    def _unknown(method: str) -> str:
        if method == "POST":
            return "; the redeploy's outcome is unknown: check the control plane before re-running (not re-sent)"
        return ""

    def _transport_message(self, method: str, path: str, exc: requests.RequestException) -> str:
        if isinstance(exc, requests.ReadTimeout):
            if method == "POST":
                return (
                    f"no answer from the control plane within {self.timeout:g} s after POST {path} was sent"
                    + self._unknown(method)
                )
            return f"control plane did not answer {method} {path} within {self.timeout:g} s"
        if _never_opened(exc):
            return f"control plane unreachable at {self.url}: {http.describe(exc)}"
        return f"control plane call {method} {path} failed: {http.describe(exc)}{self._unknown(method)}"


class _Unparsed:
    """A non-JSON error body, kept as text for the message."""

    def __init__(self, text: str) -> None:
        self.text = text


def _has_shape(doc: Any) -> bool:
    return isinstance(doc, dict) and "results" in doc and "ok" in doc
