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


#: Actors lost one after another before their ``start()`` returned (nodes dying, actors
#: killed while loading): then the job stops, naming the last cause.
MAX_START_LOSSES = 5
#: How long a job waits for all its first actors before it starts with those that are up.
START_GRACE_S = 120.0


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


def start_error(failure: BaseException, what: str) -> BaseException:
    """What to raise for a worker whose ``start()`` failed: a :class:`WorkerStartError`
    with the whole message (it names the file or setting to fix) when the user can fix
    it; otherwise the failure itself (a bug shows its traceback)."""
    if not is_user_error(failure):
        return failure
    cause = cause_of(failure)
    reason = f"{type(cause).__name__}: {cause}" if cause is not failure else short(failure)
    return WorkerStartError(f"{what} workers failed to start: {reason}")


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
    on_started: Callable[[Any], None] | None = None,
    what: str = "pool",
    start_timeout_s: float = 600.0,
) -> PoolStats:
    """Call ``actor.<method>(item)`` for every item on a pool of ``n_actors`` actors.

    ``on_result(item, result)`` runs in the driver once per item, in completion order.
    A dead actor (killed process, out of memory) is replaced and its items retried; an
    item that raises is retried on the same actor; after ``max_retries`` retries an
    :class:`ItemFailedError` names it (``describe(item)``). ``depth`` items are queued per
    actor so the next is in its mailbox while one runs. ``on_tick`` is called about once a
    second.

    With ``on_started``, actors have a ``start()`` method (load the model, the index) whose
    result ``on_started`` checks (e.g. that every actor loaded the same model). An actor
    joins the pool only once its ``start()`` has returned, so actors that wait for room (a
    node was lost and the survivors hold its CPUs, or a node has less room than the share
    asked for) never hold items: the started ones carry on with every item. A ``start()``
    that fails is a :class:`WorkerStartError` naming ``what``; an actor lost before it
    started is replaced, up to :data:`MAX_START_LOSSES` times in a row. If no actor has
    been running for ``start_timeout_s``, the job fails saying so rather than waiting.
    """
    pool = _Pool(new_actor, method, describe, max_retries, depth)
    pool.on_started, pool.what, pool.start_timeout_s = on_started, what, start_timeout_s
    try:
        pool.start(n_actors)
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
        self.starting: dict[Any, Any] = {}  # start() ref -> actor not yet in the pool
        self.stats = PoolStats()
        self.on_started: Callable[[Any], None] | None = None
        self.what = "pool"
        self.start_timeout_s = 600.0
        self.idle_since: float | None = None  # when the pool last had no started actor
        self.start_losses = 0  # actors lost in a row before they started

    def start(self, n_actors: int) -> None:
        """Create the actors and wait until all have started (so the first items spread
        over all of them), or :data:`START_GRACE_S` has passed: actors that cannot be
        placed then join later, if ever, and the others start working."""
        import ray

        for _ in range(n_actors):
            self.add_actor()
        if self.starting:
            refs = list(self.starting)
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=START_GRACE_S)
            for ref in refs:  # in creation order, whatever order they finished in
                if ref in ready:
                    self.joined(ref)

    def add_actor(self) -> None:
        """Create an actor; it joins once started (see :func:`run_items`)."""
        actor = self.new_actor()
        if self.on_started is None:
            self.load[actor] = 0
        else:
            self.starting[actor.start.remote()] = actor

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
            if exhausted and not self.pending and not self.retry:
                return
            self.check_not_stranded()
            waiting = [*self.pending, *self.starting]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0) if waiting else ([], [])
            if not waiting:
                time.sleep(1.0)
            if on_tick is not None and time.monotonic() - last_tick > 1.0:
                on_tick()
                last_tick = time.monotonic()
            for ref in ready:
                if ref in self.starting:
                    self.joined(ref)
                else:
                    self.collect(ref, on_result)

    def joined(self, ref: Any) -> None:
        """An actor's ``start()`` returned: check what it loaded, then give it work."""
        import ray
        from ray.exceptions import RayActorError, RayError

        actor = self.starting.pop(ref)
        try:
            description = ray.get(ref)
        except RayActorError as exc:  # lost before it started (e.g. its node went too)
            self.start_losses += 1
            if self.start_losses > MAX_START_LOSSES:
                raise start_error(exc, self.what) from exc
            logger.warning("a %s worker was lost while starting (%s)", self.what, short(exc))
            self.add_actor()
            return
        except RayError as exc:
            ray.kill(actor, no_restart=True)
            raise start_error(exc, self.what) from exc
        try:
            if self.on_started is not None:
                self.on_started(description)
        except BaseException:
            ray.kill(actor, no_restart=True)
            raise
        self.start_losses = 0
        self.load[actor] = 0

    def check_not_stranded(self) -> None:
        """Fail, rather than wait forever, when every actor is gone and none can start."""
        if self.load:
            self.idle_since = None
            return
        now = time.monotonic()
        self.idle_since = self.idle_since or now
        if now - self.idle_since > self.start_timeout_s:
            raise WorkerStartError(
                f"no {self.what} worker has been running for {self.start_timeout_s:.0f} s: "
                "none could be placed (nodes lost, or no node with the CPU/GPU each asks "
                "for) or each is still loading; add nodes or lower --workers / "
                "--cpus-per-worker"
            )

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
        if actor in self.load:
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
            self.add_actor()
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

        for actor in [*self.load, *self.starting.values()]:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        for ref in self.starting:  # collected, so Ray does not log them as unhandled
            with contextlib.suppress(Exception):
                ray.get(ref, timeout=5)


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
