"""`colbert-batch search --exact` and `colbert-batch evaluate`."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from colbert_core import load_encoder
from colbert_core.ann_search import SearchParams
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
        default=SearchParams.k_prime,
        help="tokens retrieved per query token (candidate generation)",
    )
    p.add_argument(
        "--max-candidates",
        type=int,
        default=SearchParams.max_candidates,
        help="documents kept for exact MaxSim per query (rule in docs)",
    )
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default nlist/512)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray search actors for --index (default: one per cluster CPU)",
    )
    p.add_argument(
        "--threads-per-worker", type=int, default=1, help="torch threads per search actor"
    )
    p.add_argument(
        "--query-batch-size", type=int, default=32, help="queries per batch sent to an actor"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (default: $RAY_ADDRESS, else a local cluster)",
    )
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
        lost = encoder.overflow([q.text for q in queries], is_query=True)
        truncated = {q.query_id: n for q, n in zip(queries, lost, strict=True) if n}
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
        encoder_description = encoder.describe()
    else:
        from colbert_core.index import load_index

        from . import ray_runtime
        from .search_pool import search_with_pool

        t0 = time.perf_counter()
        meta = load_index(args.index).meta  # validates before any actor starts
        res = ray_runtime.connect(args.ray_address)
        workers = args.workers or max(1, int(res.cpus))
        cpus = max(0.05, (res.cpus - 0.5) / workers)
        with progress_bar(len(queries), "search", unit="q") as bar:
            rows, info = search_with_pool(
                args.index,
                args.model,
                SearchParams(
                    args.k, args.k_prime, args.max_candidates, args.nprobe, args.ef_search
                ),
                [(q.query_id, q.text) for q in queries],
                workers=workers,
                cpus_per_worker=cpus,
                torch_threads=args.threads_per_worker,
                on_batch=bar.update,
                batch_size=args.query_batch_size,
            )
        missing = [q.query_id for q in queries if q.query_id not in rows]
        if missing:
            raise RuntimeError(f"{len(missing)} queries were not answered, e.g. {missing[:5]}")
        ranked = {q.query_id: rows[q.query_id]["ranked"] for q in queries}
        truncated = {
            q.query_id: rows[q.query_id]["truncated_tokens"]
            for q in queries
            if rows[q.query_id]["truncated_tokens"]
        }
        for key in ("query_encoding_s", "ann_s", "maxsim_s"):
            timings[key] = sum(r["timings"][key] for r in rows.values())
        lat = np.array([sum(r["timings"].values()) for r in rows.values()]) * 1000
        extra["latency_ms"] = {
            p: round(float(np.percentile(lat, int(p[1:]))), 2) if lat.size else None
            for p in ("p50", "p95", "p99")
        }
        if qrels is not None:
            extra["candidate_recall"] = candidate_recall(
                {q: set(r["candidates"]) for q, r in rows.items()}, qrels
            )
        sp = info["params"]
        params = {
            "mode": "index",
            "index": str(args.index),
            "type": meta["type"],
            "factory": meta["factory"],
            **sp,
            "workers": workers,
            "threads_per_worker": args.threads_per_worker,
            "bytes_per_token": meta["bytes_per_token"],
        }
        tag = f"colbert-{meta['type']}"
        encoder_description = info["encoder"]
    wall = time.perf_counter() - wall0
    extra |= {
        "params": params | {"queries": args.queries, "qrels": qrels_spec, "split": args.split},
        "encoder": encoder_description,
        "timings": {k: round(v, 3) for k, v in timings.items()}
        | {"wall_s": round(wall, 3), "qps": round(len(queries) / max(wall, 1e-9), 2)},
        "empty_queries": empty,
        # Query id -> tokens cut off at query_maxlen (the query was searched truncated).
        "truncated_queries": truncated,
    }
    if truncated:
        logger.warning(
            "%d queries are longer than query_maxlen and were truncated (e.g. %s); "
            "metrics.json lists them with the tokens each lost",
            len(truncated),
            list(truncated)[:5],
        )
    finish_run(
        Path(args.out),
        ranked,
        tag=tag,
        qrels=qrels,
        measures=args.measures,
        extra=extra,
        rejects=rejects,
    )
    return 0


def finish_run(
    out: Path,
    ranked: dict[str, list[tuple[str, float]]],
    *,
    tag: str,
    qrels,
    measures,
    extra: dict,
    rejects: RejectLog | None = None,
) -> None:
    """Write run.trec, metrics.json and per_query.parquet (when qrels exist); print them."""
    write_trec_run(out / "run.trec", ranked, tag=tag)
    extra = extra | {"query_rejects": len(rejects) if rejects else 0}
    if rejects:
        rejects.write_jsonl(out / "rejects.jsonl")
    if qrels is None:
        from colbert_core.atomic import write_json_atomic

        write_json_atomic(out / "metrics.json", {"measures": {}, "queries": len(ranked)} | extra)
        print(f"run written to {out / 'run.trec'} (no qrels: nothing to evaluate)")
        return
    ev = evaluate(_scored(ranked), qrels, measures)
    write_evaluation(out, ev, extra=extra)
    _report(ev, out)


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
