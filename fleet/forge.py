"""The forge's API (GitHub or Gitea): two reads, the head of the branch being deployed and a repository
Actions variable (the kill switch), and the quarantine ledger's issue calls (list, open, comment, edit,
close; Gitea's labels). Each call has one short deadline and no retry: a call that fails says why in
one line, and the caller decides (not superseded; the switch fails closed; the ledger warns).

The dialect is told by the API's address: Gitea serves its API under `/api/v1` (its `api-url` always
ends so), GitHub (and GitHub Enterprise, `/api/v3`) never does.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fleet import contract, http, runner
from fleet.contract import ContractError, show
from fleet.ledger import Issue

READ_SECONDS = 5.0
MAX_BODY = 256 * 1024
MAX_LIST_BODY = 16 * 1024 * 1024  # a page of 100 issues, each body up to GitHub's 65536 characters
MAX_PAGES = 20  # 2000 open issues on GitHub, 1000 on Gitea: past that, the list is not the ledger's to walk
GITHUB_PAGE, GITEA_PAGE = 100, 50  # the most each forge gives on one page (Gitea: MAX_RESPONSE_ITEMS)
LABEL_COLOR = "d93f0b"
LABEL_DESCRIPTION = "A tenant fleet-rollout quarantined: kept open by the action until it is redeployed"
WRITE_SCOPE = "issues: write on GitHub, write:issue on Gitea"
_NEXT = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')

# What a kill switch (a variable or PROD_AUTO_DEPLOY_DISABLED) reads as "on" and as "off", trimmed and in
# any case. Any other value is on too: a switch someone set to "stop" or "paused" meant it.
TRUE_WORDS = frozenset({"1", "true", "yes", "on", "disable", "disabled"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


def switched_on(value: str | None) -> bool:
    """Whether a kill switch halts: unset and the false words go; everything else halts (fail closed)."""
    return value is not None and value.strip().lower() not in FALSE_WORDS


def switch_words(value: str) -> str:
    """The switch's value as a message quotes it, saying so when it was not one of the known words."""
    if value.strip().lower() in TRUE_WORDS:
        return show(value)
    return f"{show(value)}, which is neither on nor off, so it halts (fail closed)"


def same_commit(a: str, b: str) -> bool:
    """Two shas name the same commit when they agree, case-insensitively, over the shorter length."""
    n = min(len(a), len(b))
    return n >= 7 and a[:n].lower() == b[:n].lower()


class ForgeError(Exception):
    """A read that did not give an answer; the message is one line that names why."""


@dataclass(frozen=True)
class Where:
    """What the runner says about the run: the repository and the branch being deployed."""

    repository: str  # owner/name
    branch: str  # "" when the ref is not a branch (a tag, a pull request)

    @classmethod
    def from_environment(cls, environ: Any) -> Where:
        ref_type = environ.get("GITHUB_REF_TYPE", "")
        ref = environ.get("GITHUB_REF", "")
        is_branch = ref_type == "branch" or (not ref_type and (not ref or ref.startswith("refs/heads/")))
        return cls(environ.get("GITHUB_REPOSITORY", ""), environ.get("GITHUB_REF_NAME", "") if is_branch else "")


