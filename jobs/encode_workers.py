"""Ray actors that encode shards, and the driver loop that keeps them busy.

Why hand-written actors rather than Ray Data's ``map_batches`` with an actor pool: the job
guarantees that shard ``k`` holds exactly documents ``[k*N, (k+1)*N)``, that each shard is
written once, atomically, and recorded in the manifest only after it is stored, and that a
failed shard is retried a bounded number of times and then named in the error. Ray Data
re-blocks rows freely, retries at the task level without telling us which rows, and writes
output files itself; making it keep those guarantees would mean fighting it. An actor per
GPU (or a fractional-CPU actor per worker) with an explicit work queue keeps them by
construction, and the driver holds at most ``2 x workers`` shards of text at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from colbert_core.encode import EncodeConfig, ShardTask, encode_shard
from colbert_core.shards import ShardInfo

logger = logging.getLogger(__name__)


class ShardFailedError(RuntimeError):
    """A shard kept failing after its retries."""


@dataclass(frozen=True)
class WorkerSpec:
    """How each encoder actor is placed and sized."""

    workers: int
    num_cpus: float
    num_gpus: float
    torch_threads: int | None
    device: str | None
    max_retries: int = 3


class EncoderWorker:
    """Holds one loaded encoder; encodes and stores whole shards."""

    def __init__(
        self,
        config: EncodeConfig,
        device: str | None,
        torch_threads: int | None,
        tracker: Any = None,
    ):
        import torch

        from colbert_core import load_encoder
        from colbert_core.storage import open_storage

        from ._console import quiet_third_party

        quiet_third_party()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.config = config
        self.encoder = load_encoder(config.model, device=device, doc_maxlen=config.doc_maxlen)
        self.storage = open_storage(config.out)
        self.tracker = tracker
        self.stats = {"docs": 0, "tokens": 0, "busy_s": 0.0, "shards": 0}

    def describe(self) -> dict[str, Any]:
        return self.encoder.describe()

    def pid(self) -> int:
        return os.getpid()

    def encode(self, task: ShardTask) -> tuple[ShardInfo, dict[str, Any]]:
        start = time.perf_counter()

        def progress(docs: int, tokens: int) -> None:
            if self.tracker is not None:
                self.tracker.add.remote(docs, tokens)

        info = encode_shard(
            self.encoder,
            self.storage,
            task,
            batch_size=self.config.batch_size,
            progress=progress,
        )
        self.stats["docs"] += info.n_docs
        self.stats["tokens"] += info.n_tokens
        self.stats["busy_s"] += time.perf_counter() - start
        self.stats["shards"] += 1
        return info, {"pid": os.getpid(), **self.stats}


class ProgressTracker:
    """Counts documents and tokens as workers report batches (polled by the driver)."""

    def __init__(self) -> None:
        self.docs = 0
        self.tokens = 0

    def add(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens

    def get(self) -> tuple[int, int]:
        return self.docs, self.tokens

    def reset(self) -> None:
        self.docs = 0
        self.tokens = 0


def run_pool(
    config: EncodeConfig,
    spec: WorkerSpec,
    tasks: Any,
    *,
    on_done: Any,
    on_progress: Any = None,
    describe_check: Any = None,
) -> dict[str, dict[str, Any]]:
    """Encode every task from the iterator ``tasks`` on a pool of actors.

    ``on_done(info)`` is called in the driver for each stored shard (in completion
    order); ``on_progress(docs, tokens)`` with running totals about once a second.
    Returns the last statistics reported by each worker.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

    tracker = ray.remote(num_cpus=0)(ProgressTracker).remote()
    actor_cls = ray.remote(EncoderWorker).options(
        num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_restarts=0, max_task_retries=0
    )

    def new_actor() -> Any:
        return actor_cls.remote(config, spec.device, spec.torch_threads, tracker)

    actors = [new_actor() for _ in range(spec.workers)]
    try:
        descriptions = ray.get([a.describe.remote() for a in actors])
    except RayError as exc:
        raise RuntimeError(f"encoder workers failed to start: {exc}") from exc
    if describe_check is not None:
        for d in descriptions:
            describe_check(d)
    # Two tasks queued per actor: while one encodes, the next is already in its mailbox.
    depth = 2
    load = {a: 0 for a in actors}
    pending: dict[Any, tuple[Any, ShardTask, int, Any]] = {}
    retry: deque[tuple[Any, ShardTask, int]] = deque()
    worker_stats: dict[str, dict[str, Any]] = {}
    exhausted = False
    task_iter = iter(tasks)
    last_poll = 0.0

    def submit(task_ref: Any, task: ShardTask, attempt: int) -> bool:
        free = [a for a in actors if load[a] < depth]
        if not free:
            return False
        actor = min(free, key=lambda a: load[a])
        load[actor] += 1
        pending[actor.encode.remote(task_ref)] = (actor, task, attempt, task_ref)
        return True

    while True:
        while retry and submit(*retry[0]):
            retry.popleft()
        while not exhausted and not retry and any(load[a] < depth for a in actors):
            task = next(task_iter, None)
            if task is None:
                exhausted = True
                break
            submit(ray.put(task), task, 1)
        if not pending and not retry:
            break
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        if on_progress is not None and time.monotonic() - last_poll > 1.0:
            with contextlib.suppress(GetTimeoutError):
                on_progress(*ray.get(tracker.get.remote(), timeout=5))
            last_poll = time.monotonic()
        for ref in ready:
            actor, task, attempt, task_ref = pending.pop(ref)
            try:
                info, stats = ray.get(ref)
            except (RayActorError, RayTaskError, RayError) as exc:
                dead = isinstance(exc, RayActorError)
                if dead:
                    # Its other queued tasks fail too; replace it once, here.
                    if actor in load:
                        del load[actor]
                        actors.remove(actor)
                        ray.kill(actor, no_restart=True)
                        replacement = new_actor()
                        actors.append(replacement)
                        load[replacement] = 0
                elif actor in load:
                    load[actor] -= 1
                if attempt > spec.max_retries:
                    raise ShardFailedError(
                        f"shard {task.shard_id} ({task.name}, documents {task.first_doc}.."
                        f"{task.first_doc + len(task.docs) - 1}) failed {attempt} times; "
                        f"last error: {_short(exc)}"
                    ) from exc
                logger.warning(
                    "shard %s failed on attempt %d (%s); retrying%s",
                    task.name,
                    attempt,
                    _short(exc),
                    " on a new worker" if dead else "",
                )
                retry.append((task_ref, task, attempt + 1))
                continue
            load[actor] -= 1
            worker_stats[str(stats["pid"])] = stats
            on_done(info)
    if on_progress is not None:
        on_progress(*ray.get(tracker.get.remote()))
    for a in actors:
        ray.kill(a, no_restart=True)
    ray.kill(tracker, no_restart=True)
    return worker_stats


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
