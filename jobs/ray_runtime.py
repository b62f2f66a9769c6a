"""Connecting to Ray: an embedded local cluster by default, an existing one on request."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterResources:
    cpus: float
    gpus: float


def connect(address: str | None = None) -> ClusterResources:
    """Join ``address`` (or ``$RAY_ADDRESS``), reuse a connected session, or start a local
    cluster sized for this machine with the dashboard off.

    Under ``ray job submit`` RAY_ADDRESS is set by Ray, so the same command joins the cluster.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        # Our package must be importable in workers: ship the code only when joining a
        # remote cluster that does not already have it (ray job submit sets working_dir).
        kwargs: dict = {"include_dashboard": False, "log_to_driver": True}
        if address:
            ray.init(
                address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"}
            )
            logger.info("joined Ray cluster at %s", address)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
            logger.info("started a local Ray cluster (%d CPUs)", os.cpu_count() or 1)
    total = ray.cluster_resources()
    return ClusterResources(cpus=float(total.get("CPU", 0.0)), gpus=float(total.get("GPU", 0.0)))
