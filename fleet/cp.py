"""The control-plane client: one endpoint, one retry policy, every answer checked against the contract.

The control plane has no listing endpoint: the fleet is what an unscoped dry run answers. A call is
sent again only where that is safe: a connection that never opened, a 429, or a gateway's 502/503/504
(a redeploy to one tag is declarative). A 500 with the answer's shape is the control plane's verdict,
and a call whose answer did not arrive is never re-sent: its outcome is unknown.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

from fleet import contract, http, runner
from fleet.contract import BadAnswer, ContractError, PeerFailed, show

REDEPLOY_PATH = "/cp/admin/tenants/redeploy-fleet"
CONNECT_TIMEOUT = 10.0


class CPError(PeerFailed):
    """A control-plane call that failed; the message is one line that names the cause."""


class NothingDone(CPError):
    """A call the control plane did not act on: never sent, turned away (429), or refused (400)."""


class CPRefused(NothingDone):
    """The control plane refused the request as bad (HTTP 400): nothing was done."""

    def __init__(self, message: str, said: str) -> None:
        super().__init__(message)
        self.said = said  # the control plane's own error text, scrubbed


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is sent again, and after how long: at most len(delays) times, about that many seconds
    apart (a little less, with jitter), a Retry-After honoured, and never past the call's deadline."""

    delays: tuple[float, ...] = (5.0, 10.0, 20.0)
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    jitter: float = 0.2

    @property
    def attempts(self) -> int:
        return len(self.delays) + 1

    def wait(self, retry: int, retry_after: float | None = None) -> float | None:
        """Seconds before retry number `retry` (0 for the first), or None when none is left."""
        if retry >= len(self.delays):
            return None
        if retry_after is not None:
            return retry_after
        return self.delays[retry] * random.uniform(1 - self.jitter, 1)


RETRY = RetryPolicy()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime  # an HTTP date is rare: its import waits for one

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Bearer:
    """The call's headers, the token among them; its repr does not show the token."""

    def __init__(self, token: str) -> None:
        self._authorization = f"Bearer {token}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": self._authorization, "Accept": "application/json", "Content-Type": "application/json"}

    def __repr__(self) -> str:
        return "_Bearer(***)"


@dataclass(frozen=True)
class Answer:
    """A redeploy answer in the contract's shape (200, or 500: the call failed)."""

    status: int
    document: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.status == 200 and self.document["ok"] is True

    @property
    def rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.document["results"]
        return rows

    @property
    def error(self) -> str:
        """What the control plane said went wrong, as one inert line."""
        return runner.plain(self.document.get("error") or "no error given")


