"""Index build benchmark: train s, add s, bytes/token and peak RSS per index type.

Each build runs in a fresh subprocess (`colbert-batch index`) so peak RSS is that build's
alone. Inputs: a real encode output (e.g. SciFact with MiniLM) and/or seeded synthetic
clustered token vectors written as shards at several sizes (the peak-RSS curve).

Usage::

    python bench/index_build.py --embeddings out/demo/embeddings --types flat,ivfpq,hnsw
    python bench/index_build.py --synthetic 1000000,2000000,5000000,10000000 --dim 128 \
        --types ivfpq [--workers 2]
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

from colbert_core.embeddings import Manifest, build_shard, write_shard
from colbert_core.tokenstore.store import store_label

DOCS_PER_SHARD = 20_000
TOKENS_PER_DOC = 100


def synthetic_root(root: Path, n_tokens: int, dim: int, seed: int = 0) -> Path:
    """Write ``n_tokens`` clustered unit vectors (1,000 gaussian centres) as shards."""
    if (root / "manifest.json").exists():
        return root
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    n_docs = n_tokens // TOKENS_PER_DOC
    shards, first = [], 0
    while first < n_docs:
        n = min(DOCS_PER_SHARD, n_docs - first)
        which = rng.integers(0, len(centres), size=n * TOKENS_PER_DOC)
        x = centres[which] + 0.35 * rng.standard_normal((n * TOKENS_PER_DOC, dim), np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vectors = list(x.astype(np.float16).reshape(n, TOKENS_PER_DOC, dim))
        data = build_shard(
            [f"d{first + i}" for i in range(n)], range(first, first + n), vectors, dim, "synthetic"
        )
        shards.append(write_shard(root, len(shards), first, data, n, n * TOKENS_PER_DOC))
        first += n
    Manifest.for_shards(
        shards, dim=dim, fingerprint="synthetic", config={"synthetic": True, "seed": seed}
    ).save(str(root))
    return root


def build(embeddings: Path, index_type: str, out: Path, workers: int, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "index",
        "--embeddings",
        str(embeddings),
        "--out",
        str(out),
        "--type",
        index_type,
        "--workers",
        str(workers),
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"CI": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    meta = json.loads((out / "meta.json").read_text())
    return {
        "type": index_type,
        "factory": meta["factory"],
        "n_tokens": meta["n_tokens"],
        "dim": meta["dim"],
        "train_s": meta["train_s"],
        "add_s": meta["add_s"],
        "wall_s": round(wall, 1),
        "index_bytes_per_token": meta["bytes_per_token"]["index"],
        "store": store_label(meta.get("store") or {}),
        "store_s": (meta.get("store") or {}).get("encode_s", 0.0),
        "store_bytes_per_token": meta["bytes_per_token"]["token_store"],
        "total_bytes_per_token": meta["bytes_per_token"]["total"],
        "peak_rss_mb": meta["peak_rss_mb"],
        "workers": workers,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embeddings", default=None, help="a real encode output to index")
    p.add_argument("--synthetic", default=None, help="comma list of synthetic token counts")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--types", default="flat,ivfpq,hnsw")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--work-dir", default=None, help="keep synthetic data and indices here")
    p.add_argument("--extra", default="", help="extra `colbert-batch index` arguments")
    args = p.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="index-bench-"))
    inputs: list[tuple[str, Path]] = []
    if args.embeddings:
        inputs.append((Path(args.embeddings).name, Path(args.embeddings)))
    for n in [int(x) for x in (args.synthetic or "").split(",") if x]:
        t0 = time.perf_counter()
        root = synthetic_root(work / f"synthetic-{n}-d{args.dim}", n, args.dim)
        print(f"synthetic {n} tokens ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        inputs.append((f"synthetic {n:,} x d{args.dim}", root))
    rows = []
    for label, root in inputs:
        for t in [x for x in args.types.split(",") if x]:
            row = build(root, t, work / f"idx-{root.name}-{t}", args.workers, args.extra.split())
            row["input"] = label
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(
        json.dumps(
            {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": rows}, indent=2
        )
    )
    print(
        "\n| input | type (factory) | store | tokens | train s | add s | store s | wall s "
        "| index B/token | store B/token | total B/token | peak RSS MB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['input']} | {r['type']} ({r['factory']}) | {r['store']} | {r['n_tokens']:,} | "
            f"{r['train_s']:.1f} | {r['add_s']:.1f} | {r['store_s']:.1f} | {r['wall_s']:.1f} | "
            f"{r['index_bytes_per_token']:.1f} | {r['store_bytes_per_token']:.1f} | "
            f"{r['total_bytes_per_token']:.1f} | {r['peak_rss_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()
