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
from collections.abc import Callable, Iterable
from typing import Any

from colbert_core.embeddings import EncodeConfig, ShardInfo, ShardTask, encode_shard
from colbert_core.encoder import EncoderRecord

from .actor_pool import PoolStats, run_items, short
from .hooks import park_point
from .runtime import Placement, driver_node_affinity, node_identity

logger = logging.getLogger(__name__)

#: How long the driver waits for the progress tracker's counts. Progress is reporting,
#: never a reason to fail a job: a late answer is logged and the job carries on.
PROGRESS_TIMEOUT_S = 5.0


class EncoderWorker:
    """Holds one loaded encoder; encodes and stores whole shards.

    Loading happens in :meth:`start`, not ``__init__``: an error raised in a Ray actor's
    constructor reaches the driver only as text, one raised by a method keeps its type,
    so a missing model is reported as the user error it is.
    """

    def __init__(
        self,
        config: EncodeConfig,
        device: str | None,
        torch_threads: int | None,
        tracker: Any = None,
    ):
        self.config = config
        self.device = device
        self.torch_threads = torch_threads
        self.tracker = tracker
        self.encoder: Any = None
        self.stats: dict[str, Any] = {"docs": 0, "tokens": 0, "busy_s": 0.0, "shards": 0}

    def start(self) -> EncoderRecord:
        """Load the encoder (once) and describe it."""
        if self.encoder is None:
            from colbert_core import load_encoder
            from colbert_core.storage import open_storage

            from .worker import start_worker_process

            start_worker_process(self.torch_threads)
            self.encoder = load_encoder(
                self.config.model,
                device=self.device,
                doc_maxlen=self.config.doc_maxlen,
                dtype=self.config.dtype,
            )
            self.storage = open_storage(self.config.out)
            self.stats.update(node_identity())
        return self.encoder.describe()

    def pid(self) -> int:
        return os.getpid()

    def encode(self, task: ShardTask) -> tuple[ShardInfo, dict[str, Any]]:
        self.start()
        park_point("encode-shard")
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


def describe_shard(task: ShardTask) -> str:
    last = task.first_doc + len(task.docs) - 1
    return f"shard {task.shard_id} ({task.name}, documents {task.first_doc}..{last})"


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


def poll_progress(
    tracker: Any,
    on_progress: Callable[[int, int], None] | None,
    timeout_s: float = PROGRESS_TIMEOUT_S,
) -> None:
    """Pass the tracker's counts to ``on_progress``; a slow or lost tracker is logged only."""
    import ray
    from ray.exceptions import RayError

    if on_progress is None:
        return
    try:
        counts = ray.get(tracker.get.remote(), timeout=timeout_s)
    except RayError as exc:  # GetTimeoutError included
        logger.warning("progress not updated (%s); the job carries on", short(exc))
        return
    on_progress(*counts)


def run_pool(
    config: EncodeConfig,
    placement: Placement,
    tasks: Iterable[ShardTask],
    *,
    max_retries: int,
    on_done: Callable[[ShardInfo], None],
    on_progress: Callable[[int, int], None] | None = None,
    on_started: Callable[[EncoderRecord], None] | None = None,
    tracker_cls: type = ProgressTracker,
    progress_timeout_s: float = PROGRESS_TIMEOUT_S,
) -> tuple[dict[str, dict[str, Any]], PoolStats]:
    """Encode every task from the iterator ``tasks`` on a pool of actors.

    ``on_started(record)`` is called with every actor's encoder once all are up;
    ``on_done(info)`` in the driver for each stored shard (in completion order);
    ``on_progress(docs, tokens)`` with running totals about once a second. Returns the
    last statistics reported by each worker, keyed ``<node id prefix>:<pid>``.
    """
    import ray

    # On the driver's node: progress survives the loss of any worker node.
    tracker = ray.remote(num_cpus=0)(tracker_cls).options(
        scheduling_strategy=driver_node_affinity()
    )
    tracker = tracker.remote()
    actor_cls = ray.remote(EncoderWorker).options(
        num_cpus=placement.num_cpus,
        num_gpus=placement.num_gpus,
        max_restarts=0,
        max_task_retries=0,
    )
    worker_stats: dict[str, dict[str, Any]] = {}

    def done(task: ShardTask, result: tuple[ShardInfo, dict[str, Any]]) -> None:
        info, stats = result
        # pids repeat across nodes: the node makes the key unique
        worker_stats[f"{str(stats.get('node_id'))[:12]}:{stats['pid']}"] = stats
        on_done(info)

    try:
        stats = run_items(
            lambda: actor_cls.remote(config, placement.device, placement.torch_threads, tracker),
            placement.workers,
            "encode",
            tasks,
            describe=describe_shard,
            on_result=done,
            max_retries=max_retries,
            on_tick=lambda: poll_progress(tracker, on_progress, progress_timeout_s),
            on_started=on_started or (lambda record: None),
            what="encoder",
        )
        poll_progress(tracker, on_progress, progress_timeout_s)
    finally:
        ray.kill(tracker, no_restart=True)
    return worker_stats, stats
