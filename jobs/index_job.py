"""`colbert-batch index`: train a FAISS index over all token vectors, fill it, validate it."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Iterator

from colbert_core.index import build_index, load_index, resolve_spec
from colbert_core.index.build import add_shards_to_copy
from colbert_core.shards import ShardInfo
from colbert_core.store import EmbeddingStore

from . import ray_runtime
from ._console import progress_bar

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", required=True, help="encode output (folder or s3://)")
    p.add_argument("--out", required=True, help="index folder or s3://bucket/prefix (IDX)")
    p.add_argument("--type", choices=["flat", "ivfpq", "hnsw"], default="ivfpq")
    p.add_argument(
        "--factory",
        default=None,
        help="any FAISS index_factory string (overrides --type), e.g. 'IVF4096,SQ8'",
    )
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default: rule in docs)")
    p.add_argument("--pq-m", type=int, default=None, help="PQ sub-quantizers (default dim/16)")
    p.add_argument("--pq-nbits", type=int, default=None, help="bits per PQ code (default 8)")
    p.add_argument("--hnsw-m", type=int, default=None, help="HNSW neighbours (default 32)")
    p.add_argument("--ef-construction", type=int, default=None, help="HNSW efConstruction")
    p.add_argument("--hnsw-storage", choices=["flat", "sq8"], default="flat")
    p.add_argument(
        "--train-sample", type=int, default=None, help="training vectors (default: rule in docs)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the training sample")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Ray actors filling IVF indices in parallel (1: in this process)",
    )
    p.add_argument("--ray-address", default=None)


def ray_parallel_add(embeddings: str, workers: int, address: str | None):
    """A ParallelAdd running each shard group in its own Ray task (fractional CPU)."""

    def start(trained: bytes, groups: list[list[ShardInfo]]):
        import ray

        res = ray_runtime.connect(address)
        cpus = max(0.05, (res.cpus - 0.5) / max(1, len(groups)))
        task = ray.remote(num_cpus=cpus, max_retries=2)(add_shards_to_copy)
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


def run(args: argparse.Namespace) -> int:
    store = EmbeddingStore(args.embeddings)
    spec = resolve_spec(
        args.type,
        n_tokens=store.n_tokens,
        dim=store.dim,
        factory=args.factory,
        nlist=args.nlist,
        pq_m=args.pq_m,
        pq_nbits=args.pq_nbits,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        hnsw_storage=args.hnsw_storage,
        train_sample=args.train_sample,
        seed=args.seed,
    )
    logger.info(
        "building %s over %d tokens (%d docs, dim %d)",
        spec.factory,
        store.n_tokens,
        store.n_docs,
        store.dim,
    )
    parallel = None
    if args.workers > 1:
        parallel = ray_parallel_add(args.embeddings, args.workers, args.ray_address)
    with progress_bar(store.n_tokens, "index", unit="tok") as bar:

        def progress(stage: str, n: int) -> None:
            bar.set_description(stage)
            bar.update(n)

        meta = build_index(
            args.embeddings,
            args.out,
            spec,
            parallel_add=parallel,
            n_groups=args.workers,
            progress=progress,
        )
    load_index(args.out)  # what we wrote must load and validate
    print(
        json.dumps(
            {
                k: meta[k]
                for k in (
                    "type",
                    "factory",
                    "dim",
                    "n_tokens",
                    "n_docs",
                    "bytes_per_token",
                    "train_s",
                    "add_s",
                    "peak_rss_mb",
                )
            },
            indent=2,
        )
    )
    print(f"index written to {args.out}")
    return 0
