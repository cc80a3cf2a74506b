"""Polling the fleet: `concurrency` workers share one connection pool and a queue ordered by when each
tenant is next due. A tenant is done once its verdict is final (verified or superseded; in a survey, any
answer); the poll ends when all are, or at the deadline."""

from __future__ import annotations

import heapq
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet import runner
from fleet.tenant import Reply, TenantClient
from fleet.vocabulary import State
from verify import verdict
from verify.verdict import Seen

JITTER = 0.2  # polls of one tenant are spaced by (1 - JITTER .. 1) x the poll interval
PROGRESS_EVERY = 10.0


@dataclass
class PollState:
    """What the poll knows so far; `seen` holds each tenant's latest verdict."""

    slugs: list[str]
    seen: dict[str, Seen]
    polls: int = 0
    done: frozenset[State] = verdict.DONE  # the states that end a tenant's polling

    def waiting(self) -> int:
        return sum(1 for s in self.slugs if s not in self.seen or self.seen[s].state not in self.done)


def poll(
    client: TenantClient,
    state: PollState,
    expected_sha: str,
    head: str | None = None,
    *,
    timeout: float,
    interval: float,
    concurrency: int,
    progress: Callable[[PollState, float], None] = lambda state, left: None,
) -> PollState:
    """Poll `state.slugs` until every one is done (`state.done`) or `timeout` passes, recording each tenant's
    latest verdict in `state.seen` as it goes (so a caller stopped part-way still has them). A tenant
    that never answered before the deadline is unreachable."""
    start = time.monotonic()
    round_ = _Round(client, state, expected_sha, head, start + timeout, interval)
    workers = [threading.Thread(target=round_.work, daemon=True, name=f"poll-{i}") for i in range(max(1, concurrency))]
    for worker in workers[: max(1, min(concurrency, len(state.slugs)))]:
        worker.start()
    try:
        round_.watch(start, progress)
    finally:
        round_.end()
    for slug in state.slugs:
        state.seen.setdefault(slug, Seen(State.UNREACHABLE, "no answer before the deadline"))
    return state


class _Round:
    """One poll of the fleet: a queue of tenants ordered by when each is next due, shared by the workers
    under one lock, until every tenant is done or the deadline passes."""

    def __init__(
        self,
        client: TenantClient,
        state: PollState,
        expected_sha: str,
        head: str | None,
        deadline: float,
        interval: float,
    ) -> None:
        self.client, self.state, self.expected_sha, self.head = client, state, expected_sha, head
        self.deadline, self.interval = deadline, interval
        self.urls = {slug: client.base(slug) for slug in state.slugs}  # every URL is checked before the first request
        start = time.monotonic()
        self.due = [(start, i, slug) for i, slug in enumerate(state.slugs)]
        heapq.heapify(self.due)
        self.lock = threading.Condition()
        self.done = threading.Event()
        self.open = len(state.slugs)

    def work(self) -> None:
        _leave_signals_to_the_main_thread()
        companion = _Companion()
        while not self.done.is_set():
            taken = self.take()
            if taken is None:
                return
            order, slug = taken
            began = time.monotonic()
            try:
                seen = _look(self.client, self.urls[slug], self.expected_sha, self.head, self.deadline, companion)
            except Exception as exc:  # noqa: BLE001 - one odd answer must not cost a worker
                seen = Seen(State.UNHEALTHY, f"answer could not be judged: {type(exc).__name__}")
            if not self.record(slug, order, seen, began):
                return

    def take(self) -> tuple[int, str] | None:
        """The next tenant due, once it is due; None when the poll is over."""
        with self.lock:
            while self.due and self.due[0][0] > time.monotonic() and not self.done.is_set():
                self.lock.wait(timeout=min(self.due[0][0] - time.monotonic(), 0.5))
            if not self.due or self.done.is_set():
                return None
            _, order, slug = heapq.heappop(self.due)
            return order, slug

    def record(self, slug: str, order: int, seen: Seen, began: float) -> bool:
        """Keep a tenant's verdict and queue it again unless it is done; False when the poll is over."""
        state = self.state
        with self.lock:
            if self.done.is_set():
                return False  # the poll is over: a late answer changes nothing
            if time.monotonic() <= self.deadline or slug not in state.seen:
                state.seen[slug] = seen
            state.polls += 1
            if seen.state not in state.done:
                heapq.heappush(self.due, (began + self.interval * random.uniform(1 - JITTER, 1), order, slug))
                self.lock.notify()
                return True
            self.open -= 1
            if self.open == 0:
                self.done.set()
                self.lock.notify_all()
            return True

    def watch(self, start: float, progress: Callable[[PollState, float], None]) -> None:
        """Wait for the end of the poll in the main thread, which a signal interrupts at once, telling
        progress every PROGRESS_EVERY seconds."""
        next_progress = start + PROGRESS_EVERY
        while self.state.slugs and not self.done.is_set():
            now = time.monotonic()
            if now >= self.deadline:
                break
            self.done.wait(timeout=min(self.deadline, next_progress) - now)
            if time.monotonic() >= next_progress and not self.done.is_set():
                with self.lock:
                    progress(self.state, max(0.0, self.deadline - time.monotonic()))
                next_progress += PROGRESS_EVERY

    def end(self) -> None:
        with self.lock:
            self.done.set()
            self.lock.notify_all()


def _leave_signals_to_the_main_thread() -> None:
    """Block the runner's stop signals in this thread (and the threads it starts): the kernel then
    hands them to the main thread, whose wait they interrupt at once. Caught by a worker, a signal's
    handler would wait until the main thread's wait timed out."""
    signal.pthread_sigmask(signal.SIG_BLOCK, runner.STOP_SIGNALS)


class _Companion:
    """A second thread per worker, so a tenant's healthz and buildinfo are fetched side by side."""

    def __init__(self) -> None:
        self._inbox: queue.SimpleQueue[Callable[[], Reply]] = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue[Reply] = queue.SimpleQueue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            job = self._inbox.get()
            self._outbox.put(job())

    def start(self, job: Callable[[], Reply]) -> None:
        self._inbox.put(job)

    def result(self) -> Reply:
        return self._outbox.get()


def _look(
    client: TenantClient, base: str, expected_sha: str, head: str | None, deadline: float, companion: _Companion
) -> Seen:
    companion.start(lambda: client.get(base + client.buildinfo_path, deadline))
    health = client.get(base + client.healthz_path, deadline)
    return verdict.classify(health, companion.result(), expected_sha, head)
