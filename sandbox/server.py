"""A simulated control plane, tenant fleet and forge API serving the contract on loopback, from one process.

One threaded HTTP server answers every side:

- the control plane's one endpoint, ``POST /cp/admin/tenants/redeploy-fleet`` (bearer token required);
- every tenant under ``/t/<slug>/...``: health at the scenario's ``health_paths``, buildinfo at ``/buildinfo``;
- the forge: GitHub's API under ``/github`` and Gitea's under ``/api/v1`` (branch head, Actions variables,
  and the issue tracker of ``sandbox/tracker.py``: issues, pull requests, labels, comments);
- the sandbox itself: ``GET /sandbox/state``, ``POST /sandbox/tenants/<slug>`` (change a behaviour) and
  ``POST /sandbox/forge`` (move the head, set variables and the issue tracker's faults), no token: it is a
  loopback simulator.

Tenant answers are prebuilt byte strings handed out under one lock, so a fleet of thousands can be polled
at once. The sandbox is self-contained: it checks requests itself and imports nothing from the project.
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
from urllib.parse import parse_qsl, unquote

from .scenario import BEHAVIOURS, BUILDINFO_PATH, load_scenario, sha_for_tag
from .tracker import Tracker, phrase

REDEPLOY_PATH = "/cp/admin/tenants/redeploy-fleet"
STATE_PATH = "/sandbox/state"
TENANTS_PATH = "/sandbox/tenants/"
FORGE_PATH = "/sandbox/forge"
GITHUB_PREFIX = "/github"
GITEA_PREFIX = "/api/v1"
IMAGE = "registry.example/app"
MAX_BODY = 1 << 20
SHOW_LIMIT = 80

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"

HTML_ERROR_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)

REQUEST_FIELDS: dict[str, tuple[type, str]] = {
    "target_tag": (str, "a string"),
    "canary_slug": (str, "a string"),
    "soak_seconds": (int, "an integer >= 0"),
    "batch_size": (int, "an integer >= 1"),
    "max_stragglers": (int, "an integer >= 0"),
    "dry_run": (bool, "true or false"),
    "confirm": (bool, "true or false"),
    "only_slugs": (list, "a non-empty array of slugs"),
}
MINIMUM = {"soak_seconds": 0, "batch_size": 1, "max_stragglers": 0}

Answer = tuple[int, str, bytes]
ISSUE_FAULTS = ("issues_status", "issue_write_status", "issues_delay")


def _check_issue_faults(faults: dict[str, Any]) -> None:
    """Raise ValueError for an unknown fault or a value it cannot take."""
    for key, value in faults.items():
        if key not in ISSUE_FAULTS:
            raise ValueError(f"unknown issue fault {show(key)} (one of {', '.join(ISSUE_FAULTS)})")
        if key == "issues_delay":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
                raise ValueError(f"issues_delay must be seconds from 0 to 3600, not {show(value)}")
        elif value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599):
            raise ValueError(f"{key} must be an HTTP status from 200 to 599 or null, not {show(value)}")


def show(value: Any, limit: int = SHOW_LIMIT) -> str:
    """A value as a short, escaped, single-line literal for error messages."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=repr)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"key {show(key)} appears twice")
        doc[key] = value
    return doc


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes, what: str) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity, no duplicate keys); ValueError names `what` and the cause."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what} is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except RecursionError:
        raise ValueError(f"{what}: JSON nested too deeply") from None
    except json.JSONDecodeError:
        raise ValueError(f"{what} is not JSON: {show(text.strip(), 60)}") from None
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


class BadRequest(ValueError):
    """A request the sandbox answers with 400."""


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


def _json(status: int, doc: Any) -> Answer:
    return status, JSON_TYPE, _json_bytes(doc)


# A tenant's answers: (status, whole response). A status of None drops the connection unanswered.
Reply = tuple[int | None, bytes | None]
HEALTH_UP: Reply = (200, _raw(200, TEXT_TYPE, b"ok"))
HEALTH_DOWN: Reply = (503, _raw(503, TEXT_TYPE, b"unavailable"))
STOPPED: Reply = (503, _raw(503, TEXT_TYPE, b"tenant stopped"))
DROPPED: Reply = (None, None)


