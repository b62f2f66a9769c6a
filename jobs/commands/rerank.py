"""`colbert-batch rerank`: exact MaxSim over the top documents of a given run (e.g. BM25)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field

from colbert_core.config import check_positive
from colbert_core.data import QuerySet
from colbert_core.embeddings import Embeddings
from colbert_core.errors import ConfigError
from colbert_core.evaluation import (
    RunMetrics,
    group_run,
    parse_measures,
    read_trec_run,
    write_run_folder,
)
from colbert_core.index import load_index
from colbert_core.search import encode_queries, load_query_encoder, report_queries
from colbert_core.search.rerank import rerank_index, rerank_store
from colbert_core.storage import sha256_file
from colbert_core.tokenstore.store import store_label

from .evaluate import print_metrics
from .search import add_query_arguments

logger = logging.getLogger(__name__)

HELP = "exact MaxSim reranking of a given run (e.g. BM25)"


@dataclass(frozen=True)
class Config:
    run: str
    out: str
    query_set: QuerySet
    embeddings: str | None = None
    index: str | None = None
    depth: int = 100
    model: str | None = None
    measures: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_positive(self, "depth")
        if bool(self.embeddings) == bool(self.index):
            raise ConfigError("rerank needs exactly one of --embeddings ROOT or --index IDX")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="TREC run whose documents are reranked")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", help="encode output (ROOT) holding the documents")
    src.add_argument("--index", help="index folder (IDX): uses its token store")
    add_query_arguments(p)
    p.add_argument("--out", required=True, help="run folder or s3:// prefix (RUNDIR)")
    p.add_argument("--depth", type=int, help="rerank the top N of each query (100)")


def run(config: Config) -> RunMetrics:
    parse_measures(config.measures)
    loaded = config.query_set.load()
    given = {
        q: [sd.doc_id for sd in sorted(docs, key=lambda s: -s.score)[: config.depth]]
        for q, docs in group_run(read_trec_run(config.run)).items()
    }
    t0 = time.perf_counter()
    source = load_index(config.index) if config.index else Embeddings(config.embeddings)
    encoder = load_query_encoder(source.encoder, config.model)
    in_run = [q for q in loaded.queries if q.query_id in given]
    without = [q.query_id for q in loaded.queries if q.query_id not in given]
    if without:
        logger.warning(
            "%d queries have no documents in %s (e.g. %s)", len(without), config.run, without[:5]
        )
    encoded = encode_queries(encoder, in_run)
    report_queries(encoded.truncated, encoded.empty)
    rerank = rerank_index if config.index else rerank_store
    ranked, unknown = rerank(source, encoded.by_id(), given)
    if unknown:
        logger.warning(
            "%d run documents are not in the collection (e.g. %s): dropped",
            len(unknown),
            unknown[:5],
        )
    seconds = time.perf_counter() - t0
    metrics = RunMetrics(
        params={
            "mode": "rerank",
            "run": config.run,
            "depth": config.depth,
            "source": config.index or config.embeddings,
            "store": store_label(source.meta.store) if config.index else "float16 (shards)",
            "measures": list(config.measures),
            **config.query_set.params(),
        },
        source={"run_sha256": sha256_file(config.run)},
        encoder=encoder.describe().to_dict(),
        timings={"seconds": round(seconds, 3), "qps": round(len(in_run) / max(seconds, 1e-9), 2)},
        empty_queries=encoded.empty,
        truncated_queries=encoded.truncated,
        queries_without_run=without,
        unknown_documents=len(unknown),
    )
    collection = set(source.doc_ids) if config.index else None
    metrics, _ = write_run_folder(
        config.out,
        ranked,
        metrics,
        tag="colbert-rerank",
        queries=loaded,
        measures=config.measures,
        collection=collection,
    )
    return metrics


def report(config: Config, metrics: RunMetrics) -> None:
    print_metrics(config.out, metrics)
