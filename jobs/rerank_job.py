"""`colbert-batch rerank` (exact MaxSim over a given run) and `colbert-batch bm25`."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from colbert_core.bm25 import BM25Settings, bm25_search
from colbert_core.data import load_qrels, load_queries, open_corpus
from colbert_core.evaluation import parse_measures
from colbert_core.runs import group_run, read_trec_run

from .search_job import _is_dataset, _query_encoder, finish_run

logger = logging.getLogger(__name__)


def add_rerank_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="TREC run whose documents are reranked")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--embeddings", help="encode output (ROOT) holding the documents")
    src.add_argument("--index", help="index folder (IDX): uses its float16 token store")
    p.add_argument("--queries", required=True)
    p.add_argument("--qrels", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--depth", type=int, default=100, help="rerank the top N of each query")
    p.add_argument("--model", default=None)
    p.add_argument("--measures", nargs="*", default=[])


def add_bm25_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--qrels", default=None)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, default=100)
    p.add_argument(
        "--language", choices=["en", "de"], default="en", help="stopwords and Snowball stemmer"
    )
    p.add_argument("--k1", type=float, default=0.9)
    p.add_argument("--b", type=float, default=0.4)
    p.add_argument("--measures", nargs="*", default=[])


def _qrels(args: argparse.Namespace, spec: str):
    qrels_spec = args.qrels or (spec if _is_dataset(spec) else None)
    return (load_qrels(qrels_spec, split=args.split) if qrels_spec else None), qrels_spec


def run_rerank(args: argparse.Namespace) -> int:
    from colbert_core.rerank import rerank_index, rerank_store

    parse_measures(args.measures)
    queries = load_queries(args.queries, split=args.split)
    qrels, qrels_spec = _qrels(args, args.queries)
    given = {
        q: [sd.doc_id for sd in sorted(docs, key=lambda s: -s.score)[: args.depth]]
        for q, docs in group_run(read_trec_run(args.run)).items()
    }
    t0 = time.perf_counter()
    if args.index:
        from colbert_core.index import load_index

        loaded = load_index(args.index)
        encoder = _query_encoder(loaded.meta["encoder"], args.model)
    else:
        from colbert_core.store import EmbeddingStore

        store = EmbeddingStore(args.embeddings)
        encoder = _query_encoder(store.encoder, args.model)
    in_run = [q for q in queries if q.query_id in given]
    without = [q.query_id for q in queries if q.query_id not in given]
    if without:
        logger.warning(
            "%d queries have no documents in %s (e.g. %s)", len(without), args.run, without[:5]
        )
    vectors = dict(
        zip(
            [q.query_id for q in in_run],
            encoder.encode_queries([q.text for q in in_run]),
            strict=True,
        )
    )
    lost = encoder.overflow([q.text for q in in_run], is_query=True)
    truncated = {q.query_id: n for q, n in zip(in_run, lost, strict=True) if n}
    if truncated:
        logger.warning(
            "%d queries are longer than query_maxlen and were truncated (e.g. %s)",
            len(truncated),
            list(truncated)[:5],
        )
    if args.index:
        ranked, unknown = rerank_index(loaded, vectors, given)
    else:
        ranked, unknown = rerank_store(store, vectors, given)
    if unknown:
        logger.warning(
            "%d run documents are not in the collection (e.g. %s): dropped",
            len(unknown),
            unknown[:5],
        )
    seconds = time.perf_counter() - t0
    extra = {
        "params": {
            "mode": "rerank",
            "run": args.run,
            "depth": args.depth,
            "source": args.index or args.embeddings,
            "queries": args.queries,
            "qrels": qrels_spec,
            "split": args.split,
        },
        "encoder": encoder.describe(),
        "timings": {
            "seconds": round(seconds, 3),
            "qps": round(len(in_run) / max(seconds, 1e-9), 2),
        },
        "queries_without_run": without,
        "truncated_queries": truncated,
        "unknown_documents": len(unknown),
    }
    finish_run(
        Path(args.out),
        ranked,
        tag="colbert-rerank",
        qrels=qrels,
        measures=args.measures,
        extra=extra,
    )
    return 0


def run_bm25(args: argparse.Namespace) -> int:
    parse_measures(args.measures)
    queries = load_queries(args.queries, split=args.split)
    qrels, qrels_spec = _qrels(args, args.queries)
    settings = BM25Settings(language=args.language, k1=args.k1, b=args.b)
    t0 = time.perf_counter()
    ranked = bm25_search(open_corpus(args.corpus), queries, k=args.k, settings=settings)
    seconds = time.perf_counter() - t0
    extra = {
        "params": {
            "mode": "bm25",
            "k": args.k,
            "corpus": args.corpus,
            "queries": args.queries,
            "qrels": qrels_spec,
            "split": args.split,
            "bm25": settings.to_dict(),
        },
        "timings": {"seconds": round(seconds, 3)},
    }
    finish_run(Path(args.out), ranked, tag="bm25", qrels=qrels, measures=args.measures, extra=extra)
    return 0
