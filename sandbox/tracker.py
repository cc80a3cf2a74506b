"""The forge's issue tracker: issues, pull requests, labels and comments, in GitHub's and Gitea 1.22's shapes.

One store serves both dialects (``/github/repos/{o}/{r}/...`` and ``/api/v1/repos/{o}/{r}/...``):

- ``GET issues`` lists newest first, pull requests included: GitHub marks them with a ``pull_request``
  object; Gitea sends ``pull_request`` on every item, ``null`` on an issue, and leaves pull requests out
  with ``type=issues``. Filters: ``state`` (open, closed, all; default open) and ``labels`` (GitHub:
  names, every one required, an unknown name matches nothing; Gitea: names, any one, an unknown name
  dropped, so a filter of only unknown names filters nothing, as Gitea does).
- Paging: GitHub ``per_page`` (default 30, at most 100) and ``page``; Gitea ``limit`` (default 30, at
  most 50, ``MAX_RESPONSE_ITEMS``) and ``page``, with ``X-Total-Count``. Both send a ``Link`` header with
  ``rel="next"`` (and ``last``, ``first``, ``prev``) while there are more pages.
- ``POST issues`` ``{title, body, labels}`` → 201. GitHub: labels are names, a missing one is created;
  Gitea: labels are ids, a name is a 422, an unknown id a 422.
- ``GET``/``PATCH issues/{n}`` (``title``, ``body``, ``state``): GitHub answers an edit 200, Gitea 201.
- ``GET``/``POST issues/{n}/comments`` ``{body}`` → 201.
- ``GET``/``POST labels`` ``{name, color, description}`` → 201 (Gitea needs ``color``); a name that
  exists is a 422 on both (Gitea would make a second: refusing shows a client that does).

Every method is called with the sandbox lock held.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

GITHUB_PAGE = (30, 100)  # per_page: default, maximum
GITEA_PAGE = (30, 50)  # limit: default, maximum (Gitea's MAX_RESPONSE_ITEMS)
NEW_LABEL_COLOR = "ededed"  # GitHub's colour for a label created with an issue
BOT = {"login": "fleet-bot", "id": 7}
_COLOR = re.compile(r"#?[0-9a-fA-F]{6}")

Answer = tuple[int, Any, tuple[str, ...]]


class Refused(Exception):
    """A request the tracker answers with `status` and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


@dataclass
class _Label:
    id: int
    name: str
    color: str
    description: str = ""

    def doc(self, api: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "color": self.color,
            "description": self.description,
            "url": f"{api}/labels/{self.id}",
        }


@dataclass
class _Comment:
    id: int
    body: str
    created: float


@dataclass
class _Issue:
    number: int
    title: str
    body: str
    labels: list[str]
    state: str
    pull: bool
    created: float
    updated: float
    closed: float | None = None
    comments: list[_Comment] = field(default_factory=list)