class ControlPlane:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float,
        ca_bundle: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retry = retry or RETRY
        self.calls: list[dict[str, Any]] = []  # every call and its answer, for the report
        self.deadline: float | None = None  # monotonic; set, no call goes past it
        # One connection per call: a stale kept-alive socket would leave a POST's fate unknown.
        self._client = http.Client(ca_bundle=ca_bundle, keep_alive=False)
        runner.register_secret(token)  # scrubbed from every message this client makes
        self._bearer = _Bearer(token)

    @property
    def sent_real_call(self) -> bool:
        """Whether a call that may have redeployed something was sent."""
        return any(not call["body"].get("dry_run") for call in self.calls)

    def enumerate(self, body: dict[str, Any]) -> list[str]:
        """The fleet: the slugs an unscoped dry run answers, in its order, validated once (each a slug,
        none twice, at least one) before any real call is made. A row without a slug is skipped, with a
        warning, as the deploy script before this action skipped it."""
        body = {k: v for k, v in body.items() if k != "only_slugs"} | {"dry_run": True, "confirm": True}
        answer = self.redeploy(body, "enumerate")  # checked against the schema there, once
        if not answer.succeeded:
            what = "the control plane's dry run (the fleet's enumeration)"
            raise self._fail(self.calls[-1], f"{what} failed (HTTP {answer.status}): {answer.error}")
        for row in contract.unnamed(answer.rows):
            runner.warning(runner.plain(f"the fleet's enumeration names no tenant in {row}: skipped"))
        try:
            return contract.enumerated(answer.document)
        except ContractError as exc:
            raise self._fail(self.calls[-1], str(exc), BadAnswer) from None

    def redeploy(self, body: dict[str, Any], kind: str) -> Answer:
        """One call. 200 and 500 both carry the answer's shape (500: the call failed); a 400 is the
        control plane refusing the request (CPRefused); anything else is a CPError."""
        contract.validate("redeploy-request", body, "redeploy request not sent")
        record = self._record(kind, body)
        status, doc = self._call(record, body)
        if status == 400:
            said = doc["error"] if isinstance(doc, dict) and isinstance(doc.get("error"), str) else ""
            message = self._status_message(status, doc)
            record["error"] = message
            raise CPRefused(message, runner.scrub(said))
        if status not in (200, 500) or (status == 500 and not _has_shape(doc)):
            raise self._fail(record, self._status_message(status, doc, dry=bool(body.get("dry_run"))))
        try:
            contract.validate("redeploy-response", doc, f"redeploy answer (HTTP {status}) rejected")
        except ContractError as exc:
            raise self._fail(record, str(exc), BadAnswer) from None
        return Answer(status, doc)

    # -- plumbing ------------------------------------------------------------------------------

    def _record(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": kind, "method": "POST", "path": REDEPLOY_PATH, "body": body}
        record.update(status=None, response=None, error=None, attempts=0, elapsed_seconds=0.0)
        self.calls.append(record)
        return record

    def _fail(self, record: dict[str, Any], message: str, kind: type[Exception] = CPError) -> Exception:
        message = runner.scrub(message)  # should the control plane have echoed the token back
        record["error"] = message
        return kind(message)

    def _status_message(self, status: int, doc: Any, *, dry: bool = False, gave_up: str = "") -> str:
        said = ""
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            said = f": {show(doc['error'])}"
        elif isinstance(doc, _Unparsed):
            said = f" with a non-JSON body: {show(doc.text, 60)}"
        hint = {
            400: " (the control plane refused the request as bad)",
            401: " (check cp-token)",
            403: " (the token lacks permission for this call)",
            404: " (check cp-url)",
        }.get(status, "")
        if 300 <= status < 400:
            where = f"POST {REDEPLOY_PATH}"
            return f"control plane answered {where} with a redirect (HTTP {status}); not followed with the token"
        if status >= 500 and not dry:
            # A server or gateway error: the control plane may have acted on the request all the same.
            hint = _UNKNOWN
        return f"control plane answered POST {REDEPLOY_PATH} with HTTP {status}{said}{gave_up}{hint}"

    def _call(self, record: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
        start = time.monotonic()
        gave_up = ""
        try:
            status, raw, gave_up = self._send(record, body, start)
        except CPError as exc:
            raise self._fail(record, str(exc), type(exc)) from None
        finally:
            record["elapsed_seconds"] = round(time.monotonic() - start, 3)
        record["status"] = status
        try:
            doc: Any = contract.parse_json(raw, f"control plane answer to POST {REDEPLOY_PATH} (HTTP {status})")
        except ContractError as exc:
            if 200 <= status < 300:
                raise self._fail(record, str(exc)) from None
            doc = _Unparsed(runner.scrub(raw.decode("utf-8", "replace")))
        # An error page may quote the request's headers: the token must not reach a message or the report.
        doc = runner.scrub_values(doc)
        record["response"] = doc if not isinstance(doc, _Unparsed) else doc.text[:2000]
        if gave_up:
            message = self._status_message(status, doc, dry=bool(body.get("dry_run")), gave_up=gave_up)
            raise self._fail(record, message, NothingDone if status == 429 else CPError)
        return status, doc

    def _send(self, record: dict[str, Any], body: dict[str, Any], start: float) -> tuple[int, bytes, str]:
        """Send, and send again as the retry policy allows. Returns the status, the body, and why the
        retries stopped when the last answer is still one the policy would have retried."""
        url = self.url + REDEPLOY_PATH
        dry = bool(body.get("dry_run"))
        deadline = start + self.timeout if self.deadline is None else min(start + self.timeout, self.deadline)
        if deadline <= start:
            raise NothingDone(f"the rollout's deadline passed before POST {REDEPLOY_PATH} could be sent")
        data = json.dumps(body, allow_nan=False).encode()
        retry = 0
        while True:
            record["attempts"] = retry + 1
            try:
                answer = self._client.request(
                    "POST",
                    url,
                    headers=self._bearer.headers(),
                    body=data,
                    deadline=deadline,
                    connect=CONNECT_TIMEOUT,
                    cap=http.MAX_CP_BODY,
                )
            except http.NeverConnected as exc:
                if exc.lasting:  # a certificate or handshake that another try would meet again
                    raise NothingDone(f"control plane call POST {REDEPLOY_PATH} failed: {exc.cause}") from None
                cause = f"control plane unreachable at {self.url}: {exc.cause}"
                stop = self._pause(cause, retry, None, deadline)
                if stop is not None:
                    raise NothingDone(cause + stop) from None
                retry += 1
                continue
            except http.RequestError as exc:
                raise CPError(self._transport_message(exc, dry, deadline - start)) from None
            if answer.status not in self.retry.statuses:
                return answer.status, answer.body, ""
            asked = _retry_after(answer.headers.get("Retry-After"))
            stop = self._pause(f"control plane answered HTTP {answer.status}", retry, asked, deadline)
            if stop is not None:
                return answer.status, answer.body, stop
            retry += 1

    def _pause(self, cause: str, retry: int, asked: float | None, deadline: float) -> str | None:
        """Wait before sending again and return None; or say why no retry is left."""
        wait = self.retry.wait(retry, asked)
        if wait is None:
            return f"; gave up after {retry + 1} attempts"
        left = deadline - time.monotonic()
        if wait > left:
            said = f"Retry-After {wait:.0f} s" if asked is not None else f"the next retry (in {wait:.0f} s)"
            return f"; {said} would pass the call's deadline ({max(left, 0):.0f} s left)"
        runner.warning(
            f"{runner.plain(cause)} (attempt {retry + 1} of {self.retry.attempts}); sending it again in {wait:.1f} s"
        )
        time.sleep(wait)
        return None

    def _transport_message(self, exc: http.RequestError, dry: bool, allowed: float) -> str:
        """What a call that was sent, or partly sent, and got no whole answer says."""
        unknown = "" if dry else _UNKNOWN
        if isinstance(exc, http.NoAnswer) and exc.timed_out:
            # `allowed`: cp-timeout-seconds, or less when the rollout's own deadline came first.
            waited = f"{round(allowed, 1):g} s"
            return f"no answer from the control plane within {waited} after POST {REDEPLOY_PATH} was sent" + (
                unknown or " (a dry run: nothing was deployed)"
            )
        if isinstance(exc, http.BodyError):
            how = ": " if exc.timed_out or isinstance(exc, http.BodyTooLarge) else " broke off: "
            return f"control plane answer to POST {REDEPLOY_PATH}{how}{exc.cause}{unknown}"
        return f"control plane call POST {REDEPLOY_PATH} failed: {exc.cause}{unknown}"


_UNKNOWN = "; the redeploy's outcome is unknown: check the control plane before re-running (not re-sent)"


class _Unparsed:
    """A non-JSON error body, kept as text for the message."""

    def __init__(self, text: str) -> None:
        self.text = text


def _has_shape(doc: Any) -> bool:
    return isinstance(doc, dict) and "results" in doc and "ok" in doc
