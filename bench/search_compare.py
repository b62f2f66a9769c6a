"""Search quality and speed: exact vs IVF-PQ vs HNSW (ours) vs fast-plaid, one run.

All systems search the same token embeddings with the same pre-encoded queries, so QPS here
excludes query encoding for everyone (it is reported separately). Throughput is timed the
same way for everyone: the whole query set in one search call; ours is also timed one
query at a time (QPS, p50, p95). nDCG@10 comes from the same ir_measures evaluation for
every run.

Usage::

    python bench/search_compare.py --dataset beir:scifact --embeddings out/demo/embeddings \
        --indexes out/bench/idx-ivfpq,out/bench/idx-hnsw [--fastplaid-index out/bench/fp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from ir_measures import ScoredDoc

from colbert_core.data import load_qrels, load_queries
from colbert_core.embeddings import Embeddings
from colbert_core.evaluation import evaluate, read_trec_run
from colbert_core.index import load_index
from colbert_core.search import (
    CandidateScorer,
    SearchParams,
    default_params,
    encode_queries,
    exact_search,
    load_query_encoder,
    search,
    warm,
)
from colbert_core.tokenstore.store import store_label


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="beir:scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--embeddings", required=True)
    p.add_argument("--indexes", default="", help="comma list of index folders")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--k-prime", type=int, default=SearchParams.k_prime)
    p.add_argument(
        "--max-candidates",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[SearchParams.max_candidates],
        help="comma list: each index is searched once per value",
    )
    p.add_argument(
        "--full-scores",
        type=lambda v: [None if x == "all" else int(x) for x in v.split(",")],
        default=[SearchParams.full_scores],
        help="comma list (a number or 'all'): residual indexes are searched once per value",
    )
    p.add_argument(
        "--processes",
        type=int,
        default=0,
        help="also time the query set split over this many processes of one torch thread "
        "each, as `search --index --workers N` lays search actors out (0: not timed)",
    )
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--skip-exact", action="store_true")
    p.add_argument("--fastplaid-index", default=None)
    p.add_argument("--fastplaid-venv", default=str(Path(__file__).parent / ".venv-fastplaid"))
    p.add_argument("--fastplaid-build", action="store_true", help="(re)build its index first")
    args = p.parse_args()

    store = Embeddings(args.embeddings)
    encoder = load_query_encoder(store.encoder)
    queries = load_queries(args.dataset, split=args.split)
    qrels = load_qrels(args.dataset, split=args.split)
    encoded = encode_queries(encoder, queries)
    qv, enc_s = encoded.vectors, encoded.seconds
    rows = []

    def record(name: str, run: list[ScoredDoc], seconds: float, **extra) -> None:
        ev = evaluate(run, qrels)
        row = {
            "system": name,
            "nDCG@10": round(ev.measures["nDCG@10"], 4),
            "R@100": round(ev.measures["R@100"], 4),
            "qps": round(len(queries) / seconds, 2),
            **extra,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    if not args.skip_exact:
        t0 = time.perf_counter()
        res = exact_search(store, qv, k=args.k)
        secs = time.perf_counter() - t0
        run = [
            ScoredDoc(q.query_id, res.doc_ids[d], float(s))
            for i, q in enumerate(queries)
            for d, s in zip(res.doc_index[i], res.scores[i], strict=True)
            if d >= 0
        ]
        record("exact MaxSim (brute force)", run, secs, bytes_per_token=2 * store.dim)
    for folder in [x for x in args.indexes.split(",") if x]:
        loaded = load_index(folder)
        scorer = CandidateScorer()
        # full_scores only changes how residual stores are searched.
        fulls = args.full_scores if loaded.store_kind != "float16" else [None]
        for c, full in [(c, f) for c in args.max_candidates for f in fulls]:
            base = SearchParams(args.k, args.k_prime, c, args.nprobe, full_scores=full)
            sp = default_params(loaded.meta, base)
            warm(loaded, sp)
            search(loaded, qv[:8], sp, scorer)  # warm the page cache / allocators
            # Throughput: every query in one call, as fast-plaid is timed below.
            t0 = time.perf_counter()
            results = search(loaded, qv, sp, scorer)
            secs = time.perf_counter() - t0
            # Latency: one query at a time.
            lat = []
            for v in qv:
                t1 = time.perf_counter()
                search(loaded, [v], sp, scorer)
                lat.append(time.perf_counter() - t1)
            run = [
                ScoredDoc(q.query_id, loaded.doc_ids[d], float(s))
                for q, r in zip(queries, results, strict=True)
                for d, s in zip(r.doc_index, r.scores, strict=True)
            ]
            lat_ms = np.array(lat) * 1000
            extra = {}
            if args.processes:
                extra["qps_processes"] = round(parallel_qps(folder, sp, qv, args.processes), 2)
            record(
                f"ours {loaded.meta.factory} + {store_label(loaded.meta.store)} store "
                f"(k'={sp.k_prime}, C={sp.max_candidates}, nprobe={sp.nprobe}, "
                f"ef={sp.ef_search}, full={sp.exact_count or 'all'})",
                run,
                secs,
                qps_one_at_a_time=round(len(qv) / float(np.sum(lat)), 2),
                p50_ms=round(float(np.percentile(lat_ms, 50)), 1),
                p95_ms=round(float(np.percentile(lat_ms, 95)), 1),
                ann_ms=round(1000 * sum(r.timings["ann_s"] for r in results) / len(qv), 2),
                maxsim_ms=round(1000 * sum(r.timings["maxsim_s"] for r in results) / len(qv), 2),
                index_bytes_per_token=loaded.meta.bytes_per_token["index"],
                store_bytes_per_token=loaded.meta.bytes_per_token["token_store"],
                total_bytes_per_token=loaded.meta.bytes_per_token["total"],
                **extra,
            )
    if args.fastplaid_index:
        python = Path(args.fastplaid_venv) / "bin" / "python"
        with tempfile.TemporaryDirectory() as tmp:
            qfile = Path(tmp) / "queries.npz"
            np.savez(
                qfile,
                query_ids=json.dumps([q.query_id for q in queries]),
                **{f"q_{i}": v for i, v in enumerate(qv)},
            )
            run_file = Path(tmp) / "run.trec"
            cmd = [
                str(python),
                str(Path(__file__).with_name("fastplaid_bench.py")),
                "--embeddings",
                args.embeddings,
                "--index",
                args.fastplaid_index,
                "--queries",
                str(qfile),
                "--run",
                str(run_file),
                "--top-k",
                str(args.k),
            ]
            if not args.fastplaid_build:
                cmd.append("--skip-build")
            res = subprocess.run(cmd, check=True, capture_output=True, text=True)
            out = json.loads(res.stdout.strip().splitlines()[-1])
            record(
                "fast-plaid (CPU, nbits=4, n_ivf_probe=4, n_full_scores=1024)",
                read_trec_run(run_file),
                out["search_s"],
                build_s=out.get("build_s"),
                bytes_per_token=out.get("bytes_per_token"),
            )
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "queries": len(queries),
                "query_encoding_s": round(enc_s, 2),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "runs": rows,
            },
            indent=2,
        )
    )
    print(
        "\n| system | nDCG@10 | R@100 | QPS, all queries in one call | QPS, one at a time "
        "| p50 ms | p95 ms | exact stage ms/query | bytes/token read by search |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['system']} | {r['nDCG@10']:.4f} | {r['R@100']:.4f} | {r['qps']:.2f} | "
            f"{r.get('qps_one_at_a_time', '')} | {r.get('p50_ms', '')} | {r.get('p95_ms', '')} "
            f"| {r.get('maxsim_ms', '')} | "
            f"{r.get('total_bytes_per_token', r.get('bytes_per_token', ''))} |"
        )


_WORKER: dict = {}


def _worker_init(folder: str, params: SearchParams, warm_queries: list[np.ndarray]) -> None:
    import faiss
    import torch

    # One thread per process, as a search actor runs: Ray sets OMP_NUM_THREADS to the
    # actor's CPUs (1), which FAISS's OpenMP reads; without it each process's FAISS would
    # start one thread per core and the processes would oversubscribe the cores.
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    _WORKER["loaded"] = load_index(folder)
    _WORKER["scorer"] = CandidateScorer()
    _WORKER["params"] = params
    warm(_WORKER["loaded"], params)
    search(_WORKER["loaded"], warm_queries, params, _WORKER["scorer"])


def _worker_search(queries: list[np.ndarray]) -> int:
    return len(search(_WORKER["loaded"], queries, _WORKER["params"], _WORKER["scorer"]))


def parallel_qps(folder: str, params: SearchParams, qv: list[np.ndarray], processes: int) -> float:
    """Queries/s of the query set split into ``processes`` consecutive parts, each searched
    in one call by its own process (index loaded and warmed before the clock starts)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    parts = [list(p) for p in np.array_split(np.arange(len(qv)), processes)]
    ctx = mp.get_context("spawn")
    init = (folder, params, qv[:8])
    with ProcessPoolExecutor(
        processes, mp_context=ctx, initializer=_worker_init, initargs=init
    ) as pool:
        # Tiny tasks first (twice as many as processes), so that the pool has started every
        # worker, each warmed by its initializer, before the clock starts.
        list(pool.map(_worker_search, [[qv[0]]] * processes * 2))
        t0 = time.perf_counter()
        done = sum(pool.map(_worker_search, [[qv[i] for i in part] for part in parts]))
        seconds = time.perf_counter() - t0
    return done / seconds


if __name__ == "__main__":
    main()