class Tracker:
    """The issues, pull requests, labels and comments of the forge's one repository."""

    def __init__(self, forge: dict[str, Any], base_url: str) -> None:
        self.repository: str = forge["repository"]
        self.base_url = base_url  # the sandbox's URL; html_url and Link point under it
        self.new_label_status: int | None = forge["new_label_status"]
        self.labels: list[_Label] = []
        self.issues: list[_Issue] = []
        self._ids = 0
        for spec in forge["labels"]:
            self._label(spec["name"], spec["color"], spec["description"])
        for spec in forge["issues"]:
            self._seed(spec, pull=False)
        for spec in forge["pull_requests"]:
            self._seed(spec, pull=True)

    # -- the store ---------------------------------------------------------------------------------

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    def _label(self, name: str, color: str = NEW_LABEL_COLOR, description: str = "") -> _Label:
        label = _Label(self._next_id(), name, color.lstrip("#").lower(), description)
        self.labels.append(label)
        return label

    def _named(self, name: str) -> _Label | None:
        return next((label for label in self.labels if label.name == name), None)

    def _seed(self, spec: dict[str, Any], pull: bool) -> None:
        for name in spec["labels"]:
            if self._named(name) is None:
                self._label(name)
        issue = self._open(spec["title"], spec["body"], list(spec["labels"]), pull)
        for text in spec["comments"]:
            issue.comments.append(_Comment(self._next_id(), text, issue.created))
        if spec["state"] == "closed":
            issue.state, issue.closed = "closed", issue.created

    def _open(self, title: str, body: str, labels: list[str], pull: bool) -> _Issue:
        now = time.time()
        issue = _Issue(len(self.issues) + 1, title, body, labels, "open", pull, now, now)
        self.issues.append(issue)
        return issue

    def _issue(self, number: str) -> _Issue:
        if not number.isdigit() or not 1 <= int(number) <= len(self.issues):
            raise Refused(404, "Not Found")
        return self.issues[int(number) - 1]

    def state(self) -> dict[str, Any]:
        """The store as ``GET /sandbox/state`` shows it: issues (and pull requests) with their comments."""
        return {
            "issues": [
                {
                    "number": i.number,
                    "title": i.title,
                    "body": i.body,
                    "labels": list(i.labels),
                    "state": i.state,
                    "pull_request": i.pull,
                    "html_url": self._html_url(i),
                    "comments": [{"id": c.id, "body": c.body} for c in i.comments],
                }
                for i in self.issues
            ],
            "labels": [{"id": label.id, "name": label.name, "color": label.color} for label in self.labels],
        }

    # -- the API -----------------------------------------------------------------------------------

    def handle(self, github: bool, method: str, parts: list[str], query: list[tuple[str, str]], body: Any) -> Answer:
        """Answer `method` on ``repos/{o}/{r}/<parts>``; `body` is the parsed JSON body (None: none)."""
        try:
            return self._route(_Call(github, method, parts, query, body, self._api(github)))
        except Refused as exc:
            return exc.status, {"message": exc.message}, ()

    def _api(self, github: bool) -> str:
        return f"{self.base_url}{'/github' if github else '/api/v1'}/repos/{self.repository}"

    def _route(self, call: _Call) -> Answer:
        parts = call.parts
        if parts == ["issues"]:
            call.allow("GET", "POST")
            return self._list_issues(call) if call.reading else self._create_issue(call)
        if len(parts) == 2 and parts[0] == "issues":
            call.allow("GET", "PATCH")
            issue = self._issue(parts[1])
            return (200, self._doc(issue, call), ()) if call.reading else self._edit(issue, call)
        if len(parts) == 3 and parts[0] == "issues" and parts[2] == "comments":
            call.allow("GET", "POST")
            issue = self._issue(parts[1])
            if call.reading:
                comments = [self._comment_doc(issue, c, call) for c in issue.comments]
                return call.page(comments, f"{call.api}/issues/{issue.number}/comments")
            return self._comment(issue, call)
        if parts == ["labels"]:
            call.allow("GET", "POST")
            if call.reading:
                return call.page([label.doc(call.api) for label in self.labels], call.api + "/labels")
            return self._create_label(call)
        raise Refused(404, "Not Found")

    def _list_issues(self, call: _Call) -> Answer:
        wanted = call.param("state") or "open"
        if wanted not in ("open", "closed", "all"):
            if call.github:
                raise Refused(422, f"state must be open, closed or all, not {wanted!r}")
            wanted = "open"  # Gitea reads anything else as open
        kind = "" if call.github else call.param("type")
        items = [
            i
            for i in reversed(self.issues)
            if (wanted == "all" or i.state == wanted)
            and not (kind == "issues" and i.pull)
            and not (kind == "pulls" and not i.pull)
            and self._labelled(i, call)
        ]
        return call.page([self._doc(i, call) for i in items], call.api + "/issues")

    def _labelled(self, issue: _Issue, call: _Call) -> bool:
        names = [n for n in call.param("labels").split(",") if n]
        if not names:
            return True
        if call.github:
            return all(n in issue.labels for n in names)
        known = [n for n in names if self._named(n) is not None]
        return not known or any(n in issue.labels for n in known)

    def _create_issue(self, call: _Call) -> Answer:
        doc = call.object()
        title = doc.get("title")
        if not isinstance(title, str) or not title.strip():
            raise Refused(422, "title is required and must be a non-empty string")
        body = doc.get("body") or ""
        if not isinstance(body, str):
            raise Refused(422, "body must be a string")
        labels = doc.get("labels") or []
        if not isinstance(labels, list):
            raise Refused(422, "labels must be an array")
        names = self._github_labels(labels) if call.github else self._gitea_labels(labels)
        issue = self._open(title, body, names, pull=False)
        return 201, self._doc(issue, call), ()

    def _github_labels(self, labels: list[Any]) -> list[str]:
        """GitHub takes label names and creates the missing ones (when the caller may)."""
        names: list[str] = []
        for label in labels:
            name = label.get("name") if isinstance(label, dict) else label
            if not isinstance(name, str) or not name:
                raise Refused(422, f"Invalid request: labels must be names (strings), not {name!r}")
            names.append(name)
        missing = [n for n in names if self._named(n) is None]
        if missing and self.new_label_status is not None:
            raise Refused(self.new_label_status, f"You may not create the label {missing[0]!r} in this repository")
        for name in missing:
            if self._named(name) is None:
                self._label(name)
        return list(dict.fromkeys(names))

    def _gitea_labels(self, labels: list[Any]) -> list[str]:
        """Gitea 1.22 takes label ids; a name does not bind (422)."""
        names = []
        for value in labels:
            if not isinstance(value, int) or isinstance(value, bool):
                raise Refused(
                    422,
                    f"[Labels]: json: cannot unmarshal {type(value).__name__} into Go struct field "
                    "CreateIssueOption.labels of type int64",
                )
            label = next((label for label in self.labels if label.id == value), None)
            if label is None:
                raise Refused(422, f"label does not exist [id: {value}]")
            names.append(label.name)
        return list(dict.fromkeys(names))

    def _edit(self, issue: _Issue, call: _Call) -> Answer:
        doc = call.object()
        for key in ("title", "body"):
            if key in doc and not isinstance(doc[key], str):
                raise Refused(422, f"{key} must be a string")
        state = doc.get("state")
        if state is not None and state not in ("open", "closed"):
            raise Refused(422, f"state must be open or closed, not {state!r}")
        now = time.time()
        if doc.get("title"):
            issue.title = doc["title"]
        if "body" in doc:
            issue.body = doc["body"]
        if state is not None and state != issue.state:
            issue.state, issue.closed = state, (now if state == "closed" else None)
        issue.updated = now
        return (200 if call.github else 201), self._doc(issue, call), ()

    def _comment(self, issue: _Issue, call: _Call) -> Answer:
        body = call.object().get("body")
        if not isinstance(body, str) or not body.strip():
            raise Refused(422, "body is required and must be a non-empty string")
        comment = _Comment(self._next_id(), body, time.time())
        issue.comments.append(comment)
        issue.updated = comment.created
        return 201, self._comment_doc(issue, comment, call), ()

    def _create_label(self, call: _Call) -> Answer:
        doc = call.object()
        name, color = doc.get("name"), doc.get("color")
        if not isinstance(name, str) or not name.strip():
            raise Refused(422, "name is required and must be a non-empty string")
        if color is None and call.github:
            color = NEW_LABEL_COLOR
        if not isinstance(color, str) or not _COLOR.fullmatch(color):
            raise Refused(422, f"color must be 6 hex digits (#rrggbb), not {color!r}")
        if self._named(name) is not None:
            raise Refused(422, f"Validation Failed: a label named {name!r} already_exists")
        if self.new_label_status is not None:
            raise Refused(self.new_label_status, f"You may not create the label {name!r} in this repository")
        description = doc.get("description")
        label = self._label(name, color, description if isinstance(description, str) else "")
        return 201, label.doc(call.api), ()

    # -- shapes ------------------------------------------------------------------------------------

    def _html_url(self, issue: _Issue) -> str:
        return f"{self.base_url}/{self.repository}/{'pulls' if issue.pull else 'issues'}/{issue.number}"

    def _doc(self, issue: _Issue, call: _Call) -> dict[str, Any]:
        url = f"{call.api}/issues/{issue.number}"
        doc: dict[str, Any] = {
            "id": 1000 + issue.number,
            "number": issue.number,
            "title": issue.title,
            "body": issue.body,
            "state": issue.state,
            "labels": [label.doc(call.api) for name in issue.labels if (label := self._named(name)) is not None],
            "comments": len(issue.comments),
            "user": BOT,
            "url": url,
            "html_url": self._html_url(issue),
            "created_at": _stamp(issue.created),
            "updated_at": _stamp(issue.updated),
            "closed_at": _stamp(issue.closed) if issue.closed is not None else None,
        }
        pull = {"url": url.replace("/issues/", "/pulls/"), "html_url": self._html_url(issue), "merged": False}
        if issue.pull:
            doc["pull_request"] = pull
        elif not call.github:
            doc["pull_request"] = None  # Gitea sends the key on every item
        return doc

    def _comment_doc(self, issue: _Issue, comment: _Comment, call: _Call) -> dict[str, Any]:
        return {
            "id": comment.id,
            "body": comment.body,
            "user": BOT,
            "html_url": f"{self._html_url(issue)}#issuecomment-{comment.id}",
            "issue_url": f"{call.api}/issues/{issue.number}",
            "created_at": _stamp(comment.created),
            "updated_at": _stamp(comment.created),
        }