class Forge:
    def __init__(self, api_url: str, token: str, *, allow_http: bool, ca_bundle: str | None) -> None:
        self.api_url = http.check_url(api_url, "api-url", allow_http) if api_url else ""
        runner.register_secret(token)
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._client = http.Client(ca_bundle=ca_bundle, keep_alive=True, idle=1)

    def branch_head(self, where: Where) -> str:
        """The sha the branch points at: GitHub answers commit.sha, Gitea commit.id."""
        self._usable()
        if not where.branch:
            raise ForgeError("the run's ref is not a branch")
        doc = self._read(f"/repos/{self._repo(where)}/branches/{quote(where.branch, safe='')}", "the branch head")
        commit = doc.get("commit") if isinstance(doc, dict) else None
        sha = commit.get("sha") or commit.get("id") if isinstance(commit, dict) else None
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-fA-F]{7,64}", sha):
            raise ForgeError("the branch answer has no commit sha of 7 to 64 hex digits (commit.sha or commit.id)")
        return sha.lower()

    def variable(self, where: Where, name: str) -> str | None:
        """A repository Actions variable's value (GitHub: value, Gitea: data); None when it is unset (404)."""
        self._usable()
        path = f"/repos/{self._repo(where)}/actions/variables/{quote(name, safe='')}"
        doc = self._read(path, f"the variable {name}", missing_ok=True)
        if doc is None:
            return None
        value = doc.get("value", doc.get("data")) if isinstance(doc, dict) else None
        if not isinstance(value, str):
            raise ForgeError(f"the variable {name}'s answer has no value (value or data)")
        return value

    def _usable(self) -> None:
        if not self.api_url:
            raise ForgeError("api-url is empty")

    def _repo(self, where: Where) -> str:
        owner, _, name = where.repository.partition("/")
        if not owner or not name:
            raise ForgeError("GITHUB_REPOSITORY is not set (owner/name)")
        return f"{quote(owner, safe='')}/{quote(name, safe='')}"

    @property
    def gitea(self) -> bool:
        """Gitea's dialect: its API lives under /api/v1."""
        return urlsplit(self.api_url).path.rstrip("/").endswith("/api/v1")

    # -- the quarantine ledger's issues ----------------------------------------------------------------

    def issues(self, where: Where, label: str) -> list[Issue]:
        """The open issues (never pull requests) that carry `label`, every page. On Gitea an unknown label
        would filter nothing, so there the label is looked up first: no label, no issue of the ledger."""
        self._usable()
        base = f"{self.api_url}/repos/{self._repo(where)}/issues"
        if self.gitea:
            if self.label_id(where, label) is None:
                return []
            query = {"state": "open", "labels": label, "type": "issues", "limit": str(GITEA_PAGE)}
        else:
            query = {"state": "open", "labels": label, "per_page": str(GITHUB_PAGE)}
        items = self._pages(f"{base}?{urlencode(query)}", "the open issues")
        return [_issue(item) for item in items if not item.get("pull_request") and _labelled(item, label)]

    def label_id(self, where: Where, name: str) -> int | None:
        """Gitea: the id of the label named `name`, None when there is none."""
        url = f"{self.api_url}/repos/{self._repo(where)}/labels?{urlencode({'limit': str(GITEA_PAGE)})}"
        for item in self._pages(url, "the labels"):
            if item.get("name") == name:
                return _number(item.get("id"), "the label's id")
        return None

    def open_issue(self, where: Where, title: str, body: str, label: str) -> Issue:
        """Open an issue with `label`: GitHub takes its name (and makes a missing label), Gitea its id
        (made here when missing)."""
        self._usable()
        if self.gitea:
            labels: list[Any] = [self.label_id(where, label) or self._new_label(where, label)]
        else:
            labels = [label]
        doc = {"title": title, "body": body, "labels": labels}
        return _issue(self._call("POST", f"/repos/{self._repo(where)}/issues", "opening the issue", doc))

    def comment(self, where: Where, number: int, body: str) -> str:
        """Comment on issue `number`; the comment's address."""
        path = f"/repos/{self._repo(where)}/issues/{number}/comments"
        doc = self._call("POST", path, f"commenting on issue #{number}", {"body": body})
        url = doc.get("html_url") if isinstance(doc, dict) else None
        return url if isinstance(url, str) else ""

    def edit(self, where: Where, number: int, **fields: str) -> None:
        """Edit issue `number` (`body`, `state`); GitHub answers 200, Gitea 201."""
        what = "closing" if fields.get("state") == "closed" else "editing"
        self._call("PATCH", f"/repos/{self._repo(where)}/issues/{number}", f"{what} issue #{number}", fields)

    def _new_label(self, where: Where, name: str) -> int:
        doc = {"name": name, "color": LABEL_COLOR, "description": LABEL_DESCRIPTION}
        made = self._call("POST", f"/repos/{self._repo(where)}/labels", f"creating the label {show(name)}", doc)
        return _number(made.get("id") if isinstance(made, dict) else None, "the new label's id")

    def _pages(self, url: str, what: str) -> list[dict[str, Any]]:
        """Every item of a list, page after page by the Link header's rel="next", at most MAX_PAGES."""
        items: list[dict[str, Any]] = []
        for _ in range(MAX_PAGES):
            resp = self._send("GET", url, f"reading {what}", None, MAX_LIST_BODY)
            page = self._json(resp, f"reading {what}")
            if not isinstance(page, list) or not all(isinstance(item, dict) for item in page):
                raise ForgeError(f"reading {what} answered no list of objects")
            items += page
            url = self._next(resp)
            if not url:
                return items
        raise ForgeError(f"{what} run past {MAX_PAGES} pages; they were not all read")

    def _next(self, resp: http.Response) -> str:
        """The next page's address, only on the API's own host: the token goes nowhere else."""
        match = _NEXT.search(resp.headers.get("Link") or "")
        if not match:
            return ""
        url, api = urlsplit(match.group(1)), urlsplit(self.api_url)
        if (url.scheme, url.netloc) != (api.scheme, api.netloc) or not url.path.startswith(api.path):
            raise ForgeError("the list's next page is outside the forge's API; it was not followed")
        return match.group(1)

    # -- the calls --------------------------------------------------------------------------------------

    def _read(self, path: str, what: str, missing_ok: bool = False) -> Any:
        resp = self._send("GET", self.api_url + path, f"reading {what}", None, MAX_BODY)
        if resp.status == 404 and missing_ok:
            return None
        return self._json(resp, f"reading {what}")

    def _call(self, method: str, path: str, what: str, doc: dict[str, Any]) -> Any:
        """A write: `doc` as JSON; 200 or 201 is done."""
        body = json.dumps(doc).encode("utf-8")
        return self._json(self._send(method, self.api_url + path, what, body, MAX_BODY), what, WRITE_SCOPE)

    def _send(self, method: str, url: str, what: str, body: bytes | None, cap: int) -> http.Response:
        headers = self._headers if body is None else {**self._headers, "Content-Type": "application/json"}
        try:
            return self._client.request(
                method, url, headers=headers, body=body, deadline=time.monotonic() + READ_SECONDS,
                connect=READ_SECONDS, cap=cap,
            )  # fmt: skip
        except http.RequestError as exc:
            raise ForgeError(f"{what} failed: {exc.cause}") from None

    def _json(self, resp: http.Response, what: str, scope: str = "") -> Any:
        if resp.status not in (200, 201):
            raise ForgeError(f"{what} answered HTTP {resp.status}{_hint(resp.status, scope)}")
        try:
            return contract.parse_json(resp.body, what)
        except ContractError as exc:
            raise ForgeError(runner.scrub(str(exc))) from None


