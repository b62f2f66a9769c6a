"""Ray tasks of a scaling study: the exact references and one task per grid point.

Each task runs in a fresh worker process (``max_calls=1``): its peak RSS is its own, and
the memory a point held is returned to the node before the next starts. A point declares
the memory its prediction says it needs (``memory=``), so Ray places it only where that
fits; the planner never submits one no node could hold. Points run one at a time, with
every CPU the largest node offers less the headroom: timings are not shared with a
neighbour.

A point can take hours (the 1M-document build here: 34 min of training, 74 of adding), so it
reports its stages and the tokens it has added: the task leaves them, batched, in a small
:class:`ProgressBox` actor that the driver empties while it waits (bars and log lines).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from colbert_core.study.plan import PlannedPoint
from colbert_core.study.points import BASE_BYTES, QueryBundle, run_point
from colbert_core.study.results import ResultRow
from colbert_core.study.sizes import Reference, SourceSpec, compute_references

from .encode_actors import poll_progress
from .hooks import park_point
from .runtime import ClusterResources, cpu_share, driver_node_affinity
from .worker import start_worker_process


def _threads(num_cpus: float) -> int:
    return max(1, math.ceil(num_cpus))


class ProgressBox:
    """Progress events ``(stage, n)`` a point task leaves for the driver (a Ray actor)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, int]] = []

    def put(self, events: list[tuple[str, int]]) -> None:
        self._events.extend(events)

    def get(self) -> tuple[tuple[str, int], ...]:
        """The events since the last call (``encode_actors.poll_progress`` passes them on)."""
        events, self._events = tuple(self._events), []
        return events


class _Forward:
    """``progress(stage, n)`` for a task: events go to the box in batches, at most one call
    a second, except that a new stage (``n == 0``) goes at once."""

    def __init__(self, box: Any):
        self.box = box
        self.pending: list[tuple[str, int]] = []
        self.last = 0.0

    def __call__(self, stage: str, n: int) -> None:
        self.pending.append((stage, n))
        if n == 0 or time.monotonic() - self.last >= 1.0:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.box.put.remote(self.pending)
            self.pending = []
            self.last = time.monotonic()


def point_task(
    source: SourceSpec,
    planned: PlannedPoint,
    queries: QueryBundle,
    reference: Reference | None,
    threads: int,
    box: Any = None,
) -> list[ResultRow]:
    """Build the point's index and measure its settings (in a fresh worker process)."""
    import faiss

    start_worker_process(threads)
    faiss.omp_set_num_threads(threads)
    park_point("study-point-task")
    forward = _Forward(box) if box is not None else None
    try:
        return run_point(source.open(), planned.point, queries, reference, forward)
    finally:
        if forward is not None:
            forward.flush()


def references_task(
    largest: SourceSpec,
    sizes: Sequence[SourceSpec],
    query_ids: list[str],
    vectors: list[np.ndarray],
    k: int,
    memory_budget_bytes: int,
    threads: int,
) -> list[Reference]:
    """The exact references of ``sizes`` in one pass over ``largest``."""
    start_worker_process(threads)
    views = {s.size_docs: s.open() for s in sizes}
    return compute_references(
        largest.open(), views, query_ids, vectors, k=k, memory_budget_bytes=memory_budget_bytes
    )


class StudyTasks:
    """Submits the study's tasks to the connected cluster, one at a time."""

    def __init__(self, res: ClusterResources):
        self.num_cpus = cpu_share(res, 1)
        self.threads = _threads(self.num_cpus)

    def point(
        self,
        planned: PlannedPoint,
        queries_ref: Any,
        reference: Reference | None,
        progress: Callable[[str, int], None] | None = None,
    ) -> list[ResultRow]:
        """Run one point; ``progress(stage, n)`` hears its stages while the driver waits."""
        import ray

        task = ray.remote(
            num_cpus=self.num_cpus,
            memory=planned.point.predicted_bytes,
            max_calls=1,
            max_retries=0,
        )(point_task)
        args = (planned.source, planned, queries_ref, reference, self.threads)
        if progress is None:
            return ray.get(task.remote(*args))
        # As the encode job's tracker: on the driver's node, polled with a timeout.
        box = (
            ray.remote(num_cpus=0)(ProgressBox)
            .options(scheduling_strategy=driver_node_affinity())
            .remote()
        )

        def replay(*events: tuple[str, int]) -> None:
            for stage, n in events:
                progress(stage, n)

        try:
            ref = task.remote(*args, box)
            done: list[Any] = []
            while not done:
                done, _ = ray.wait([ref], timeout=1.0)
                poll_progress(box, replay)
            return ray.get(ref)
        finally:
            ray.kill(box, no_restart=True)

    def references(
        self,
        largest: SourceSpec,
        sizes: Sequence[SourceSpec],
        query_ids: list[str],
        vectors: list[np.ndarray],
        k: int,
        memory_budget_bytes: int,
    ) -> list[Reference]:
        import ray

        task = ray.remote(
            num_cpus=self.num_cpus, memory=memory_budget_bytes + BASE_BYTES, max_calls=1
        )(references_task)
        return ray.get(
            task.remote(
                largest, list(sizes), query_ids, vectors, k, memory_budget_bytes, self.threads
            )
        )


def node_memory_bytes() -> float:
    """The Ray ``memory`` resource of the largest alive node (what one task can claim)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    return max((float(n["Resources"].get("memory", 0.0)) for n in alive), default=0.0)
