"""Ray tasks of a scaling study: the exact references and one task per grid point.

Each task runs in a fresh worker process (``max_calls=1``): its peak RSS is its own, and
the memory a point held is returned to the node before the next starts. A point declares
the memory its prediction says it needs (``memory=``), so Ray places it only where that
fits; the planner never submits one no node could hold. Points run one at a time, with
every CPU the largest node offers less the headroom: timings are not shared with a
neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from colbert_core.study.plan import PlannedPoint
from colbert_core.study.points import BASE_BYTES, QueryBundle, run_point
from colbert_core.study.results import ResultRow
from colbert_core.study.sizes import Reference, SourceSpec, compute_references

from .hooks import park_point
from .runtime import ClusterResources, cpu_share
from .worker import start_worker_process


def _threads(num_cpus: float) -> int:
    return max(1, math.ceil(num_cpus))


def point_task(
    source: SourceSpec,
    planned: PlannedPoint,
    queries: QueryBundle,
    reference: Reference | None,
    threads: int,
) -> list[ResultRow]:
    """Build the point's index and measure its settings (in a fresh worker process)."""
    import faiss

    start_worker_process(threads)
    faiss.omp_set_num_threads(threads)
    park_point("study-point-task")
    return run_point(source.open(), planned.point, queries, reference)


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
        self, planned: PlannedPoint, queries_ref: Any, reference: Reference | None
    ) -> list[ResultRow]:
        import ray

        task = ray.remote(
            num_cpus=self.num_cpus,
            memory=planned.point.predicted_bytes,
            max_calls=1,
            max_retries=0,
        )(point_task)
        return ray.get(task.remote(planned.source, planned, queries_ref, reference, self.threads))

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
