"""`colbert-batch search --exact` and `colbert-batch evaluate`."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from colbert_core import load_encoder
from colbert_core.data import OnBadRecord, RejectLog, load_qrels, load_queries
from colbert_core.encoder import EncoderSettings
from colbert_core.evaluation import evaluate, format_table, parse_measures, write_evaluation
from colbert_core.exact import exact_search
from colbert_core.runs import read_trec_run, write_trec_run
from colbert_core.store import EmbeddingStore, ManifestError

from ._console import progress_bar

logger = logging.getLogger(__name__)


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exact",
        action="store_true",
        help="exhaustive MaxSim over every document of --embeddings",
    )
    p.add_argument("--embeddings", default=None, help="encode output (ROOT) for --exact")
    p.add_argument("--index", default=None, help="index folder or s3:// (IDX) for ANN search")
    p.add_argument(
        "--k-prime",
        type=int,
        default=32,
        help="tokens retrieved per query token (candidate generation)",
    )
    p.add_argument(
        "--max-candidates",
        type=int,
        default=256,
        help="documents kept for exact MaxSim per query (rule in docs)",
    )
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default nlist/64)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch")
    p.add_argument(
        "--queries", required=True, help="BEIR folder, beir:<name>, irds:<id>, or a queries file"
    )
    p.add_argument(
        "--qrels",
        default=None,
        help="qrels source (default: the queries source when it is a dataset)",
    )
    p.add_argument("--split", default="test", help="qrels split of a BEIR folder")
    p.add_argument("--out", required=True, help="run folder (RUNDIR)")
    p.add_argument("--k", type=int, default=100, help="results per query")
    p.add_argument(
        "--model",
        default=None,
        help="checkpoint to encode queries with (default: the one in the manifest)",
    )
    p.add_argument("--measures", nargs="*", default=[], help="extra ir_measures measures")
    p.add_argument(
        "--memory-budget-mb",
        type=int,
        default=512,
        help="bound for the similarity block kept in memory",
    )
    p.add_argument("--on-bad-record", choices=["error", "skip"], default="error")


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="TREC run file")
    p.add_argument("--qrels", required=True, help="qrels source (BEIR folder, file, irds:)")
    p.add_argument("--split", default="test", help="qrels split of a BEIR folder")
    p.add_argument("--measures", nargs="*", default=[], help="extra ir_measures measures")
    p.add_argument(
        "--out",
        default=None,
        help="folder for metrics.json and per_query.parquet (default: beside the run)",
    )


def _is_dataset(spec: str) -> bool:
    return spec.startswith(("beir:", "irds:")) or Path(spec).is_dir()


def _query_encoder(recorded: dict, model: str | None):
    settings = EncoderSettings.from_dict(recorded["settings"])
    encoder = load_encoder(
        model or recorded["model_path"],
        query_maxlen=settings.query_maxlen,
        doc_maxlen=settings.doc_maxlen,
    )
    if encoder.fingerprint != recorded["fingerprint"]:
        raise ManifestError(
            f"the query encoder {encoder.path} (fingerprint {encoder.fingerprint}) is not the "
            f"model that encoded the documents ({recorded['fingerprint']}); pass --model "
            "with the original checkpoint"
        )
    return encoder


def run_search(args: argparse.Namespace) -> int:
    parse_measures(args.measures)  # fail on a bad measure name before any work
    if args.exact == bool(args.index) or (args.exact and not args.embeddings):
        raise ValueError("use either --exact --embeddings ROOT or --index IDX")
    rejects = RejectLog()
    queries = load_queries(
        args.queries,
        split=args.split,
        on_bad_record=OnBadRecord(args.on_bad_record),
        rejects=rejects,
    )
    qrels_spec = args.qrels or (args.queries if _is_dataset(args.queries) else None)
    qrels = load_qrels(qrels_spec, split=args.split) if qrels_spec else None
    empty = [q.query_id for q in queries if not q.text.strip()]
    if empty:
        logger.warning("%d queries have empty text (e.g. %s)", len(empty), empty[:5])
    timings: dict[str, float] = {}
    extra: dict = {}
    wall0 = time.perf_counter()
    if args.exact:
        store = EmbeddingStore(args.embeddings)
        encoder = _query_encoder(store.encoder, args.model)
        t0 = time.perf_counter()
        q_vectors = encoder.encode_queries([q.text for q in queries])
        timings["query_encoding_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with progress_bar(store.n_docs, "search") as bar:
            result = exact_search(
                store,
                q_vectors,
                k=args.k,
                memory_budget_bytes=args.memory_budget_mb << 20,
                progress=bar.update,
            )
        timings["maxsim_s"] = time.perf_counter() - t0
        ranked = {
            q.query_id: [
                (result.doc_ids[d], float(s))
                for d, s in zip(result.doc_index[i], result.scores[i], strict=True)
                if d >= 0
            ]
            for i, q in enumerate(queries)
        }
        params = {"mode": "exact", "k": args.k, "embeddings": str(args.embeddings)}
        tag = "colbert-exact"
    else:
        from colbert_core.ann_search import SearchParams, default_params, search
        from colbert_core.index import load_index

        t0 = time.perf_counter()
        loaded = load_index(args.index)
        encoder = _query_encoder(loaded.meta["encoder"], args.model)
        timings["load_s"] = time.perf_counter() - t0
        sp = default_params(
            loaded.meta,
            SearchParams(args.k, args.k_prime, args.max_candidates, args.nprobe, args.ef_search),
        )
        per_query: list[float] = []
        ranked = {}
        cand_sets: dict[str, set[str]] = {}
        enc_s = ann_s = maxsim_s = 0.0
        batch = 64
        with progress_bar(len(queries), "search", unit="q") as bar:
            for lo in range(0, len(queries), batch):
                chunk = queries[lo : lo + batch]
                t0 = time.perf_counter()
                vecs = encoder.encode_queries([q.text for q in chunk])
                enc_each = (time.perf_counter() - t0) / len(chunk)
                enc_s += enc_each * len(chunk)
                for q, r in zip(chunk, search(loaded, vecs, sp), strict=True):
                    ranked[q.query_id] = [
                        (loaded.doc_ids[d], float(s))
                        for d, s in zip(r.doc_index, r.scores, strict=True)
                    ]
                    cand_sets[q.query_id] = {loaded.doc_ids[d] for d in r.candidates}
                    ann_s += r.timings["ann_s"]
                    maxsim_s += r.timings["maxsim_s"]
                    per_query.append(enc_each + r.timings["ann_s"] + r.timings["maxsim_s"])
                bar.update(len(chunk))
        timings |= {"query_encoding_s": enc_s, "ann_s": ann_s, "maxsim_s": maxsim_s}
        lat = np.array(per_query) * 1000
        extra["latency_ms"] = {
            "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
            "p95": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
            "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
        }
        if qrels is not None:
            extra["candidate_recall"] = candidate_recall(cand_sets, qrels)
        params = {
            "mode": "index",
            "index": str(args.index),
            "type": loaded.meta["type"],
            "factory": loaded.meta["factory"],
            "k": sp.k,
            "k_prime": sp.k_prime,
            "max_candidates": sp.max_candidates,
            "nprobe": sp.nprobe,
            "ef_search": sp.ef_search,
            "bytes_per_token": loaded.meta["bytes_per_token"],
        }
        tag = f"colbert-{loaded.meta['type']}"
    wall = time.perf_counter() - wall0
    out = Path(args.out)
    write_trec_run(out / "run.trec", ranked, tag=tag)
    extra |= {
        "params": params | {"queries": args.queries, "qrels": qrels_spec, "split": args.split},
        "encoder": encoder.describe(),
        "timings": {k: round(v, 3) for k, v in timings.items()}
        | {
            "wall_s": round(wall, 3),
            "qps": round(
                len(queries) / max(sum(v for k, v in timings.items() if k != "load_s"), 1e-9), 2
            ),
        },
        "empty_queries": empty,
        "query_rejects": len(rejects),
    }
    if rejects:
        rejects.write_jsonl(out / "rejects.jsonl")
    if qrels is None:
        from colbert_core.atomic import write_json_atomic

        write_json_atomic(out / "metrics.json", {"measures": {}, "queries": len(queries)} | extra)
        print(f"run written to {out / 'run.trec'} (no qrels: nothing to evaluate)")
        return 0
    ev = evaluate(_scored(ranked), qrels, args.measures)
    write_evaluation(out, ev, extra=extra)
    _report(ev, out)
    return 0


def candidate_recall(cand_sets: dict[str, set[str]], qrels) -> float | None:
    """Mean over judged queries of the fraction of relevant documents among candidates."""
    relevant: dict[str, set[str]] = {}
    for q in qrels:
        if q.relevance > 0:
            relevant.setdefault(q.query_id, set()).add(q.doc_id)
    values = [
        len(rel & cand_sets.get(qid, set())) / len(rel)
        for qid, rel in relevant.items()
        if qid in cand_sets
    ]
    return round(sum(values) / len(values), 4) if values else None


def run_evaluate(args: argparse.Namespace) -> int:
    run = read_trec_run(args.run)
    qrels = load_qrels(args.qrels, split=args.split)
    ev = evaluate(run, qrels, args.measures)
    out = Path(args.out) if args.out else Path(args.run).parent
    write_evaluation(
        out, ev, extra={"params": {"run": args.run, "qrels": args.qrels, "split": args.split}}
    )
    _report(ev, out)
    return 0


def _scored(ranked: dict[str, list[tuple[str, float]]]):
    from ir_measures import ScoredDoc

    # Scores as written to run.trec (6 decimals), so evaluate on the file gives the same.
    return [ScoredDoc(q, d, round(s, 6)) for q, docs in ranked.items() for d, s in docs]


def _report(ev, out: Path) -> None:
    print(format_table(ev.measures))
    print(f"queries evaluated: {ev.evaluated_queries} of {ev.judged_queries} judged")
    if ev.missing_from_run:
        print(
            f"judged queries missing from the run: {len(ev.missing_from_run)} "
            f"(listed in {out / 'metrics.json'})"
        )
    print(f"artifacts: {out / 'run.trec'}, {out / 'metrics.json'}, {out / 'per_query.parquet'}")