class _Build:
    """A build a tenant can serve, with its buildinfo answer prebuilt."""

    __slots__ = ("tag", "sha", "buildinfo")

    def __init__(self, tag: str, sha: str) -> None:
        self.tag = tag
        self.sha = sha
        self.buildinfo: Reply = (200, _raw(200, JSON_TYPE, _json_bytes({"git_sha": sha, "tag": tag})))


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
        "live",
    )

    def __init__(self, spec: dict[str, Any], old: _Build) -> None:
        self.slug: Any = spec["slug"]
        self.behaviour: str = spec["behaviour"]
        self.ready_after = float(spec["ready_after"])
        self.cp_verified: bool | None = spec["cp_verified"]
        self.serving = old
        self.pending: _Build | None = None
        self.ready_at = 0.0
        self.deployed_tag: str | None = None
        self.deployed_at: float | None = None
        self.redeploys = 0
        self.flaps = 0
        # Until its first redeploy a tenant is healthy on its old build, whatever its behaviour; a
        # behaviour set while the sandbox runs applies at once.
        self.live = False

    @property
    def candidate(self) -> bool:
        """Whether the control plane would redeploy this tenant (stopped ones are left out)."""
        return self.behaviour != "stopped"

    def settle(self, now: float) -> None:
        if self.pending is not None and now >= self.ready_at:
            self.serving, self.pending = self.pending, None

    def set_behaviour(self, behaviour: str, now: float) -> None:
        """Change what the tenant does from now on; it keeps serving the build it serves."""
        self.settle(now)
        self.pending = None
        self.behaviour = behaviour
        self.flaps = 0
        self.live = True

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

    def answer(self, what: str, now: float) -> Reply:
        """The answer to a health (``what`` = "health") or buildinfo request."""
        behaviour = self.behaviour
        if behaviour == "stopped":
            return STOPPED
        if self.deployed_tag is None and not self.live:
            return HEALTH_UP if what == "health" else self.serving.buildinfo
        if behaviour == "unreachable":
            return DROPPED
        self.settle(now)
        if what == "buildinfo":
            return self.serving.buildinfo
        if behaviour == "wedged":
            return HEALTH_DOWN
        if behaviour == "slow":
            return HEALTH_DOWN if self.pending is not None else HEALTH_UP
        if behaviour == "flapping":
            self.flaps += 1
            return HEALTH_UP if self.flaps % 2 else HEALTH_DOWN
        return HEALTH_UP

    def cp_result(self, phase: str, build: _Build) -> dict[str, Any]:
        """What the control plane claims about this tenant after redeploying it."""
        if self.cp_verified is not None:
            verified = self.cp_verified
        else:
            verified = self.behaviour not in ("wedged", "unreachable")
        result: dict[str, Any] = {
            "slug": self.slug,
            "phase": phase,
            "ssm_status": "Success",
            "ssm_exit_code": 0,
            "healthz_ok": True,
            "verified_on_target": True,
            "error": None,
            "running_image": f"{IMAGE}:{build.tag}",
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
                running_image=None,
            )
        else:
            result.update(
                healthz_ok=False,
                verified_on_target=False,
                error="healthz timeout",
                running_image=f"{IMAGE}:{self.serving.tag}",
            )
        return result

    def state(self) -> dict[str, Any]:
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
        elif path.startswith((GITHUB_PREFIX + "/", GITEA_PREFIX + "/")) or path in (GITHUB_PREFIX, GITEA_PREFIX):
            self._forge(sandbox, path, body)
        elif path == STATE_PATH or path == FORGE_PATH or path.startswith(TENANTS_PATH):
            self._sandbox(sandbox, path, body)
        else:
            self._send_json(404, {"error": f"no such path: {show(path)}"})

    # -- tenants -----------------------------------------------------------------------------------

    def _tenant(self, path: str) -> None:
        arrived = time.time()
        if self.headers.get("Content-Length", "0") != "0" and self._read_body() is None:
            return
        slug, _, what = path[3:].partition("/")
        sandbox = self.server.sandbox
        tenant = sandbox._routes.get(slug)
        if tenant is None:
            self._send_json(404, {"error": f"no such tenant: {show(slug)}"})
            return
        if self.command != "GET":
            self._send_json(405, {"error": "tenants answer GET only"}, ("Allow: GET",))
            return
        kind = "health" if "/" + what in sandbox._health_paths else "buildinfo" if "/" + what == BUILDINFO_PATH else ""
        if sandbox._latency:
            time.sleep(sandbox._latency)
        authorization = "Authorization" in self.headers
        with sandbox._lock:
            status, response = tenant.answer(kind, time.time()) if kind else (404, None)
            sandbox._hits[slug].append(
                {"path": what, "authorization": authorization, "status": status, "time": arrived}
            )
        if status == 404:
            self._send_json(404, {"error": f"no such tenant path: {show(path)}"})
            return
        if response is None:
            self.close_connection = True  # unreachable: the connection ends without an answer
            return
        if self.close_connection:
            response = response.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
        self.wfile.write(response)

    # -- control plane -----------------------------------------------------------------------------

    def _control_plane(self, sandbox: Sandbox, path: str, raw: bytes) -> None:
        arrived = time.time()
        try:
            body: Any = parse_json(raw, "request body")
            problem = None
        except ValueError as exc:
            body, problem = None, str(exc)
        dry_run = isinstance(body, dict) and body.get("dry_run") is True
        authorized = sandbox._authorized(self.headers.get("Authorization"))
        if sandbox._latency:
            time.sleep(sandbox._latency)
        extra: tuple[str, ...] = ()
        if not authorized:
            status, content_type, payload = _json(
                401, {"error": "missing or wrong bearer token (send Authorization: Bearer <token>)"}
            )
            extra = ('WWW-Authenticate: Bearer realm="sandbox"',)
        elif path == REDEPLOY_PATH and self.command == "POST":
            status, content_type, payload = sandbox._redeploy(body, problem, dry_run)
        elif path == REDEPLOY_PATH:
            status, content_type, payload = _json(405, {"error": f"{path} accepts POST only"})
            extra = ("Allow: POST",)
        else:
            status, content_type, payload = _json(404, {"error": f"no such control plane path: {show(path)}"})
        with sandbox._lock:
            sandbox._calls.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "body": body,
                    "dry_run": dry_run,
                    "authorized": authorized,
                    "status": status,
                    "time": arrived,
                }
            )
            if path == REDEPLOY_PATH and self.command == "POST" and authorized and status != 400 and not dry_run:
                sandbox._real_call_handled()
        self._send(status, content_type, payload, extra)

    # -- forge -------------------------------------------------------------------------------------

    def _forge(self, sandbox: Sandbox, path: str, raw: bytes) -> None:
        arrived = time.time()
        github = path == GITHUB_PREFIX or path.startswith(GITHUB_PREFIX + "/")
        rest = path[len(GITHUB_PREFIX if github else GITEA_PREFIX) :]
        query = parse_qsl(self.path.partition("?")[2], keep_blank_values=True)
        try:
            body: Any = parse_json(raw, "request body") if raw else None
            problem = None
        except ValueError as exc:
            body, problem = raw.decode("utf-8", "replace"), str(exc)
        authorized = sandbox._forge_authorized(self.headers.get("Authorization"))
        if sandbox._latency:
            time.sleep(sandbox._latency)
        extra: tuple[str, ...] = ()
        if not authorized:
            status, doc = 401, {"message": "Bad credentials"}
        else:
            status, doc, extra = sandbox._forge_answer(github, self.command, rest, query, body, problem)
        with sandbox._lock:
            sandbox._forge_calls.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "query": dict(query),
                    "body": body,
                    "authorized": authorized,
                    "status": status,
                    "time": arrived,
                }
            )
        self._send_json(status, doc, extra)

    # -- the sandbox itself ------------------------------------------------------------------------

    def _sandbox(self, sandbox: Sandbox, path: str, raw: bytes) -> None:
        method = self.command
        allowed = "GET" if path == STATE_PATH else "GET, POST"
        if method not in allowed.split(", "):
            self._send_json(405, {"error": f"{path} accepts {allowed} only"}, (f"Allow: {allowed}",))
            return
        try:
            if path == STATE_PATH:
                self._send_json(200, sandbox.state())
            elif path == FORGE_PATH:
                self._send_json(200, sandbox._forge_update(raw) if method == "POST" else sandbox.forge)
            else:
                slug = unquote(path[len(TENANTS_PATH) :])
                if method == "POST":
                    self._send_json(200, sandbox._tenant_update(slug, raw))
                else:
                    self._send_json(200, sandbox.tenant_state(slug))
        except KeyError as exc:
            self._send_json(404, {"error": exc.args[0] if exc.args else "not found"})
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})


