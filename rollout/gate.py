"""What is checked before real calls: the kill switch (the environment's, then the repository
variable's, read again before every real call) and, before the first, whether a newer commit on the
deployed branch has superseded this run. Each way a check ends the rollout is a Stop."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleet.forge import Forge, ForgeError, Where, read_head, same_commit, switch_words, switched_on
from fleet.vocabulary import RolloutVerdict
from rollout.plan import Settings

ENV_SWITCH = "PROD_AUTO_DEPLOY_DISABLED"


@dataclass(frozen=True)
class End:
    """How the rollout ends: its verdict and message; the tenants not yet redeployed keep their old
    build, with `leave` as the reason (by default, the message)."""

    verdict: RolloutVerdict
    message: str
    leave: str = ""
    superseded_by: str = ""  # the run stood down: the deployed branch's newer head (a tenant on it is State.SUPERSEDED)

    @property
    def left(self) -> str:
        return self.leave or f"not attempted: {self.message}"


class Stop(Exception):
    """A check that ends the rollout before a call goes out: raised from that call, it carries the End."""

    def __init__(self, end: End) -> None:
        super().__init__(end.message)
        self.end = end


def check_environment(environ: Mapping[str, str]) -> None:
    """PROD_AUTO_DEPLOY_DISABLED set true means nothing is deployed, not even a dry run is sent."""
    value = environ.get(ENV_SWITCH)
    if switched_on(value):
        assert value is not None
        message = f"{ENV_SWITCH} is {switch_words(value)}: deploying is disabled, nothing was deployed"
        raise Stop(End(RolloutVerdict.HALTED, message))


@dataclass
class Gate:
    forge: Forge  # with no api-url, every read fails: "api-url is empty"
    where: Where
    expected_sha: str | None
    superseded_check: bool
    kill_switch: str  # the variable's name; "" is off
    real_calls: int = 0

    def before_real_call(self, what: str) -> None:
        """Raise Stop when the call must not go out; `what` names it ("the batch 2 call")."""
        if self.kill_switch:
            self._check_switch(what)
        if self.real_calls == 0 and self.superseded_check:
            self._check_head()
        self.real_calls += 1

    def _check_switch(self, what: str) -> None:
        name = self.kill_switch
        try:
            value = self.forge.variable(self.where, name)
        except ForgeError as exc:
            message = (
                f"halted before {what}: could not read the kill switch variable {name} ({exc}); the api-token "
                "needs permission to read Actions variables (on GitHub, a token other than github.token)"
            )
            raise Stop(End(RolloutVerdict.HALTED, message)) from None
        if switched_on(value):
            assert value is not None
            message = f"halted before {what}: the kill switch variable {name} is {switch_words(value)}"
            raise Stop(End(RolloutVerdict.HALTED, message))

    def _check_head(self) -> None:
        head = read_head(self.forge, self.where, self.expected_sha, "superseded-check")
        if head and self.expected_sha and not same_commit(head, self.expected_sha):
            message = (
                f"superseded: {self.where.branch} now points at {head[:12]}, not {self.expected_sha[:12]}; "
                "this run deployed nothing and stands down, the run for the newer commit deploys"
            )
            raise Stop(End(RolloutVerdict.SUPERSEDED, message, superseded_by=head))


def gate_for(settings: Settings, api_token: str, environ: Mapping[str, str]) -> Gate:
    forge = Forge(settings.api_url, api_token, allow_http=settings.allow_http, ca_bundle=settings.ca_bundle)
    return Gate(
        forge,
        Where.from_environment(environ),
        settings.expected_sha,
        settings.superseded_check,
        settings.kill_switch_variable,
    )