@dataclass
class _Call:
    """One API request: its dialect, method, path under the repository, query and parsed body."""

    github: bool
    method: str
    parts: list[str]
    query: list[tuple[str, str]]
    body: Any
    api: str

    @property
    def reading(self) -> bool:
        return self.method in ("GET", "HEAD")

    def allow(self, *methods: str) -> None:
        if self.method not in (*methods, "HEAD" if "GET" in methods else ""):
            raise Refused(405, f"Method Not Allowed (allowed: {', '.join(methods)})")

    def param(self, name: str) -> str:
        """The last value of a query parameter, "" when absent."""
        values = [value for key, value in self.query if key == name]
        return values[-1] if values else ""

    def object(self) -> dict[str, Any]:
        if not isinstance(self.body, dict):
            raise Refused(400, "Problems parsing JSON: send a JSON object")
        return self.body

    def _number(self, name: str, default: int) -> int:
        text = self.param(name)
        if not text:
            return default
        if not text.isdigit():
            raise Refused(422, f"{name} must be a whole number, not {text!r}")
        return int(text)

    def page(self, items: list[dict[str, Any]], url: str) -> Answer:
        """One page of `items`, with the Link header (and Gitea's X-Total-Count) a forge sends."""
        size_name, (default, maximum) = ("per_page", GITHUB_PAGE) if self.github else ("limit", GITEA_PAGE)
        size = min(self._number(size_name, default) or default, maximum)
        number = max(self._number("page", 1), 1)
        pages = max(1, math.ceil(len(items) / size))
        links = []
        for rel, target in (("next", number + 1), ("last", pages), ("first", 1), ("prev", number - 1)):
            if (rel in ("next", "last") and number < pages) or (rel in ("first", "prev") and 1 < number <= pages + 1):
                query = [(k, v) for k, v in self.query if k != "page"] + [("page", str(target))]
                links.append(f'<{url}?{urlencode(query)}>; rel="{rel}"')
        headers = (f"Link: {', '.join(links)}",) if links else ()
        if not self.github:
            headers = (*headers, f"X-Total-Count: {len(items)}")
        return 200, items[(number - 1) * size : number * size], headers


def phrase(status: int) -> str:
    """The reason phrase of `status`, as a forge's error message."""
    return HTTPStatus(status).phrase
