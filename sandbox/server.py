"""A simulated control plane and tenant fleet serving the contract on loopback, from one process.

One threaded HTTP server answers both sides: the control plane under ``/cp/admin/...`` (bearer token
required) and every tenant under ``/t/<slug>/healthz`` and ``/t/<slug>/buildinfo``. Tenant answers
are prebuilt byte strings handed out under one lock, so a fleet of thousands can be polled at once.
``/sandbox/state`` shows what happened, for people and for tests that run the sandbox as a process.
"""

from __future__ import annotations

import copy
import hmac
import json
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleet.contract import ContractError, parse_json, show, validate

from .scenario import load_scenario, sha_for_tag

LIST_PATH = "/cp/admin/tenants"
REDEPLOY_PATH = "/cp/admin/tenants/redeploy-fleet"
STATE_PATH = "/sandbox/state"
MAX_BODY = 1 << 20

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"

HTML_ERROR_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def _head(status: int, content_type: str, length: int, extra: tuple[str, ...] = ()) -> str:
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        *extra,
    ]
    return "\r\n".join(lines) + "\r\n\r\n"


def _raw(status: int, content_type: str, body: bytes) -> bytes:
    """A whole HTTP/1.1 response, sent with a single write."""
    return _head(status, content_type, len(body)).encode("latin-1") + body


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode("utf-8")


HEALTHZ_UP = _raw(200, TEXT_TYPE, b"ok")
HEALTHZ_DOWN = _raw(503, TEXT_TYPE, b"unavailable")


class _Build:
    """A build a tenant can serve, with its buildinfo answer prebuilt."""

    __slots__ = ("tag", "sha", "buildinfo")

    def __init__(self, tag: str, sha: str) -> None:
        self.tag = tag
        self.sha = sha
        self.buildinfo = _raw(200, JSON_TYPE, _json_bytes({"git_sha": sha, "tag": tag}))


