"""Ray tasks that fill copies of a trained IVF index with groups of shards (parallel add)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from colbert_core.embeddings import ShardInfo
from colbert_core.index.build import ParallelAdd, add_shards_to_copy

from .runtime import connect, cpu_share

#: A group lost with its worker (killed, out of memory) is added again this many times.
ADD_RETRIES = 2


def ray_parallel_add(embeddings: str, address: str | None) -> ParallelAdd:
    """A :data:`ParallelAdd` running each shard group in its own Ray task (fractional CPU)."""

    def start(trained: bytes, groups: list[list[ShardInfo]]) -> Callable[[], Iterator[bytes]]:
        import ray

        res = connect(address)
        task = ray.remote(num_cpus=cpu_share(res, len(groups)), max_retries=ADD_RETRIES)(
            add_shards_to_copy
        )
        trained_ref = ray.put(trained)
        refs, first = [], 0
        for group in groups:
            refs.append(task.remote(trained_ref, embeddings, group, first))
            first += sum(i.n_tokens for i in group)

        def collect() -> Iterator[bytes]:
            for ref in refs:
                yield ray.get(ref)

        return collect

    return start
