"""`colbert-batch search`: exact MaxSim over an encode output, or an index on Ray actors."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from colbert_core.config import check_positive
from colbert_core.data import LoadedQueries, QuerySet
from colbert_core.embeddings import Embeddings
from colbert_core.errors import ConfigError
from colbert_core.evaluation import (
    RunMetrics,
    candidate_recall,
    latency_percentiles,
    parse_measures,
    write_run_folder,
)
from colbert_core.index import IndexMeta, read_index_mapping, read_index_meta_with_sha256
from colbert_core.search import (
    Ranked,
    SearchParams,
    default_params,
    empty_queries,
    encode_queries,
    exact_search,
    load_query_encoder,
    ranked_list,
    report_queries,
)
from colbert_core.tokenstore.store import store_label

from ..cluster import ClusterOptions, connect_for, place
from ..cluster.search_actors import PoolResult, search_with_pool
from ..console import progress_bar
from .encode import add_shared_fs_argument
from .evaluate import print_metrics

logger = logging.getLogger(__name__)

HELP = "search encoded documents and evaluate the run"


@dataclass(frozen=True)
class Config:
    """A search run: what to search, which queries, how, and where the run folder goes."""

    out: str
    query_set: QuerySet
    exact: bool = False
    embeddings: str | None = None
    index: str | None = None
    model: str | None = None
    measures: tuple[str, ...] = ()
    params: SearchParams = field(default_factory=SearchParams)
    memory_budget_mb: int = 512
    query_batch_size: int = 32
    cluster: ClusterOptions = field(default_factory=ClusterOptions)

    def __post_init__(self) -> None:
        check_positive(self, "memory_budget_mb", "query_batch_size")
        if self.exact == bool(self.index) or (self.exact and not self.embeddings):
            raise ConfigError("use either --exact --embeddings ROOT or --index IDX")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exact", action="store_true", help="exhaustive MaxSim over every document")
    p.add_argument("--embeddings", help="encode output (ROOT) for --exact")
    p.add_argument("--index", help="index folder or s3:// (IDX) for ANN search")
    add_query_arguments(p)
    p.add_argument("--out", required=True, help="run folder or s3:// prefix (RUNDIR)")
    p.add_argument("--k", type=int, help="results per query (100)")
    p.add_argument(
        "--k-prime", type=int, help="tokens retrieved per query token (candidate generation, 64)"
    )
    p.add_argument(
        "--max-candidates", type=int, help="documents kept for exact MaxSim per query (256)"
    )
    p.add_argument("--nprobe", type=int, help="IVF lists probed (default nlist/512)")
    p.add_argument("--ef-search", type=int, help="HNSW efSearch (default max(64, 2k'))")
    p.add_argument(
        "--full-scores",
        type=int,
        help="residual and pq stores (ignored on float16): score exactly only the best "
        "candidates by centroid MaxSim "
        "(at least --k; default: all)",
    )
    p.add_argument(
        "--workers", type=int, help="Ray search actors for --index (default: one per CPU)"
    )
    p.add_argument("--threads-per-worker", type=int, help="torch threads per search actor (1)")
    p.add_argument("--query-batch-size", type=int, help="queries per batch sent to an actor (32)")
    p.add_argument("--max-retries", type=int, help="retries of a failed query batch (3)")
    p.add_argument(
        "--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local one)"
    )
    p.add_argument(
        "--memory-budget-mb", type=int, help="bound of the similarity block in memory (512)"
    )
    add_shared_fs_argument(p)


def add_query_arguments(p: argparse.ArgumentParser) -> None:
    """Queries, qrels and measures: shared by search, rerank and bm25."""
    p.add_argument(
        "--queries", required=True, help="BEIR folder, beir:<name>, irds:<id>, or a queries file"
    )
    p.add_argument(
        "--qrels", help="qrels source (default: the queries source when it is a dataset)"
    )
    p.add_argument("--split", help="qrels split of a BEIR folder (test)")
    p.add_argument("--model", help="checkpoint to encode queries with (default: the recorded one)")
    p.add_argument("--measures", nargs="*", help="extra ir_measures measures, e.g. P@5 AP")
    p.add_argument(
        "--on-bad-record", choices=["error", "skip"], help="for malformed query records (error)"
    )


def run_params(config: Config, meta: IndexMeta | None = None) -> dict[str, Any]:
    """The settings a run folder records and is reused for (``meta`` for index search)."""
    common = {"measures": list(config.measures), **config.query_set.params()}
    if config.exact:
        return {"mode": "exact", "k": config.params.k, "embeddings": config.embeddings, **common}
    if meta is None:
        raise ValueError("index search parameters need the index's meta.json")
    resolved = dataclasses.asdict(default_params(meta, config.params))
    mode = {"mode": "index", "index": config.index, "type": meta.type, "factory": meta.factory}
    mode["store"] = store_label(meta.store)
    return mode | resolved | common


def run(config: Config) -> RunMetrics:
    """Search, write the run folder, evaluate; returns what ``metrics.json`` holds."""
    parse_measures(config.measures)  # a bad measure name fails before any work
    loaded = config.query_set.load()
    wall0 = time.perf_counter()
    per_query: dict[str, dict[str, float]] = {}
    if config.exact:
        ranked, metrics, collection = _exact(config, loaded)
    else:
        ranked, metrics, collection, per_query = _indexed(config, loaded)
    wall = time.perf_counter() - wall0
    metrics.timings |= {"wall_s": round(wall, 3), "qps": round(len(ranked) / max(wall, 1e-9), 2)}
    report_queries(metrics.truncated_queries, metrics.empty_queries)
    metrics, _ = write_run_folder(
        config.out,
        ranked,
        metrics,
        tag="colbert-exact" if config.exact else f"colbert-{metrics.params['type']}",
        queries=loaded,
        measures=config.measures,
        collection=collection,
        per_query=per_query,
    )
    return metrics


def _exact(config: Config, loaded: LoadedQueries) -> tuple[dict[str, Ranked], RunMetrics, set[str]]:
    store = Embeddings(config.embeddings)
    encoder = load_query_encoder(store.encoder, config.model)
    encoded = encode_queries(encoder, loaded.queries)
    t0 = time.perf_counter()
    with progress_bar(store.n_docs, "search") as bar:
        result = exact_search(
            store,
            encoded.vectors,
            k=config.params.k,
            memory_budget_bytes=config.memory_budget_mb << 20,
            progress=bar.update,
        )
    maxsim_s = time.perf_counter() - t0
    ranked = {
        qid: ranked_list(result.doc_index[i], result.scores[i], result.doc_ids)
        for i, qid in enumerate(encoded.query_ids)
    }
    metrics = RunMetrics(
        params=run_params(config),
        source={"manifest_sha256": store.manifest_sha256},
        encoder=encoder.describe().to_dict(),
        timings={"query_encoding_s": round(encoded.seconds, 3), "maxsim_s": round(maxsim_s, 3)},
        empty_queries=encoded.empty,
        truncated_queries=encoded.truncated,
    )
    return ranked, metrics, set(result.doc_ids)


def _indexed(
    config: Config, loaded: LoadedQueries
) -> tuple[dict[str, Ranked], RunMetrics, set[str], dict[str, dict[str, float]]]:
    meta, meta_sha = read_index_meta_with_sha256(config.index)
    collection = set(read_index_mapping(config.index, meta).doc_ids)  # validated up front
    res = connect_for(
        config.cluster.ray_address, {"--index": config.index}, shared_fs=config.cluster.shared_fs
    )
    placement = place(config.cluster, res, use_gpus=False)
    with progress_bar(len(loaded.queries), "search", unit="q") as bar:
        pool = search_with_pool(
            config.index,
            config.model,
            config.params,
            loaded.queries,
            placement,
            batch_size=config.query_batch_size,
            max_retries=config.cluster.max_retries,
            on_batch=bar.update,
        )
    missing = [q.query_id for q in loaded.queries if q.query_id not in pool.answers]
    latency = {q: round(sum(a.timings.values()) * 1000, 3) for q, a in pool.answers.items()}
    if missing:
        raise RuntimeError(f"{len(missing)} queries were not answered, e.g. {missing[:5]}")
    answers = [pool.answers[q.query_id] for q in loaded.queries]
    metrics = RunMetrics(
        params=run_params(config, meta),
        source={"index_meta_sha256": meta_sha},
        encoder=pool.encoder,
        empty_queries=empty_queries(loaded.queries),
        truncated_queries={a.query_id: a.truncated_tokens for a in answers if a.truncated_tokens},
        timings=_pool_timings(pool),
        latency_ms=latency_percentiles(latency.values()),
        workers={
            "actors": placement.workers,
            "threads_per_worker": placement.torch_threads,
            "queries_per_actor": pool.per_worker,
            "nodes": pool.per_node,
            "retried_batches": pool.pool.retries,
            "replaced_actors": pool.pool.replaced,
        },
    )
    if loaded.qrels is not None:
        candidates = {a.query_id: set(a.candidates) for a in answers}
        metrics.candidate_recall = candidate_recall(candidates, loaded.qrels)
    ranked = {a.query_id: a.ranked for a in answers}
    return ranked, metrics, collection, {"latency_ms": latency}


def _pool_timings(pool: PoolResult) -> dict[str, float]:
    keys = ("query_encoding_s", "ann_s", "maxsim_s")
    return {k: round(sum(a.timings[k] for a in pool.answers.values()), 3) for k in keys}


def report(config: Config, metrics: RunMetrics) -> None:
    print_metrics(config.out, metrics)
