"""`colbert-batch index`: train a FAISS index over all token vectors, fill it, validate it."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any

from colbert_core.config import check_positive
from colbert_core.embeddings import Embeddings
from colbert_core.index import IndexConfig, IndexMeta, build_index, load_index

from ..cluster import connect_for
from ..cluster.index_tasks import RayParallelAdd
from ..console import print_json, progress_bar
from .encode import add_shared_fs_argument

logger = logging.getLogger(__name__)

HELP = "build a FAISS index over the token embeddings"


@dataclass(frozen=True)
class Config:
    """An index job: the source, the target, the index options, parallelism."""

    embeddings: str
    out: str
    index: IndexConfig = field(default_factory=IndexConfig)
    workers: int = 1
    ray_address: str | None = None
    shared_fs: bool = False

    def __post_init__(self) -> None:
        check_positive(self, "workers")


@dataclass(frozen=True)
class Built:
    """What an index job made: the index's meta and, for a parallel add, where its
    groups ran (node id -> ip and group count)."""

    meta: IndexMeta
    groups_per_node: dict[str, dict[str, Any]] = field(default_factory=dict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", required=True, help="encode output (folder or s3://)")
    p.add_argument("--out", required=True, help="index folder or s3://bucket/prefix (IDX)")
    p.add_argument("--type", choices=["flat", "ivfpq", "hnsw"], help="index type (ivfpq)")
    p.add_argument(
        "--factory", help="any FAISS index_factory string (overrides --type), e.g. 'IVF4096,SQ8'"
    )
    p.add_argument("--nlist", type=int, help="IVF lists (default: rule in docs)")
    p.add_argument("--pq-m", type=int, help="PQ sub-quantizers (default dim/16)")
    p.add_argument("--pq-nbits", type=int, help="bits per PQ code (default 8)")
    p.add_argument("--hnsw-m", type=int, help="HNSW neighbours (default 32)")
    p.add_argument("--ef-construction", type=int, help="HNSW efConstruction (default 80)")
    p.add_argument("--hnsw-storage", choices=["flat", "sq8"], help="HNSW vector storage (flat)")
    p.add_argument("--train-sample", type=int, help="training vectors (default: rule in docs)")
    p.add_argument("--seed", type=int, help="seed of the training sample (0)")
    p.add_argument(
        "--store",
        help="token store for exact MaxSim: float16 (default), residual:B (ColBERTv2's "
        "codec, B in 1/2/4 bits per dimension, dim*B/8+4 bytes/token) or pq:M (the residual "
        "product-quantised in M bytes, M dividing dim, M+4 bytes/token)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="Ray tasks filling IVF indices in parallel (default 1: in this process)",
    )
    p.add_argument("--ray-address", help="join this Ray cluster for --workers > 1")
    add_shared_fs_argument(p)


def run(config: Config) -> Built:
    """Build the index, then load what was written (it must validate)."""
    parallel = None
    if config.workers > 1:
        # Ray tasks on any node read the shards: they must be reachable from all of them.
        connect_for(
            config.ray_address, {"--embeddings": config.embeddings}, shared_fs=config.shared_fs
        )
        parallel = RayParallelAdd(config.embeddings, config.ray_address)
    store = Embeddings(config.embeddings)
    spec = config.index.resolve(n_tokens=store.n_tokens, dim=store.dim)
    logger.info(
        "building %s over %d tokens (%d docs, dim %d)",
        spec.factory,
        store.n_tokens,
        store.n_docs,
        store.dim,
    )
    with progress_bar(store.n_tokens, "index", unit="tok") as bar:

        def progress(stage: str, n: int) -> None:
            bar.set_description(stage)
            bar.update(n)

        meta = build_index(
            config.embeddings,
            config.out,
            spec,
            parallel_add=parallel,
            n_groups=config.workers,
            progress=progress,
            build=config.index.to_dict(),
            token_store=config.index.store_spec,
        )
    load_index(config.out)  # what we wrote must load and validate
    return Built(meta, parallel.groups_per_node if parallel is not None else {})


def report(config: Config, built: Built) -> None:
    summary = built.meta.to_dict()
    keys = ("type", "factory", "store", "dim", "n_tokens", "n_docs", "bytes_per_token", "train_s")
    shown = {k: summary[k] for k in (*keys, "add_s", "peak_rss_mb")}
    if built.groups_per_node:
        shown["parallel_add_nodes"] = built.groups_per_node
    print_json(shown)
    print(f"index written to {config.out}")
