"""`colbert-batch bm25`: the BM25 baseline run (bm25s, stemmed, stopworded)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

from colbert_core.config import check_positive
from colbert_core.data import QuerySet, open_corpus
from colbert_core.evaluation import RunMetrics, parse_measures, write_run_folder
from colbert_core.search.bm25 import BM25Settings, bm25_search

from .evaluate import print_metrics

HELP = "BM25 baseline run (bm25s, stemmed, stopworded)"


@dataclass(frozen=True)
class Config:
    corpus: str
    out: str
    query_set: QuerySet
    k: int = 100
    settings: BM25Settings = field(default_factory=BM25Settings)
    measures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_positive(self, "k")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True, help="corpus source (as for encode)")
    p.add_argument("--queries", required=True, help="queries source")
    p.add_argument("--qrels", help="qrels source (default: the queries' dataset)")
    p.add_argument("--split", help="qrels split of a BEIR folder (test)")
    p.add_argument("--on-bad-record", choices=["error", "skip"], help="for query records")
    p.add_argument("--out", required=True, help="run folder or s3:// prefix (RUNDIR)")
    p.add_argument("--k", type=int, help="results per query (100)")
    p.add_argument("--language", choices=["en", "de"], help="stopwords and Snowball stemmer (en)")
    p.add_argument("--k1", type=float, help="BM25 k1 (0.9)")
    p.add_argument("--b", type=float, help="BM25 b (0.4)")
    p.add_argument("--measures", nargs="*", help="extra ir_measures measures")


def run(config: Config) -> RunMetrics:
    parse_measures(config.measures)
    loaded = config.query_set.load()
    t0 = time.perf_counter()
    ranked, doc_ids = bm25_search(
        open_corpus(config.corpus), loaded.queries, k=config.k, settings=config.settings
    )
    seconds = time.perf_counter() - t0
    metrics = RunMetrics(
        params={
            "mode": "bm25",
            "k": config.k,
            "corpus": config.corpus,
            "bm25": config.settings.to_dict(),
            "measures": list(config.measures),
            **config.query_set.params(),
        },
        timings={"seconds": round(seconds, 3)},
    )
    metrics, _ = write_run_folder(
        config.out,
        ranked,
        metrics,
        tag="bm25",
        queries=loaded,
        measures=config.measures,
        collection=set(doc_ids),
    )
    return metrics


def report(config: Config, metrics: RunMetrics) -> None:
    print_metrics(config.out, metrics)