class Sandbox:
    """A control plane, its tenants and a forge API, served on ``host:port`` (0 picks a free port).

    `scenario` is a parsed scenario document or a preset name or YAML path (see `load_scenario`).
    Use ``start()``/``stop()`` or a ``with`` block; ``url`` is the cp-url, ``token`` the CP token,
    ``tenant_url_template`` the tenant-url-template, ``github_api_url``/``gitea_api_url`` an api-url and
    ``forge_token`` its api-token.
    """

    def __init__(self, scenario: Any, port: int = 0, host: str = "127.0.0.1") -> None:
        self.scenario = load_scenario(scenario)
        self.host = host
        self.port = port
        self.token: str = self.scenario["token"]
        self._latency = self.scenario["latency_ms"] / 1000.0
        self._health_paths = frozenset(self.scenario["health_paths"])
        self._fault: dict[str, Any] = self.scenario["control_plane"]
        self._gateway_left: int = self._fault["times"]
        forge = self.scenario["forge"]
        self.forge_token: str = forge["token"]
        self._repository: str = forge["repository"]
        self._branch: str = forge["branch"]
        self._head: str | None = forge["head"]
        self._variables: dict[str, str] = dict(forge["variables"])
        self._variable_status: int | None = forge["variable_status"]
        self._after_calls: list[dict[str, Any]] = copy.deepcopy(forge["after_calls"])
        self._tracker = Tracker(forge, "")
        self._issues_status: int | None = forge["issues_status"]
        self._issue_write_status: int | None = forge["issue_write_status"]
        self._issues_delay: float = forge["issues_delay"]
        self._real_calls = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._builds: dict[str, _Build] = {}
        old = _Build(self.scenario["old_tag"], self.scenario["old_sha"])
        self._tenants = [_Tenant(spec, old) for spec in self.scenario["tenants"]]
        # Duplicate slugs are served as given; requests reach the first tenant of that name.
        self._routes: dict[Any, _Tenant] = {}
        for tenant in self._tenants:
            if isinstance(tenant.slug, str) and tenant.slug:
                self._routes.setdefault(tenant.slug, tenant)
        self._hits: dict[str, list[dict[str, Any]]] = {slug: [] for slug in self._routes}
        self._calls: list[dict[str, Any]] = []
        self._forge_calls: list[dict[str, Any]] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Sandbox:
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._tracker.base_url = self.url
        tag = self.scenario["deployed_tag"]
        if tag is not None:
            build = self._build(tag)
            now = time.time()
            with self._lock:
                for tenant in self._tenants:
                    if tenant.candidate:
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
    def github_api_url(self) -> str:
        return self.url + GITHUB_PREFIX

    @property
    def gitea_api_url(self) -> str:
        return self.url + GITEA_PREFIX

    @property
    def repository(self) -> str:
        """The forge's one repository, ``owner/name`` (what GITHUB_REPOSITORY would say)."""
        return self._repository

    @property
    def branch(self) -> str:
        return self._branch

    @property
    def slugs(self) -> list[str]:
        """Every tenant in scenario order, stopped ones included."""
        return [t.slug for t in self._tenants]

    @property
    def candidates(self) -> list[str]:
        """The rollout candidates, in order: exactly the rows of a fleet-wide dry run (without faults)."""
        with self._lock:
            return [t.slug for t in self._tenants if t.candidate]

    @property
    def cp_calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._calls)

    @property
    def forge_calls(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._forge_calls)

    @property
    def tenant_hits(self) -> dict[str, list[dict[str, Any]]]:
        with self._lock:
            return {slug: [dict(h) for h in hits] for slug, hits in self._hits.items()}

    @property
    def forge(self) -> dict[str, Any]:
        """The forge's state: repository, branch, head (None: the branch is unknown) and variables."""
        with self._lock:
            return self._forge_state()

    def tenant_state(self, slug: str) -> dict[str, Any]:
        """One tenant's state, as in ``state()["tenants"]`` plus its slug; KeyError for an unknown slug."""
        with self._lock:
            tenant = self._tenant(slug)
            tenant.settle(time.time())
            return {"slug": slug, **tenant.state()}

    def set_behaviour(self, slug: str, behaviour: str) -> dict[str, Any]:
        """Change a tenant's behaviour now (thread-safe); returns its new state.

        The tenant keeps the build it serves: the behaviour decides its health from now on and what its
        next redeploy does (``healthy``: lands and is verified; ``wedged``: unhealthy now, its next redeploy
        fails; ``stale``: healthy, keeps its build on a redeploy; ``stopped``: no longer a rollout
        candidate). A slow tenant's redeploy that has not come up yet is abandoned.
        Raises KeyError for an unknown slug, ValueError for an unknown behaviour.
        """
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {show(behaviour)} (one of {', '.join(BEHAVIOURS)})")
        with self._lock:
            tenant = self._tenant(slug)
            tenant.set_behaviour(behaviour, time.time())
            return {"slug": slug, **tenant.state()}

    def set_head(self, sha: str | None) -> None:
        """Move the branch head (None: the branch is unknown, reads answer 404)."""
        if sha is not None and (not isinstance(sha, str) or not sha):
            raise ValueError(f"head must be a sha or None, not {show(sha)}")
        with self._lock:
            self._head = sha

    def set_variable(self, name: str, value: str | None) -> None:
        """Set a repository Actions variable (None: unset it, reads answer 404)."""
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"bad variable name {show(name)}")
        if value is not None and not isinstance(value, str):
            raise ValueError(f"variable {name} must be a string or None, not {show(value)}")
        with self._lock:
            self._set_variable(name, value)

    def set_issue_faults(self, **faults: Any) -> None:
        """Change the issue tracker's faults now: ``issues_status`` (every issue, comment and label call
        answers it; None: off), ``issue_write_status`` (every write answers it) and ``issues_delay``
        (seconds each such call waits before answering). Keys left out stay as they are."""
        _check_issue_faults(faults)
        with self._lock:
            self._set_issue_faults(faults)

    @property
    def issues(self) -> list[dict[str, Any]]:
        """The forge's issues and pull requests (``pull_request``: true), oldest first, with their comments."""
        with self._lock:
            return list(self._tracker.state()["issues"])

    @property
    def labels(self) -> list[dict[str, Any]]:
        """The forge's labels: id, name, color."""
        with self._lock:
            return list(self._tracker.state()["labels"])

    def state(self) -> dict[str, Any]:
        """What ``GET /sandbox/state`` answers: calls, hit counts, each tenant's build, the forge and its
        issue tracker (``issues``, ``labels``)."""
        with self._lock:
            tenants: dict[str, dict[str, Any]] = {}
            now = time.time()
            for tenant in self._tenants:
                tenant.settle(now)
                tenants.setdefault(str(tenant.slug), tenant.state())
            return {
                "scenario": self.scenario["name"],
                "description": self.scenario["description"],
                "health_paths": list(self.scenario["health_paths"]),
                "cp_calls": copy.deepcopy(self._calls),
                "real_calls": self._real_calls,
                "tenant_hits": {slug: len(hits) for slug, hits in self._hits.items()},
                "tenants": tenants,
                "forge": self._forge_state(),
                "forge_calls": copy.deepcopy(self._forge_calls),
                **self._tracker.state(),
            }

    # -- internals (the lock is held where the name says so) ---------------------------------------

    def _tenant(self, slug: str) -> _Tenant:
        tenant = self._routes.get(slug)
        if tenant is None:
            raise KeyError(f"no such tenant: {show(slug)}")
        return tenant

    def _tenant_update(self, slug: str, raw: bytes) -> dict[str, Any]:
        if slug not in self._routes:
            raise KeyError(f"no such tenant: {show(slug)}")
        body = parse_json(raw, "request body")
        if not isinstance(body, dict) or set(body) != {"behaviour"}:
            raise ValueError('send {"behaviour": "<' + "|".join(BEHAVIOURS) + '>"}')
        return self.set_behaviour(slug, body["behaviour"])

    def _forge_update(self, raw: bytes) -> dict[str, Any]:
        body = parse_json(raw, "request body")
        if not isinstance(body, dict) or not body or set(body) - {"head", "variables", *ISSUE_FAULTS}:
            raise ValueError(
                'send {"head": "<sha>" or null, "variables": {"NAME": "value" or null}, "issues_status": N or null, '
                '"issue_write_status": N or null, "issues_delay": seconds} (any of the keys)'
            )
        variables = body.get("variables", {})
        if not isinstance(variables, dict):
            raise ValueError("variables must be an object of NAME: value (null unsets)")
        for name, value in variables.items():
            if not name or "/" in name or (value is not None and not isinstance(value, str)):
                raise ValueError(f"bad variable {show(name)}: {show(value)} (values are strings, null unsets)")
        faults = {key: body[key] for key in ISSUE_FAULTS if key in body}
        _check_issue_faults(faults)
        if "head" in body:
            self.set_head(body["head"])
        with self._lock:
            for name, value in variables.items():
                self._set_variable(name, value)
            self._set_issue_faults(faults)
            return self._forge_state()

    def _set_issue_faults(self, faults: dict[str, Any]) -> None:
        self._issues_status = faults.get("issues_status", self._issues_status)
        self._issue_write_status = faults.get("issue_write_status", self._issue_write_status)
        self._issues_delay = float(faults.get("issues_delay", self._issues_delay))

    def _set_variable(self, name: str, value: str | None) -> None:
        if value is None:
            self._variables.pop(name, None)
        else:
            self._variables[name] = value

    def _forge_state(self) -> dict[str, Any]:
        return {
            "repository": self._repository,
            "branch": self._branch,
            "head": self._head,
            "variables": dict(self._variables),
            "issues_status": self._issues_status,
            "issue_write_status": self._issue_write_status,
            "issues_delay": self._issues_delay,
        }

    def _forge_authorized(self, header: str | None) -> bool:
        scheme, _, credentials = (header or "").strip().partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return False
        return hmac.compare_digest(credentials.strip().encode("utf-8"), self.forge_token.encode("utf-8"))

    def _forge_answer(
        self, github: bool, method: str, rest: str, query: list[tuple[str, str]], body: Any, problem: str | None
    ) -> tuple[int, Any, tuple[str, ...]]:
        """The answer to an authorized forge call: the issue tracker's, or a branch or variable read."""
        parts = [unquote(p) for p in rest.strip("/").split("/")]
        if len(parts) < 4 or parts[0] != "repos" or f"{parts[1]}/{parts[2]}".lower() != self._repository.lower():
            return 404, {"message": "Not Found"}, ()
        if parts[3] in ("issues", "labels"):
            return self._tracker_answer(github, method, parts[3:], query, body, problem)
        if method not in ("GET", "HEAD"):
            return 405, {"message": "Method Not Allowed"}, ("Allow: GET",)
        return (*self._forge_read(github, parts), ())

    def _tracker_answer(
        self, github: bool, method: str, parts: list[str], query: list[tuple[str, str]], body: Any, problem: str | None
    ) -> tuple[int, Any, tuple[str, ...]]:
        """The tracker's answer, or its fault's; a slow tracker acts first, then keeps the caller waiting."""
        with self._lock:
            fault = self._issues_status
            if fault is None and method not in ("GET", "HEAD"):
                fault = self._issue_write_status
            if fault is not None:
                answer: tuple[int, Any, tuple[str, ...]] = (fault, {"message": phrase(fault)}, ())
            elif problem:
                answer = 400, {"message": f"Problems parsing JSON: {problem}"}, ()
            else:
                answer = self._tracker.handle(github, method, parts, query, body)
            delay = self._issues_delay
        if delay:
            self._stopping.wait(delay)
        return answer

    def _forge_read(self, github: bool, parts: list[str]) -> tuple[int, dict[str, Any]]:
        not_found = 404, {"message": "Not Found"}
        with self._lock:
            if len(parts) == 5 and parts[3] == "branches":
                if parts[4] != self._branch or self._head is None:
                    return not_found
                commit = {"sha": self._head} if github else {"id": self._head}
                return 200, {"name": self._branch, "commit": commit}
            if len(parts) == 6 and parts[3:5] == ["actions", "variables"]:
                if self._variable_status is not None:
                    return self._variable_status, {"message": HTTPStatus(self._variable_status).phrase}
                value = self._variables.get(parts[5])
                if value is None:
                    return not_found
                return 200, {"name": parts[5], "value" if github else "data": value}
        return not_found

    def _real_call_handled(self) -> None:
        """Count a real redeploy call (lock held) and apply the forge changes due after it."""
        self._real_calls += 1
        for step in self._after_calls:
            if step["calls"] == self._real_calls:
                if "head" in step:
                    self._head = step["head"]
                for name, value in step.get("variables", {}).items():
                    self._set_variable(name, value)

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

    def _fault_for(self, dry_run: bool) -> str:
        if self._fault["on"] in ("dry_run" if dry_run else "redeploy", "both"):
            return str(self._fault["fault"])
        return "none"

    def _broken(self, fault: str) -> Answer | None:
        """The answer of a control plane that fails outright, or None; a slow one is made to wait."""
        if fault == "http_500":
            return _json(500, {"error": "internal error"})
        if fault == "html_error":
            return 502, HTML_TYPE, HTML_ERROR_PAGE
        if fault == "gateway_502":
            with self._lock:
                if self._gateway_left > 0:
                    self._gateway_left -= 1
                    return 502, HTML_TYPE, HTML_ERROR_PAGE
        if fault == "slow":
            self._stopping.wait(self._fault["slow_seconds"])
        return None

    def _redeploy(self, body: Any, problem: str | None, dry_run: bool) -> Answer:
        fault = self._fault_for(dry_run)
        broken = self._broken(fault)
        if broken:
            return broken
        try:
            if problem:
                raise BadRequest(problem)
            if not isinstance(body, dict):
                raise BadRequest(f"request body must be a JSON object, not {show(body)}")
            if fault == "rejects_scope" and "only_slugs" in body:
                raise BadRequest("unknown field: only_slugs")
            if fault == "ignores_scope":
                body = {k: v for k, v in body.items() if k != "only_slugs"}
            request = self._request(body)
            with self._lock:
                scope, canary = self._scope(request)
        except BadRequest as exc:
            return _json(400, {"ok": False, "error": str(exc)})
        status, doc = self._run(request, scope, canary, fault)
        return _json(status, doc)

    @staticmethod
    def _request(body: dict[str, Any]) -> dict[str, Any]:
        """The request's known fields, type-checked, with defaults; unknown fields are ignored."""
        request: dict[str, Any] = {
            "canary_slug": "",
            "soak_seconds": 0,
            "batch_size": 1,
            "max_stragglers": 0,
            "dry_run": False,
            "confirm": False,
        }
        if "target_tag" not in body:
            raise BadRequest("target_tag is required")
        for name, (kind, wanted) in REQUEST_FIELDS.items():
            if name not in body:
                continue
            value: Any = body[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise BadRequest(f"{name} must be {wanted}, not {show(value)}")
            if isinstance(value, int) and value < MINIMUM.get(name, 0):
                raise BadRequest(f"{name} must be {wanted}, not {show(value)}")
            request[name] = value
        if not request["target_tag"]:
            raise BadRequest("target_tag must not be empty")
        if "only_slugs" in request:
            slugs = request["only_slugs"]
            if not slugs:
                raise BadRequest("only_slugs must not be empty (leave it out, with confirm: true, for the fleet)")
            bad = [s for s in slugs if not isinstance(s, str)]
            if bad:
                raise BadRequest(f"only_slugs must hold slugs (strings), not {show(bad[0])}")
        elif request["confirm"] is not True:
            raise BadRequest("confirm: true is required for a fleet-wide redeploy")
        return request

    def _scope(self, request: dict[str, Any]) -> tuple[list[_Tenant], _Tenant | None]:
        """The tenants a request covers (lock held): its only_slugs in request order, else every candidate."""
        if "only_slugs" in request:
            seen: set[str] = set()
            for slug in request["only_slugs"]:
                if slug in seen:
                    raise BadRequest(f"only_slugs names {show(slug)} twice")
                seen.add(slug)
            unknown = [s for s in request["only_slugs"] if s not in self._routes]
            if unknown:
                raise BadRequest("only_slugs not in the fleet: " + ", ".join(show(s) for s in unknown))
            stopped = [s for s in request["only_slugs"] if not self._routes[s].candidate]
            if stopped:
                raise BadRequest(
                    "only_slugs names stopped tenants, not rollout candidates: " + ", ".join(show(s) for s in stopped)
                )
            scope = [self._routes[s] for s in request["only_slugs"]]
        else:
            scope = [t for t in self._tenants if t.candidate]
        canary_slug = request["canary_slug"]
        canary = None
        if canary_slug:
            tenant = self._routes.get(canary_slug)
            if tenant is None:
                raise BadRequest(f"canary_slug {show(canary_slug)} is not in the fleet")
            if not tenant.candidate:
                raise BadRequest(f"canary_slug {show(canary_slug)} is stopped, not a rollout candidate")
            if tenant in scope:
                canary = tenant
        return scope, canary

    def _run(
        self, request: dict[str, Any], scope: list[_Tenant], canary: _Tenant | None, fault: str
    ) -> tuple[int, dict[str, Any]]:
        """Canary, soak, then batches, with the straggler budget checked after every batch."""
        lenient = fault == "ok_despite_unverified"
        keyless = fault == "no_stragglers_key"
        hidden = set(self._fault["missing"]) if fault == "missing_tenant" else set()
        unproven = set(self._fault["unproven"] or self._fault["missing"]) if fault == "unproven" else set()
        rest = [t for t in scope if t is not canary]
        batch_size = request["batch_size"]
        batches = [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]
        results: list[dict[str, Any]] = []

        if request["dry_run"]:
            plan = [(canary, "canary")] if canary else []
            plan += [(t, f"batch-{n}") for n, batch in enumerate(batches, 1) for t in batch]
            results = [{"slug": t.slug, "phase": p, "ssm_status": "DryRun"} for t, p in plan if t.slug not in hidden]
            return 200, {"ok": True, "results": results}

        build = self._build(request["target_tag"])

        def deploy(tenant: _Tenant, phase: str, now: float) -> dict[str, Any]:
            """Redeploy one tenant (lock held); its row, before the faults that change rows apply."""
            tenant.redeploy(build, now)
            row = tenant.cp_result(phase, build)
            shown = dict(row)
            if tenant.slug in unproven:
                del shown["verified_on_target"]
            if tenant.slug not in hidden:
                results.append(shown)
            return row

        if canary:
            with self._lock:
                row = deploy(canary, "canary", time.time())
            if not row["verified_on_target"] and not lenient:
                return 500, {"ok": False, "error": f"canary {canary.slug} failed: {row['error']}", "results": results}
            if request["soak_seconds"]:
                self._stopping.wait(request["soak_seconds"])

        budget = request["max_stragglers"]
        stragglers: list[Any] = []
        for n, batch in enumerate(batches, 1):
            with self._lock:
                now = time.time()
                for tenant in batch:
                    if not deploy(tenant, f"batch-{n}", now)["verified_on_target"] and tenant.slug not in hidden:
                        stragglers.append(tenant.slug)
            if len(stragglers) > budget and not lenient:
                doc: dict[str, Any] = {
                    "ok": False,
                    "error": f"{len(stragglers)} stragglers, max tolerated {budget}",
                    "results": results,
                }
                if not keyless:
                    doc["stragglers"] = stragglers
                return 500, doc
        doc = {"ok": True, "results": results}
        if stragglers and not lenient and not keyless:
            doc["stragglers"] = stragglers
        return 200, doc
