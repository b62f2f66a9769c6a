"""Ray plumbing shared by every job: connecting, placing actors, the actor pool, workers.

* :mod:`.runtime` - :class:`ClusterOptions`, connecting, the CPU-headroom placement rule;
* :mod:`.actor_pool` - a work queue over actors: retries, dead actors replaced, each item once;
* :mod:`.worker` - what every worker process does first;
* :mod:`.encode_actors`, :mod:`.search_actors`, :mod:`.index_tasks` - the encode, search and
  index workers.
"""

from .runtime import ClusterOptions, ClusterResources, Placement, connect, cpu_share, place

__all__ = ["ClusterOptions", "ClusterResources", "Placement", "connect", "cpu_share", "place"]
