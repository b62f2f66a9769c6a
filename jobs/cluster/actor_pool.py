"""A work queue over Ray actors: bounded retries, dead actors replaced, each item once.

Why not ``ray.util.ActorPool``: it neither replaces a dead actor nor retries its work, and
our jobs promise that every item (a shard, a batch of queries) is processed exactly once
even when an actor's process is killed mid-item, and that an item failing every retry is
named in the error.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from colbert_core.errors import ColbertBatchError

logger = logging.getLogger(__name__)


class ItemFailedError(ColbertBatchError, RuntimeError):
    """An item kept failing after its retries, for a reason the user can act on (a storage
    error, bad input, a worker killed again and again)."""


class WorkerStartError(ColbertBatchError, RuntimeError):
    """Workers could not start (e.g. the model is missing on a node)."""


def cause_of(exc: BaseException) -> BaseException:
    """The exception a Ray task raised, unwrapped from Ray's ``RayTaskError``."""
    return getattr(exc, "cause", None) or exc


def is_user_error(exc: BaseException) -> bool:
    """Whether a failure is the user's to fix: one of ours, or a worker process that died
    (killed, out of memory) rather than a bug in the code it ran."""
    from ray.exceptions import RayActorError

    return isinstance(cause_of(exc), ColbertBatchError) or isinstance(exc, RayActorError)


def started_descriptions(actors: list[Any], what: str) -> list[Any]:
    """Start every actor (``actor.start()``) and return what each describes.

    Raises
    ------
    WorkerStartError
        When a worker failed to start for a reason the user can fix; other failures
        propagate unchanged (a bug shows its traceback).
    """
    import ray
    from ray.exceptions import RayError

    results, failure = [], None
    # One get per actor: every failure is collected (Ray logs uncollected ones as noise).
    for ref in [a.start.remote() for a in actors]:
        try:
            results.append(ray.get(ref))
        except RayError as exc:
            failure = failure or exc
    if failure is None:
        return results
    if is_user_error(failure):
        cause = cause_of(failure)
        # The whole message: it names the file or setting to fix.
        reason = f"{type(cause).__name__}: {cause}" if cause is not failure else short(failure)
        raise WorkerStartError(f"{what} workers failed to start: {reason}") from failure
    raise failure


@dataclass
class PoolStats:
    """What happened in a pool: retried items and replaced (dead) actors."""

    retries: int = 0
    replaced: int = 0


def run_items(
    new_actor: Callable[[], Any],
    n_actors: int,
    method: str,
    items: Iterable[Any],
    *,
    describe: Callable[[Any], str],
    on_result: Callable[[Any, Any], None],
    max_retries: int = 3,
    depth: int = 2,
    on_tick: Callable[[], None] | None = None,
    check_started: Callable[[list[Any]], None] | None = None,
) -> PoolStats:
    """Call ``actor.<method>(item)`` for every item on a pool of ``n_actors`` actors.

    ``on_result(item, result)`` runs in the driver once per item, in completion order.
    A dead actor (killed process, out of memory) is replaced and its items retried; an
    item that raises is retried on the same actor; after ``max_retries`` retries an
    :class:`ItemFailedError` names it (``describe(item)``). ``depth`` items are queued per
    actor so the next is in its mailbox while one runs. ``on_tick`` is called about once a
    second; ``check_started(actors)`` once all actors are up (e.g. to compare the models
    they loaded).
    """
    pool = _Pool(new_actor, method, describe, max_retries, depth)
    try:
        pool.start(n_actors, check_started)
        pool.run(iter(items), on_result, on_tick)
    finally:
        pool.close()
    return pool.stats


class _Pool:
    """The state of :func:`run_items`: actors, their queue depth, items in flight."""

    def __init__(
        self,
        new_actor: Callable[[], Any],
        method: str,
        describe: Callable[[Any], str],
        max_retries: int,
        depth: int,
    ):
        self.new_actor = new_actor
        self.method = method
        self.describe = describe
        self.max_retries = max_retries
        self.depth = depth
        self.load: dict[Any, int] = {}  # actor -> items queued on it
        self.pending: dict[Any, tuple[Any, Any, int, Any]] = {}  # ref -> actor, item, try, arg
        self.retry: deque[tuple[Any, Any, int]] = deque()
        self.stats = PoolStats()

    def start(self, n_actors: int, check_started: Callable[[list[Any]], None] | None) -> None:
        for _ in range(n_actors):
            self.load[self.new_actor()] = 0
        if check_started is not None:
            check_started(list(self.load))

    def run(
        self,
        items: Iterator[Any],
        on_result: Callable[[Any, Any], None],
        on_tick: Callable[[], None] | None,
    ) -> None:
        import ray

        exhausted, last_tick = False, 0.0
        while True:
            while self.retry and self.submit(*self.retry[0]):
                self.retry.popleft()
            while not exhausted and not self.retry and self.has_room():
                item = next(items, None)
                if item is None:
                    exhausted = True
                    break
                self.submit(ray.put(item), item, 1)
            if not self.pending and not self.retry:
                return
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            if on_tick is not None and time.monotonic() - last_tick > 1.0:
                on_tick()
                last_tick = time.monotonic()
            for ref in ready:
                self.collect(ref, on_result)

    def has_room(self) -> bool:
        return any(n < self.depth for n in self.load.values())

    def submit(self, ref: Any, item: Any, attempt: int) -> bool:
        free = [a for a, n in self.load.items() if n < self.depth]
        if not free:
            return False
        actor = min(free, key=lambda a: self.load[a])
        self.load[actor] += 1
        self.pending[getattr(actor, self.method).remote(ref)] = (actor, item, attempt, ref)
        return True

    def collect(self, ref: Any, on_result: Callable[[Any, Any], None]) -> None:
        import ray
        from ray.exceptions import RayError

        actor, item, attempt, item_ref = self.pending.pop(ref)
        try:
            result = ray.get(ref)
        except RayError as exc:
            self.failed(actor, item, attempt, item_ref, exc)
            return
        self.load[actor] -= 1
        on_result(item, result)

    def failed(self, actor: Any, item: Any, attempt: int, item_ref: Any, exc: Exception) -> None:
        import ray
        from ray.exceptions import RayActorError

        dead = isinstance(exc, RayActorError)
        if dead and actor in self.load:
            # Its other queued items fail too; replace it once, here.
            del self.load[actor]
            ray.kill(actor, no_restart=True)
            self.load[self.new_actor()] = 0
            self.stats.replaced += 1
        elif not dead and actor in self.load:
            self.load[actor] -= 1
        if attempt > self.max_retries:
            message = f"{self.describe(item)} failed {attempt} times; last error: "
            if not is_user_error(exc):
                raise RuntimeError(message + short(cause_of(exc))) from exc
            raise ItemFailedError(message + short(cause_of(exc))) from exc
        logger.warning(
            "%s failed on attempt %d (%s); retrying%s",
            self.describe(item),
            attempt,
            short(exc),
            " on a new worker" if dead else "",
        )
        self.stats.retries += 1
        self.retry.append((item_ref, item, attempt + 1))

    def close(self) -> None:
        import ray

        for actor in self.load:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
