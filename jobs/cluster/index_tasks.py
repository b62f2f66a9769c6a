"""Ray tasks that fill copies of a trained IVF index with groups of shards (parallel add)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from colbert_core.embeddings import ShardInfo
from colbert_core.index.build import add_shards_to_copy

from .hooks import park_point
from .runtime import connect, cpu_share, node_identity

#: A group lost with its worker (killed, out of memory, its node gone) is added again this
#: many times; Ray re-runs the task on a surviving node.
ADD_RETRIES = 2


def add_group(
    trained: bytes, root: str, infos: list[ShardInfo], first_token: int
) -> tuple[bytes, dict[str, str]]:
    """One parallel-add task: the partial index and the node that built it."""
    park_point("index-add-group")
    return add_shards_to_copy(trained, root, infos, first_token), node_identity()


class RayParallelAdd:
    """A :data:`~colbert_core.index.build.ParallelAdd` running each shard group in its own
    Ray task (fractional CPU); once collected, :attr:`groups_per_node` says where they ran."""

    def __init__(self, embeddings: str, address: str | None):
        self.embeddings = embeddings
        self.address = address
        self.groups_per_node: dict[str, dict[str, Any]] = {}

    def __call__(
        self, trained: bytes, groups: list[list[ShardInfo]]
    ) -> Callable[[], Iterator[bytes]]:
        import ray

        res = connect(self.address)
        task = ray.remote(num_cpus=cpu_share(res, len(groups)), max_retries=ADD_RETRIES)(add_group)
        trained_ref = ray.put(trained)
        refs, first = [], 0
        for group in groups:
            refs.append(task.remote(trained_ref, self.embeddings, group, first))
            first += sum(i.n_tokens for i in group)

        def collect() -> Iterator[bytes]:
            for ref in refs:
                partial, node = ray.get(ref)
                entry = self.groups_per_node.setdefault(
                    node["node_id"], {"node_ip": node["node_ip"], "groups": 0}
                )
                entry["groups"] += 1
                yield partial

        return collect