def _hint(status: int, scope: str) -> str:
    if status in (401, 403):
        return f" (the api-token lacks permission{': ' + scope if scope else ''})"
    if status == 404 and scope:
        return " (not found, or the api-token cannot see it)"
    return ""


def _number(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ForgeError(f"{what} is not a positive whole number")
    return value


def _labelled(item: dict[str, Any], label: str) -> bool:
    labels = item.get("labels")
    return isinstance(labels, list) and any(isinstance(x, dict) and x.get("name") == label for x in labels)


def _issue(item: Any) -> Issue:
    """An issue as the ledger reads it; one without a number and a title is not an issue."""
    doc = item if isinstance(item, dict) else {}
    title, body, url = doc.get("title"), doc.get("body"), doc.get("html_url")
    if not isinstance(title, str):
        raise ForgeError("an issue in the answer has no title")
    return Issue(
        _number(doc.get("number"), "an issue's number"),
        title,
        body if isinstance(body, str) else "",
        url if isinstance(url, str) else "",
    )


def read_head(forge: Forge, where: Where, expected_sha: str | None, why: str) -> str | None:
    """The deployed branch's head, or None with a ::notice:: saying why it cannot be had: then nothing
    is superseded, and nothing is excused on a guess."""
    try:
        if not expected_sha:
            raise ForgeError("no expected-sha to compare with")
        return forge.branch_head(where)
    except ForgeError as exc:
        message = f"{why}: the branch head could not be read ({runner.plain(exc)}); nothing is superseded"
        if runner.under_runner():
            runner.notice(message)
        elif message not in _SAID:  # on a command line, plain text, and once per run
            _SAID.add(message)
            runner.log(f"note: {message}")
        return None


_SAID: set[str] = set()
