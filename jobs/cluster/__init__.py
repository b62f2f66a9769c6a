"""Ray plumbing shared by every job: connecting, placing actors, the actor pool, workers.

* :mod:`.runtime` - :class:`ClusterOptions`, connecting (and the multi-node storage rule),
  the CPU-headroom placement rule, node identity;
* :mod:`.actor_pool` - a work queue over actors: retries, dead actors replaced, each item once;
* :mod:`.worker` - what every worker process does first;
* :mod:`.encode_actors`, :mod:`.search_actors`, :mod:`.index_tasks` - the encode, search and
  index workers.
"""

from .runtime import (
    ClusterOptions,
    ClusterResources,
    Placement,
    connect,
    connect_for,
    cpu_share,
    place,
)

__all__ = [
    "ClusterOptions",
    "ClusterResources",
    "Placement",
    "connect",
    "connect_for",
    "cpu_share",
    "place",
]
