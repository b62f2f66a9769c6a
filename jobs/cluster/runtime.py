"""Connecting to Ray and placing actors: an embedded local cluster by default, an existing
one on request, and the one rule for how much CPU an actor claims."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from colbert_core.config import check_non_negative, check_positive
from colbert_core.storage import require_reachable

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
    shared_fs
        Local paths are on a mount every node sees at the same path (NFS, EFS, Lustre);
        without it a multi-node cluster accepts only ``s3://`` for what workers read or
        write (:func:`colbert_core.storage.require_reachable`).
    """

    ray_address: str | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None
    threads_per_worker: int = 1
    max_retries: int = 3
    shared_fs: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "workers", "cpus_per_worker", "threads_per_worker")
        check_non_negative(self, "gpus_per_worker", "max_retries")


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float
    #: Alive nodes: more than one means remote workers see other disks than the driver.
    nodes: int = 1
    #: CPUs of the largest node: no actor can claim more.
    max_node_cpus: float | None = None
    #: Whether the driver's node offers CPUs or GPUs to workers. A head without any (as
    #: in KubeRay and `ray up` configs) sends every worker to nodes the autoscaler may
    #: not have started yet: local paths are as unreachable as on a multi-node cluster.
    driver_node_hosts_workers: bool = True

    @property
    def workers_may_be_remote(self) -> bool:
        return self.nodes > 1 or not self.driver_node_hosts_workers


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
    alive = [n for n in ray.nodes() if n.get("Alive")]
    here = ray.get_runtime_context().get_node_id()
    mine = next((n["Resources"] for n in alive if n.get("NodeID") == here), {})
    return ClusterResources(
        cpus=float(total.get("CPU", 0.0)),
        gpus=float(total.get("GPU", 0.0)),
        nodes=len(alive),
        max_node_cpus=max((float(n["Resources"].get("CPU", 0.0)) for n in alive), default=None),
        driver_node_hosts_workers=bool(mine.get("CPU") or mine.get("GPU")),
    )


def connect_for(
    address: str | None, paths: dict[str, str | None], *, shared_fs: bool
) -> ClusterResources:
    """:func:`connect`, then refuse local ``paths`` (option -> path) that workers would use
    when they may run on another node than the driver
    (:attr:`ClusterResources.workers_may_be_remote`) and ``shared_fs`` is not declared."""
    res = connect(address)
    require_reachable(paths, nodes=res.nodes, remote=res.workers_may_be_remote, shared_fs=shared_fs)
    if res.nodes > 1:
        logger.info("Ray cluster of %d nodes (%g CPUs, %g GPUs)", res.nodes, res.cpus, res.gpus)
    return res


def node_identity() -> dict[str, str]:
    """The Ray node this process runs on (for per-node counts in job summaries)."""
    import ray

    context = ray.get_runtime_context()
    return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}


def driver_node_affinity() -> Any:
    """A scheduling strategy that keeps a helper actor on the driver's node: it then lives
    as long as the driver, whichever worker node is lost."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def cpu_share(res: ClusterResources, actors: int) -> float:
    """CPUs each of ``actors`` CPU actors claims: the cluster's CPUs less the headroom,
    and never more than the largest node has less the headroom (no node could host it).

    >>> cpu_share(ClusterResources(cpus=2, gpus=0), 2)
    0.75
    >>> cpu_share(ClusterResources(cpus=32, gpus=0, nodes=4, max_node_cpus=8), 2)
    7.5
    """
    share = (res.cpus - CPU_HEADROOM) / max(1, actors)
    if res.max_node_cpus:
        share = min(share, max(res.max_node_cpus - CPU_HEADROOM, MIN_ACTOR_CPUS))
    return max(MIN_ACTOR_CPUS, share)


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
