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

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from colbert_core.encode import EncodeConfig, ShardTask, encode_shard
from colbert_core.shards import ShardInfo

from .actor_pool import run_items, short

logger = logging.getLogger(__name__)


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
        self.encoder = load_encoder(
            config.model, device=device, doc_maxlen=config.doc_maxlen, dtype=config.dtype
        )
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
    from ray.exceptions import RayError

    tracker = ray.remote(num_cpus=0)(ProgressTracker).remote()
    actor_cls = ray.remote(EncoderWorker).options(
        num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_restarts=0, max_task_retries=0
    )
    worker_stats: dict[str, dict[str, Any]] = {}

    def started(actors: list[Any]) -> None:
        try:
            descriptions = ray.get([a.describe.remote() for a in actors])
        except RayError as exc:
            raise RuntimeError(f"encoder workers failed to start: {short(exc)}") from exc
        if describe_check is not None:
            for d in descriptions:
                describe_check(d)

    def done(task: ShardTask, result: tuple[ShardInfo, dict[str, Any]]) -> None:
        info, stats = result
        worker_stats[str(stats["pid"])] = stats
        on_done(info)

    def tick() -> None:
        if on_progress is not None:
            on_progress(*ray.get(tracker.get.remote(), timeout=5))

    try:
        run_items(
            lambda: actor_cls.remote(config, spec.device, spec.torch_threads, tracker),
            spec.workers,
            "encode",
            tasks,
            describe=lambda t: (
                f"shard {t.shard_id} ({t.name}, documents {t.first_doc}.."
                f"{t.first_doc + len(t.docs) - 1})"
            ),
            on_result=done,
            max_retries=spec.max_retries,
            on_tick=tick,
            check_started=started,
        )
        tick()
    finally:
        ray.kill(tracker, no_restart=True)
    return worker_stats
