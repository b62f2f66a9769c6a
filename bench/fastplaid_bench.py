"""fast-plaid side of the comparisons (run with bench/.venv-fastplaid's python).

Reads our token-embedding shards with plain pyarrow (the README recipe), builds a fast-plaid
index on the same vectors (CPU, nbits=4), and optionally searches pre-encoded queries
(``--queries queries.npz`` from bench/search_compare.py), writing a TREC run. Prints JSON.
Not imported by the project; fast-plaid pins its own torch, hence its own virtualenv
(``bench/setup_fastplaid_venv.sh``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from fast_plaid import search


def read_docs(root: str) -> tuple[list[torch.Tensor], list[str]]:
    docs, ids = [], []
    for path in sorted(glob.glob(os.path.join(root, "embeddings", "shard-*.parquet"))):
        t = pq.read_table(path)
        dim = int(t.schema.metadata[b"colbert_batch.dim"])
        ids += t["doc_id"].to_pylist()
        for blob in t["embeddings"].to_pylist():
            docs.append(
                torch.from_numpy(np.frombuffer(blob, "<f2").reshape(-1, dim).astype(np.float32))
            )
    return docs, ids


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--embeddings", required=True)
    p.add_argument("--index", required=True)
    p.add_argument("--nbits", type=int, default=4)
    p.add_argument("--queries", default=None, help="npz: query_ids (json str) + q_<i> arrays")
    p.add_argument("--run", default=None, help="TREC run output for --queries")
    p.add_argument("--top-k", type=int, default=100)
    p.add_argument("--n-ivf-probe", type=int, default=4)
    p.add_argument("--n-full-scores", type=int, default=1024)
    p.add_argument("--skip-build", action="store_true")
    args = p.parse_args()
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    docs, ids = read_docs(args.embeddings)
    n_tokens = sum(d.shape[0] for d in docs)
    if not args.skip_build:
        shutil.rmtree(args.index, ignore_errors=True)
        fp = search.FastPlaid(index=args.index, device="cpu")
        t0 = time.perf_counter()
        fp.create(documents_embeddings=docs, nbits=args.nbits)
        out["build_s"] = round(time.perf_counter() - t0, 1)
        out["bytes_per_token"] = round(du(args.index) / n_tokens, 2)
    out["n_tokens"] = n_tokens
    if args.queries:
        fp = search.FastPlaid(index=args.index, device="cpu")
        z = np.load(args.queries)
        qids = json.loads(str(z["query_ids"]))
        queries = [torch.from_numpy(z[f"q_{i}"].astype(np.float32)) for i in range(len(qids))]
        fp.search(
            queries_embeddings=queries[:4],
            top_k=args.top_k,
            show_progress=False,
            n_ivf_probe=args.n_ivf_probe,
            n_full_scores=args.n_full_scores,
        )
        t0 = time.perf_counter()
        res = fp.search(
            queries_embeddings=queries,
            top_k=args.top_k,
            show_progress=False,
            n_ivf_probe=args.n_ivf_probe,
            n_full_scores=args.n_full_scores,
        )
        secs = time.perf_counter() - t0
        out |= {"search_s": round(secs, 2), "qps": round(len(qids) / secs, 2)}
        with open(args.run, "w", encoding="utf-8") as fh:
            for qid, hits in zip(qids, res, strict=True):
                for rank, (doc, score) in enumerate(hits, start=1):
                    fh.write(f"{qid} Q0 {ids[doc]} {rank} {score:.6f} fast-plaid\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
