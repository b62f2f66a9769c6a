"""Coarse assignment throughput of an HNSW quantizer vs its number of centroids (d=384).

Tokens/s of `search(x, 1)` on 200K unit vectors drawn like the study's synthetic tokens,
for HNSW32 over 8K-32K centroids stored as float32 (`IVF{n}_HNSW32`'s quantizer) or SQ8.
Needs a study's synthetic template: `python bench/coarse_assign.py out/study-scifact`.
"""

import sys
import time

import faiss
import numpy as np

faiss.omp_set_num_threads(2)
rng = np.random.default_rng(0)
d = 384
z = np.load(sys.argv[1] + "/synthetic/template.npz")
real = z["vectors"].astype(np.float32)


def synth(n, seed):
    r = np.random.default_rng(seed)
    x = real[r.integers(0, len(real), n)] + r.standard_normal((n, d), dtype=np.float32) * (
        0.1 / np.sqrt(d)
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


q = synth(200_000, 1)
for nlist in (8192, 16384, 32768):
    cents = synth(nlist, 2 + nlist)  # centroid positions drawn like data (a stand-in for k-means)
    for kind in ("flat", "sq8"):
        hnsw = (
            faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
            if kind == "flat"
            else faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
        )
        if kind == "sq8":
            hnsw.train(cents)
        hnsw.add(cents)
        hnsw.hnsw.efSearch = 16
        hnsw.search(q[:5000], 1)
        t = time.perf_counter()
        hnsw.search(q, 1)
        dt = time.perf_counter() - t
        print(
            f"nlist={nlist:6d} {kind:4s} table={nlist * d * (4 if kind == 'flat' else 1) / 2**20:5.1f} MiB  {len(q) / dt / 1000:7.1f}k tokens/s",
            flush=True,
        )
