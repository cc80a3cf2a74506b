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
from fleet.tenant import Reply, Tenants
from fleet.vocabulary import State
from verify import verdict
from verify.verdict import Seen

JITTER = 0.2  # polls of one tenant are spaced by (1 - JITTER .. 1) x the poll interval
PROGRESS_EVERY = 10.0


@dataclass
class Fleet:
    """What the poll knows so far; `seen` holds each tenant's latest verdict."""

    slugs: list[str]
    seen: dict[str, Seen]
    polls: int = 0
    done: frozenset[State] = verdict.DONE  # the states that end a tenant's polling

    def waiting(self) -> int:
        return sum(1 for s in self.slugs if s not in self.seen or self.seen[s].state not in self.done)


def poll(
    tenants: Tenants,
    fleet: Fleet,
    expected_sha: str,
    head: str | None = None,
    *,
    timeout: float,
    interval: float,
    concurrency: int,
    progress: Callable[[Fleet, float], None] = lambda fleet, left: None,
) -> Fleet:
    """Poll `fleet.slugs` until every one is done (`fleet.done`) or `timeout` passes, recording each tenant's
    latest verdict in `fleet.seen` as it goes (so a caller stopped part-way still has them). A tenant
    that never answered before the deadline is unreachable."""
    start = time.monotonic()
    deadline = start + timeout
    slugs = fleet.slugs
    urls = {slug: tenants.base(slug) for slug in slugs}  # every URL is checked before the first request
    due = [(start, i, slug) for i, slug in enumerate(slugs)]
    heapq.heapify(due)
    lock = threading.Condition()
    done = threading.Event()
    open_count = [len(slugs)]

    def work() -> None:
        _leave_signals_to_the_main_thread()
        companion = _Companion()
        while not done.is_set():
            with lock:
                while due and due[0][0] > time.monotonic() and not done.is_set():
                    lock.wait(timeout=min(due[0][0] - time.monotonic(), 0.5))
                if not due or done.is_set():
                    return
                _, order, slug = heapq.heappop(due)
            began = time.monotonic()
            try:
                seen = _look(tenants, urls[slug], expected_sha, head, deadline, companion)
            except Exception as exc:  # noqa: BLE001 - one odd answer must not cost a worker
                seen = Seen(State.UNHEALTHY, f"answer could not be judged: {type(exc).__name__}")
            with lock:
                if done.is_set():
                    return  # the poll is over: a late answer changes nothing
                if time.monotonic() <= deadline or slug not in fleet.seen:
                    fleet.seen[slug] = seen
                fleet.polls += 1
                if seen.state in fleet.done:
                    open_count[0] -= 1
                    if open_count[0] == 0:
                        done.set()
                        lock.notify_all()
                else:
                    heapq.heappush(due, (began + interval * random.uniform(1 - JITTER, 1), order, slug))
                    lock.notify()

    workers = [threading.Thread(target=work, daemon=True, name=f"poll-{i}") for i in range(max(1, concurrency))]
    for worker in workers[: max(1, min(concurrency, len(slugs)))]:
        worker.start()
    try:
        next_progress = start + PROGRESS_EVERY
        while slugs and not done.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            done.wait(timeout=min(deadline, next_progress) - now)
            if time.monotonic() >= next_progress and not done.is_set():
                with lock:
                    progress(fleet, max(0.0, deadline - time.monotonic()))
                next_progress += PROGRESS_EVERY
    finally:
        with lock:
            done.set()
            lock.notify_all()
    for slug in slugs:
        fleet.seen.setdefault(slug, Seen(State.UNREACHABLE, "no answer before the deadline"))
    return fleet


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
    tenants: Tenants, base: str, expected_sha: str, head: str | None, deadline: float, companion: _Companion
) -> Seen:
    companion.start(lambda: tenants.get(base + tenants.buildinfo_path, deadline))
    health = tenants.get(base + tenants.healthz_path, deadline)
    return verdict.classify(health, companion.result(), expected_sha, head)
