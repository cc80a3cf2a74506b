"""The forge's API (GitHub or Gitea), for two reads: the head of the branch being deployed, and a
repository Actions variable (the kill switch). Each read has one short deadline and no retry: a read
that fails says why, and the caller decides (not superseded; the switch fails closed).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fleet import contract, http, runner
from fleet.contract import ContractError, show

READ_SECONDS = 5.0
MAX_BODY = 256 * 1024

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

    def _read(self, path: str, what: str, missing_ok: bool = False) -> Any:
        try:
            resp = self._client.request(
                "GET",
                self.api_url + path,
                headers=self._headers,
                deadline=time.monotonic() + READ_SECONDS,
                connect=READ_SECONDS,
                cap=MAX_BODY,
            )
        except http.RequestError as exc:
            raise ForgeError(f"reading {what} failed: {exc.cause}") from None
        if resp.status == 404 and missing_ok:
            return None
        if resp.status != 200:
            hint = " (the api-token lacks permission)" if resp.status in (401, 403) else ""
            raise ForgeError(f"reading {what} answered HTTP {resp.status}{hint}")
        try:
            return contract.parse_json(resp.body, what)
        except ContractError as exc:
            raise ForgeError(runner.scrub(str(exc))) from None


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