class _Tenant:
    """One tenant's state. Every method is called with the sandbox lock held."""

    __slots__ = (
        "slug",
        "behaviour",
        "ready_after",
        "cp_verified",
        "serving",
        "pending",
        "ready_at",
        "deployed_tag",
        "deployed_at",
        "redeploys",
        "flaps",
    )

    def __init__(self, spec: dict, old: _Build) -> None:
        self.slug = spec["slug"]
        self.behaviour = spec["behaviour"]
        self.ready_after = float(spec["ready_after"])
        self.cp_verified = spec["cp_verified"]
        self.serving = old
        self.pending: _Build | None = None
        self.ready_at = 0.0
        self.deployed_tag: str | None = None
        self.deployed_at: float | None = None
        self.redeploys = 0
        self.flaps = 0

    def redeploy(self, build: _Build, now: float) -> None:
        self.deployed_tag = build.tag
        self.deployed_at = now
        self.redeploys += 1
        self.flaps = 0
        if self.behaviour in ("healthy", "flapping"):
            self.serving = build
            self.pending = None
        elif self.behaviour == "slow":
            self.pending = build
            self.ready_at = now + self.ready_after
        # wedged and stale keep serving what they had; unreachable never answers anyway.

    def answer(self, what: str, now: float) -> bytes | None:
        """The response to ``GET /t/<slug>/<what>``, or None to drop the connection unanswered."""
        if self.deployed_tag is None:
            return HEALTHZ_UP if what == "healthz" else self.serving.buildinfo
        behaviour = self.behaviour
        if behaviour == "unreachable":
            return None
        if self.pending is not None and now >= self.ready_at:
            self.serving = self.pending
            self.pending = None
        if what == "buildinfo":
            return self.serving.buildinfo
        if behaviour == "wedged":
            return HEALTHZ_DOWN
        if behaviour == "slow":
            return HEALTHZ_DOWN if self.pending is not None else HEALTHZ_UP
        if behaviour == "flapping":
            self.flaps += 1
            return HEALTHZ_UP if self.flaps % 2 else HEALTHZ_DOWN
        return HEALTHZ_UP

    def cp_result(self, phase: str) -> dict:
        """What the control plane claims about this tenant after redeploying it."""
        if self.cp_verified is not None:
            verified = self.cp_verified
        else:
            verified = self.behaviour not in ("wedged", "unreachable")
        result = {
            "slug": self.slug,
            "phase": phase,
            "ssm_status": "Success",
            "ssm_exit_code": 0,
            "healthz_ok": True,
            "verified_on_target": True,
            "error": None,
        }
        if verified:
            return result
        if self.behaviour == "unreachable":
            result.update(
                ssm_status="Undeliverable",
                ssm_exit_code=None,
                healthz_ok=None,
                verified_on_target=False,
                error="unreachable",
            )
        else:
            result.update(healthz_ok=False, verified_on_target=False, error="healthz timeout")
        return result

    def state(self) -> dict:
        return {
            "behaviour": self.behaviour,
            "deployed_tag": self.deployed_tag,
            "serving_tag": self.serving.tag,
            "serving_sha": self.serving.sha,
            "pending_sha": self.pending.sha if self.pending else None,
            "redeploys": self.redeploys,
            "cp_verified": self.cp_verified,
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.sandbox = sandbox
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """End kept-alive connections, so nothing is answered after the sandbox stops."""
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a client that went away is not a sandbox fault
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (bad request line, oversized headers...) as JSON, then close."""
        self.close_connection = True
        self._send(code, JSON_TYPE, _json_bytes({"error": message or HTTPStatus(code).phrase}))

    def _send(self, status: int, content_type: str, body: bytes, extra: tuple[str, ...] = ()) -> None:
        if self.close_connection:
            extra = (*extra, "Connection: close")
        head = _head(status, content_type, len(body), extra).encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _send_json(self, status: int, doc: Any, extra: tuple[str, ...] = ()) -> None:
        self._send(status, JSON_TYPE, _json_bytes(doc), extra)

    def _read_body(self) -> bytes | None:
        """The request body; None after answering a body that cannot be read."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send_json(411, {"error": "send a Content-Length; chunked bodies are not accepted"})
            return None
        length = self.headers.get("Content-Length")
        if not length:
            return b""
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0 or size > MAX_BODY:
            self.close_connection = True
            self._send_json(413 if size > MAX_BODY else 400, {"error": f"bad Content-Length {length!r}"})
            return None
        return self.rfile.read(size)

    def _dispatch(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/t/"):
            self._tenant(path)
            return
        body = self._read_body()
        if body is None:
            return
        sandbox = self.server.sandbox
        if path == "/cp" or path.startswith("/cp/"):
            self._control_plane(sandbox, path, body)
        elif path == STATE_PATH and self.command == "GET":
            self._send_json(200, sandbox.state())
        else:
            self._send_json(404, {"error": f"no such path: {show(path)}"})

    def _tenant(self, path: str) -> None:
        arrived = time.time()
        if self.headers.get("Content-Length", "0") != "0" and self._read_body() is None:
            return
        slug, _, what = path[3:].partition("/")
        sandbox = self.server.sandbox
        tenant = sandbox._routes.get(slug)
        if tenant is None or what not in ("healthz", "buildinfo"):
            self._send_json(404, {"error": f"no such tenant path: {show(path)}"})
            return
        if self.command != "GET":
            self._send_json(405, {"error": "tenants answer GET only"}, ("Allow: GET",))
            return
        if sandbox._latency:
            time.sleep(sandbox._latency)
        authorization = "Authorization" in self.headers
        with sandbox._lock:
            sandbox._hits[slug].append({"path": what, "authorization": authorization, "time": arrived})
            response = tenant.answer(what, time.time())
        if response is None:
            self.close_connection = True  # unreachable: the connection ends without an answer
            return
        if self.close_connection:
            response = response.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        self.wfile.write(response)

    def _control_plane(self, sandbox: Sandbox, path: str, raw: bytes) -> None:
        arrived = time.time()
        try:
            body = parse_json(raw, "request body") if raw else None
        except ContractError:
            body = None
        authorized = sandbox._authorized(self.headers.get("Authorization"))
        if sandbox._latency:
            time.sleep(sandbox._latency)
        extra: tuple[str, ...] = ()
        if not authorized:
            status, content_type, payload = (
                401,
                JSON_TYPE,
                _json_bytes({"error": "missing or wrong bearer token (send Authorization: Bearer <token>)"}),
            )
            extra = ('WWW-Authenticate: Bearer realm="sandbox"',)
        elif path == LIST_PATH and self.command == "GET":
            status, content_type, payload = sandbox._list()
        elif path == REDEPLOY_PATH and self.command == "POST":
            status, content_type, payload = sandbox._redeploy(raw)
        elif path in (LIST_PATH, REDEPLOY_PATH):
            allowed = "GET" if path == LIST_PATH else "POST"
            status, content_type, payload = 405, JSON_TYPE, _json_bytes({"error": f"{path} accepts {allowed} only"})
            extra = (f"Allow: {allowed}",)
        else:
            status, content_type, payload = (
                404,
                JSON_TYPE,
                _json_bytes({"error": f"no such control plane path: {show(path)}"}),
            )
        with sandbox._lock:
            sandbox._calls.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "body": body,
                    "authorized": authorized,
                    "status": status,
                    "time": arrived,
                }
            )
        self._send(status, content_type, payload, extra)


