"""Peak memory of one searcher: RSS over what it loads (issue 9's actor-memory goal).

For each index, a fresh child process imports the search code (baseline RSS), loads the
index (the FAISS index in memory, the token store memory-mapped) and answers every query
the way a search actor does (one query at a time, one thread). It reports its peak RSS
(VmHWM) and the peak above the baseline, against the bytes of the index + token store +
mapping files: memory-mapped store pages the exact stage touched count in RSS.

Usage::

    python bench/search_rss.py --dataset beir:scifact --embeddings out/demo/embeddings \
        --indexes out/demo/index-ivfpq,out/bench/scifact/idx-ivfpq-r2
    # an index without a query set (bench/index_build.py --synthetic): queries made of
    # token vectors drawn from its embeddings
    python bench/search_rss.py --sample-queries 300 --embeddings out/bench/synth/synth-10000000 \
        --indexes out/bench/synth/idx-ivfpq
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def rss_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def child(index: str, queries: str, full_scores: int | None = None) -> None:
    import torch

    from colbert_core.index import load_index
    from colbert_core.search import CandidateScorer, SearchParams, default_params, search

    torch.set_num_threads(1)  # as a search actor
    z = np.load(queries)
    qv = [z[f"q_{i}"] for i in range(int(z["n"]))]
    base = rss_mb("VmRSS")
    loaded = load_index(index)
    loaded_rss = rss_mb("VmRSS")
    scorer = CandidateScorer()
    params = default_params(loaded.meta, SearchParams(full_scores=full_scores))
    for v in qv:
        search(loaded, [v], params, scorer)
    data = sum(e.bytes for e in loaded.meta.files.values())
    peak = rss_mb("VmHWM")
    print(
        json.dumps(
            {
                "index": index,
                "store": loaded.store_kind,
                "full_scores": full_scores,
                "files_mb": round(data / 2**20, 1),
                "baseline_rss_mb": round(base, 1),
                "after_load_rss_mb": round(loaded_rss, 1),
                "peak_rss_mb": round(peak, 1),
                "peak_over_baseline_mb": round(peak - base, 1),
                "ratio_to_files": round((peak - base) / (data / 2**20), 2),
            }
        )
    )


def sample_queries(store, n: int, tokens: int = 32) -> list[np.ndarray]:
    """``n`` queries of ``tokens`` token vectors drawn (seeded) from the first shard."""
    vectors = store.read(store.shards[0]).tokens
    rng = np.random.default_rng(0)
    rows = rng.choice(len(vectors), size=(n, tokens), replace=len(vectors) < n * tokens)
    return [np.asarray(vectors[r], dtype=np.float32) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="beir:scifact")
    p.add_argument("--embeddings", required=True)
    p.add_argument("--indexes", required=True)
    p.add_argument(
        "--sample-queries",
        type=int,
        default=0,
        help="instead of encoding --dataset's queries: this many queries of 32 token "
        "vectors drawn (seed 0) from the first shard of --embeddings",
    )
    p.add_argument(
        "--full-scores",
        type=int,
        default=None,
        help="search with this --full-scores (residual stores also hold each document's "
        "distinct centroids then)",
    )
    args = p.parse_args()
    from colbert_core.embeddings import Embeddings

    store = Embeddings(args.embeddings)
    if args.sample_queries:
        qv = sample_queries(store, args.sample_queries)
    else:
        from colbert_core.data import load_queries
        from colbert_core.search import encode_queries, load_query_encoder

        encoder = load_query_encoder(store.encoder)
        qv = encode_queries(encoder, load_queries(args.dataset, split="test")).vectors
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "q.npz"
        np.savez(qfile, n=len(qv), **{f"q_{i}": v for i, v in enumerate(qv)})
        for index in [str(Path(x).resolve()) for x in args.indexes.split(",")]:
            code = (
                "import sys; sys.argv=['x']; from search_rss import child; "
                f"child({index!r}, {str(qfile)!r}, {args.full_scores!r})"
            )
            out = subprocess.run(
                [sys.executable, "-c", code],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                raise SystemExit(f"{index}: the search child failed:\n{out.stderr[-3000:]}")
            print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
