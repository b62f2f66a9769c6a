"""Connecting to Ray and placing actors: an embedded local cluster by default, an existing
one on request, and the one rule for how much CPU an actor claims."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from colbert_core.config import check_non_negative, check_positive

logger = logging.getLogger(__name__)

#: CPUs left unclaimed by actors, so Ray's own tasks (and the progress tracker) always get
#: scheduled: actors holding every CPU hang Ray silently.
CPU_HEADROOM = 0.5
#: The smallest CPU share an actor claims (Ray needs a positive amount to schedule it).
MIN_ACTOR_CPUS = 0.05


@dataclass(frozen=True)
class ClusterOptions:
    """Where a job runs and how its Ray workers are sized (never part of its output).

    Attributes
    ----------
    ray_address
        Join this cluster (default: ``$RAY_ADDRESS``, else start a local one).
    workers
        Actors (default: one per GPU for GPU work, else one per cluster CPU).
    cpus_per_worker, gpus_per_worker
        Resources each actor claims (default: the CPU-headroom rule; 1 GPU on GPU clusters).
    threads_per_worker
        torch threads per CPU actor (fixed, so results do not depend on ``workers``).
    max_retries
        Retries of a failed work item before the job fails naming it.
    """

    ray_address: str | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    threads_per_worker: int = 1
    max_retries: int = 3

    def __post_init__(self) -> None:
        check_positive(self, "workers", "cpus_per_worker", "threads_per_worker")
        check_non_negative(self, "gpus_per_worker", "max_retries")


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class Placement:
    """How many actors to start and what each claims."""

    workers: int
    num_cpus: float
    num_gpus: float
    torch_threads: int | None
    device: str


def connect(address: str | None = None) -> ClusterResources:
    """Join ``address`` (or ``$RAY_ADDRESS``), reuse a connected session, or start a local
    cluster sized for this machine with the dashboard off.

    Under ``ray job submit`` RAY_ADDRESS is set by Ray, so the same command joins the cluster.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=True)
            logger.info("joined Ray cluster at %s", address)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=True)
            logger.info("started a local Ray cluster (%d CPUs)", os.cpu_count() or 1)
    total = ray.cluster_resources()
    return ClusterResources(cpus=float(total.get("CPU", 0.0)), gpus=float(total.get("GPU", 0.0)))


def cpu_share(res: ClusterResources, actors: int) -> float:
    """CPUs each of ``actors`` CPU actors claims: the cluster's CPUs less the headroom.

    >>> cpu_share(ClusterResources(cpus=2, gpus=0), 2)
    0.75
    """
    return max(MIN_ACTOR_CPUS, (res.cpus - CPU_HEADROOM) / max(1, actors))


def place(options: ClusterOptions, res: ClusterResources, *, use_gpus: bool) -> Placement:
    """Actors for ``options`` on ``res``: one per GPU when ``use_gpus`` and the cluster has
    GPUs (or ``gpus_per_worker`` asks for them), else fractional-CPU actors, one per CPU.
    """
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if use_gpus and res.gpus else 0.0
    if gpus > 0:
        workers = options.workers or max(1, int(res.gpus // gpus))
        cpus = options.cpus_per_worker if options.cpus_per_worker is not None else 1.0
        return Placement(workers, cpus, gpus, None, "cuda")
    # One single-threaded actor per core by default. The thread count is fixed rather than
    # derived from the worker count because oneDNN partitions small GEMMs differently for
    # different thread counts (last-bit differences): fixing it makes results identical
    # whatever the number of workers. One thread per actor is also the most efficient.
    workers = options.workers or max(1, math.floor(res.cpus))
    cpus = options.cpus_per_worker or cpu_share(res, workers)
    return Placement(workers, cpus, 0.0, options.threads_per_worker, "cpu")