class Sandbox:
    """A control plane and its tenants, served on ``host:port`` (0 picks a free port).

    `scenario` is a parsed scenario document or a preset name or YAML path (see `load_scenario`).
    Use ``start()``/``stop()`` or a ``with`` block; ``url`` is the cp-url, ``token`` the CP token,
    ``tenant_url_template`` the tenant-url-template.
    """

    def __init__(self, scenario: Any, port: int = 0, host: str = "127.0.0.1") -> None:
        self.scenario = load_scenario(scenario)
        self.host = host
        self.port = port
        self.token = self.scenario["token"]
        self._latency = self.scenario["latency_ms"] / 1000.0
        self._fault = self.scenario["control_plane"]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._builds: dict[str, _Build] = {}
        old = _Build(self.scenario["old_tag"], self.scenario["old_sha"])
        self._tenants = [_Tenant(spec, old) for spec in self.scenario["tenants"]]
        # Duplicate slugs are listed as given; requests reach the first tenant of that name.
        self._routes: dict[str, _Tenant] = {}
        for tenant in self._tenants:
            if isinstance(tenant.slug, str) and tenant.slug:
                self._routes.setdefault(tenant.slug, tenant)
        self._hits: dict[str, list[dict]] = {slug: [] for slug in self._routes}
        self._calls: list[dict] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        tag = self.scenario["deployed_tag"]
        if tag is not None:
            build = self._build(tag)
            now = time.time()
            with self._lock:
                for tenant in self._tenants:
                    tenant.redeploy(build, now)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"sandbox:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what callers use --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None and not self.port:
            raise RuntimeError("the sandbox has no address until start()")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def tenant_url_template(self) -> str:
        return self.url + "/t/{slug}"

    def tenant_url(self, slug: str) -> str:
        return f"{self.url}/t/{slug}"

    @property
    def slugs(self) -> list:
        """The fleet in scenario order, exactly as the listing serves it."""
        return [t.slug for t in self._tenants]

    @property
    def cp_calls(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(self._calls)

    @property
    def tenant_hits(self) -> dict[str, list[dict]]:
        with self._lock:
            return {slug: [dict(h) for h in hits] for slug, hits in self._hits.items()}

    def state(self) -> dict:
        """What ``GET /sandbox/state`` answers: calls, hit counts and each tenant's build."""
        with self._lock:
            tenants: dict[str, dict] = {}
            now = time.time()
            for tenant in self._tenants:
                if tenant.pending is not None and now >= tenant.ready_at:
                    tenant.serving, tenant.pending = tenant.pending, None
                tenants.setdefault(str(tenant.slug), tenant.state())
            return {
                "scenario": self.scenario["name"],
                "description": self.scenario["description"],
                "cp_calls": copy.deepcopy(self._calls),
                "tenant_hits": {slug: len(hits) for slug, hits in self._hits.items()},
                "tenants": tenants,
            }

    # -- control plane -----------------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode("utf-8"), self.token.encode("utf-8"))

    def _build(self, tag: str) -> _Build:
        build = self._builds.get(tag)
        if build is None:
            build = self._builds[tag] = _Build(tag, sha_for_tag(tag))
        return build

    def _fault_for(self, call: str) -> str:
        if self._fault["on"] in (call, "both"):
            return self._fault["fault"]
        return "none"

    def _broken(self, fault: str) -> tuple[int, str, bytes] | None:
        """The answer of a control plane that fails outright, or None; a slow one is made to wait."""
        if fault == "http_500":
            return 500, JSON_TYPE, _json_bytes({"error": "internal error"})
        if fault == "html_error":
            return 502, HTML_TYPE, HTML_ERROR_PAGE
        if fault == "slow":
            self._stopping.wait(self._fault["slow_seconds"])
        return None

    def _list(self) -> tuple[int, str, bytes]:
        fault = self._fault_for("list")
        broken = self._broken(fault)
        if broken:
            return broken
        missing = set(self._fault["missing"]) if fault == "missing_tenant" else set()
        listing = [{"slug": t.slug} for t in self._tenants if t.slug not in missing]
        return 200, JSON_TYPE, _json_bytes({"tenants": listing})

    def _redeploy(self, raw: bytes) -> tuple[int, str, bytes]:
        fault = self._fault_for("redeploy")
        broken = self._broken(fault)
        if broken:
            return broken
        try:
            body = validate("redeploy-request", parse_json(raw, "request body"), "redeploy request rejected")
            scope = self._scope(body)
        except ContractError as exc:
            return 400, JSON_TYPE, _json_bytes({"error": str(exc)})
        status, doc = self._run(body, scope, fault)
        return status, JSON_TYPE, _json_bytes(doc)

    def _scope(self, body: dict) -> list[str]:
        """The tenants a request covers, in fleet order for the whole fleet, else in request order."""
        if "slugs" in body:
            seen: set[str] = set()
            for slug in body["slugs"]:
                if slug in seen:
                    raise ContractError(f"redeploy request rejected: slugs names {show(slug)} twice")
                seen.add(slug)
            unknown = [s for s in body["slugs"] if s not in self._routes]
            if unknown:
                raise ContractError(
                    "redeploy request rejected: slugs not in the fleet: " + ", ".join(show(s) for s in unknown)
                )
            scope = list(body["slugs"])
        else:
            scope = list(self._routes)
        canary = body.get("canary_slug") or ""
        if canary and canary not in self._routes:
            raise ContractError(f"redeploy request rejected: canary_slug {show(canary)} is not in the fleet")
        return scope

    def _run(self, body: dict, scope: list[str], fault: str) -> tuple[int, dict]:
        """Canary, soak, then batches, with the straggler budget checked after every batch."""
        lenient = fault == "ok_despite_unverified"
        hidden = set(self._fault["missing"]) if fault == "missing_tenant" else set()
        canary = body.get("canary_slug") or ""
        if canary not in scope:
            canary = ""
        rest = [slug for slug in scope if slug != canary]
        results: list[dict] = []

        if body.get("dry_run", False):
            for slug in ([canary] if canary else []) + rest:
                if slug not in hidden:
                    results.append(
                        {
                            "slug": slug,
                            "phase": "plan",
                            "ssm_status": None,
                            "ssm_exit_code": None,
                            "healthz_ok": None,
                            "verified_on_target": False,
                            "error": None,
                        }
                    )
            return 200, {"ok": True, "results": results}

        build = self._build(body["target_tag"])
        if canary:
            with self._lock:
                tenant = self._routes[canary]
                tenant.redeploy(build, time.time())
                result = tenant.cp_result("canary")
            if canary not in hidden:
                results.append(result)
            if not result["verified_on_target"] and not lenient:
                return 500, {"ok": False, "error": f"canary {canary} failed: {result['error']}", "results": results}
            if body.get("soak_seconds", 0):
                self._stopping.wait(body["soak_seconds"])

        batch_size = body.get("batch_size", 1)
        budget = body.get("max_stragglers", 0)
        stragglers: list[str] = []
        for start in range(0, len(rest), batch_size):
            with self._lock:
                now = time.time()
                for slug in rest[start : start + batch_size]:
                    tenant = self._routes[slug]
                    tenant.redeploy(build, now)
                    if slug in hidden:
                        continue
                    result = tenant.cp_result("batch")
                    results.append(result)
                    if not result["verified_on_target"]:
                        stragglers.append(slug)
            if len(stragglers) > budget and not lenient:
                return 500, {
                    "ok": False,
                    "error": f"{len(stragglers)} stragglers, max tolerated {budget}",
                    "results": results,
                    "stragglers": stragglers,
                }
        doc: dict[str, Any] = {"ok": True, "results": results}
        if stragglers and not lenient:
            doc["stragglers"] = stragglers
        return 200, doc
