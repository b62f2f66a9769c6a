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
from collections.abc import Callable, Iterable
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
        raise WorkerStartError(
            f"{what} workers failed to start: {short(cause_of(failure))}"
        ) from failure
    raise failure


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
) -> None:
    """Call ``actor.<method>(item)`` for every item on a pool of ``n_actors`` actors.

    ``on_result(item, result)`` runs in the driver once per item, in completion order.
    A dead actor (killed process, out of memory) is replaced and its items retried; an
    item that raises is retried on the same actor; after ``max_retries`` retries an
    :class:`ItemFailedError` names it (``describe(item)``). ``depth`` items are queued per
    actor so the next is in its mailbox while one runs. ``on_tick`` is called about once a
    second; ``check_started(actors)`` once all actors are up (e.g. to compare the models
    they loaded).
    """
    import ray
    from ray.exceptions import RayActorError, RayError

    actors = [new_actor() for _ in range(n_actors)]
    if check_started is not None:
        check_started(actors)
    load = {a: 0 for a in actors}
    pending: dict[Any, tuple[Any, Any, int, Any]] = {}
    retry: deque[tuple[Any, Any, int]] = deque()
    item_iter = iter(items)
    exhausted = False
    last_tick = 0.0

    def submit(ref: Any, item: Any, attempt: int) -> bool:
        free = [a for a in actors if load[a] < depth]
        if not free:
            return False
        actor = min(free, key=lambda a: load[a])
        load[actor] += 1
        pending[getattr(actor, method).remote(ref)] = (actor, item, attempt, ref)
        return True

    try:
        while True:
            while retry and submit(*retry[0]):
                retry.popleft()
            while not exhausted and not retry and any(load[a] < depth for a in actors):
                item = next(item_iter, None)
                if item is None:
                    exhausted = True
                    break
                submit(ray.put(item), item, 1)
            if not pending and not retry:
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if on_tick is not None and time.monotonic() - last_tick > 1.0:
                on_tick()
                last_tick = time.monotonic()
            for ref in ready:
                actor, item, attempt, item_ref = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except RayError as exc:
                    dead = isinstance(exc, RayActorError)
                    if dead and actor in load:
                        # Its other queued items fail too; replace it once, here.
                        del load[actor]
                        actors.remove(actor)
                        ray.kill(actor, no_restart=True)
                        replacement = new_actor()
                        actors.append(replacement)
                        load[replacement] = 0
                    elif not dead and actor in load:
                        load[actor] -= 1
                    if attempt > max_retries:
                        message = f"{describe(item)} failed {attempt} times; last error: "
                        if not is_user_error(exc):
                            raise RuntimeError(message + short(cause_of(exc))) from exc
                        raise ItemFailedError(message + short(cause_of(exc))) from exc
                    logger.warning(
                        "%s failed on attempt %d (%s); retrying%s",
                        describe(item),
                        attempt,
                        short(exc),
                        " on a new worker" if dead else "",
                    )
                    retry.append((item_ref, item, attempt + 1))
                    continue
                load[actor] -= 1
                on_result(item, result)
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)


def short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
