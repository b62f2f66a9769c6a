"""Token-store codecs for the exact stage, measured side by side (issue 9, before choosing).

Every codec compresses the same float16 token store of one index and is judged the same
way: the index's own ANN stage picks each query's candidates once (identical for every
codec), then exact MaxSim scores them over the codec's *decoded* vectors (L2-normalised,
as ColBERT's decompression does) and ir_measures gives nDCG@10. Beside quality: bytes per
token of the store (codes + centroid id), of everything the search reads (FAISS index +
store + mapping), encode time, and single-thread decode throughput against the float16 ->
float32 conversion the exact stage does today (a ratio from the same run).

Codecs:

* ``float16``: today's store (the reference; its "decode" is the exact stage's gather and
  float16 -> float32 conversion in torch).
* ``residual-b{1,2,4}``: ColBERTv2's codec (``indexing/codecs/residual.py``): centroid id
  (the IVF list of the index's coarse quantizer, reused: 2 bytes) + b-bit buckets per
  dimension of the residual; cutoffs and weights from quantiles of a training sample.
  Decoded here in numpy through a 256-entry byte lookup table.
* FAISS standalone codecs (``sa_encode``/``sa_decode``) on the same coarse quantizer:
  residual ScalarQuantizer 4 and 8 bit, residual PQ (d/8 and d/4 bytes, or ``--pq-m``),
  RaBitQ (``--rabitq-bits``: 1, or more with FAISS >= 1.12's multi-bit RaBitQ), and
  residual product-residual quantisation (``--prq SPLITSxSTAGES``: FAISS's additive
  ``ProductResidualQuantizer``, beam-searched codes; one byte per stage and split).
* ``residual OPQ{m}`` and ``residual PCA-balanced PQ{m}`` for each ``--pq-m``: residual PQ
  after a learned rotation (FAISS ``OPQMatrix``, or ``PCAMatrix`` with ``balanced_bins``).

Usage::

    python bench/store_codecs.py --index out/demo/index-ivfpq --dataset beir:scifact
    python bench/store_codecs.py --index out/bench/miracl/idx-ivfpq \
        --dataset beir:miracl-de-dev --pq-m 48,64,96 \
        --codecs "faiss IVF,PQ64x8 (residual);residual OPQ64"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import faiss
import numpy as np

from colbert_core.data import load_qrels, load_queries
from colbert_core.evaluation import evaluate
from colbert_core.evaluation.rundir import scored_docs
from colbert_core.index import load_index
from colbert_core.search import (
    CandidateScorer,
    SearchParams,
    default_params,
    encode_queries,
    load_query_encoder,
    ranked_list,
    search,
)

BLOCK = 65_536  # tokens per timed decode block (about one query's candidates)


@dataclasses.dataclass
class Codec:
    name: str
    code_bytes: int  # per token, centroid id included
    encode: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (x f32, list ids) -> codes
    decode: Callable[[np.ndarray], np.ndarray]  # codes -> (n, d) float32


def l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def residual_codec(centroids: np.ndarray, sample: np.ndarray, sample_lists: np.ndarray,
                   bits: int) -> Codec:  # fmt: skip
    """ColBERTv2's residual codec: quantile cutoffs/weights over all residual values."""
    d = centroids.shape[1]
    res = (sample - centroids[sample_lists]).ravel()
    n_buckets = 1 << bits
    cutoffs = np.quantile(res, np.arange(1, n_buckets) / n_buckets).astype(np.float32)
    weights = np.quantile(res, (np.arange(n_buckets) + 0.5) / n_buckets).astype(np.float32)
    per_byte = 8 // bits
    # Byte -> the per_byte bucket weights it holds (low bits first): decode is one gather.
    byte_values = np.arange(256)
    lut = np.stack(
        [weights[(byte_values >> (bits * j)) & (n_buckets - 1)] for j in range(per_byte)], axis=1
    ).astype(np.float32)  # (256, per_byte)

    def encode(x: np.ndarray, lists: np.ndarray) -> np.ndarray:
        buckets = np.searchsorted(cutoffs, x - centroids[lists]).astype(np.uint8)
        b = buckets.reshape(len(x), d // per_byte, per_byte)
        packed = np.zeros(b.shape[:2], np.uint8)
        for j in range(per_byte):
            packed |= b[:, :, j] << (bits * j)
        ids = lists.astype(np.uint16).view(np.uint8).reshape(-1, 2)
        return np.concatenate([ids, packed], axis=1)

    def decode(codes: np.ndarray) -> np.ndarray:
        lists = codes[:, :2].copy().view(np.uint16).ravel()
        res = lut[codes[:, 2:]].reshape(len(codes), d)
        res += centroids[lists]
        return res

    return Codec(f"residual-b{bits}", d * bits // 8 + 2, encode, decode)


def opq_codec(centroids: np.ndarray, sample: np.ndarray, sample_lists: np.ndarray,
              m: int, rotation: str = "opq") -> Codec:  # fmt: skip
    """Residual PQ after a rotation, both trained on the sample's residuals to the
    index's centroids (FAISS ``ProductQuantizer``; 2-byte centroid id). ``rotation``:
    ``opq`` (``OPQMatrix``, iterative) or ``pca`` (``PCAMatrix`` with ``balanced_bins``:
    principal directions dealt to the sub-quantizers so their variances balance, one
    eigendecomposition)."""
    d = centroids.shape[1]
    res = np.ascontiguousarray(sample - centroids[sample_lists], dtype=np.float32)
    if rotation == "opq":
        opq = faiss.OPQMatrix(d, m)
    else:
        opq = faiss.PCAMatrix(d, d, 0.0, False)
        opq.balanced_bins = m
    opq.train(res)
    pq = faiss.ProductQuantizer(d, m, 8)
    pq.train(opq.apply(res))

    def encode(x: np.ndarray, lists: np.ndarray) -> np.ndarray:
        r = np.ascontiguousarray(x - centroids[lists], dtype=np.float32)
        ids = lists.astype(np.uint16).view(np.uint8).reshape(-1, 2)
        return np.concatenate([ids, pq.compute_codes(opq.apply(r))], axis=1)

    def decode(codes: np.ndarray) -> np.ndarray:
        lists = codes[:, :2].copy().view(np.uint16).ravel()
        r = opq.reverse_transform(pq.decode(np.ascontiguousarray(codes[:, 2:])))
        return r + centroids[lists]

    name = f"residual OPQ{m}" if rotation == "opq" else f"residual PCA-balanced PQ{m}"
    return Codec(name, m + 2, encode, decode)


def faiss_codec(name: str, index: faiss.Index, sample: np.ndarray) -> Codec:
    index.train(sample)
    size = index.sa_code_size()

    def encode(x: np.ndarray, lists: np.ndarray) -> np.ndarray:
        return index.sa_encode(np.ascontiguousarray(x))

    def decode(codes: np.ndarray) -> np.ndarray:
        return index.sa_decode(codes)

    return Codec(name, size, encode, decode)


def faiss_codecs(
    quantizer: faiss.Index,
    d: int,
    nlist: int,
    sample: np.ndarray,
    pq_m: tuple[int, ...] = (),
    rabitq_bits: tuple[int, ...] = (1,),
    prq: tuple[tuple[int, int], ...] = (),
) -> list[Codec]:
    ip = faiss.METRIC_INNER_PRODUCT
    out = []
    for bits, qtype in ((4, faiss.ScalarQuantizer.QT_4bit), (8, faiss.ScalarQuantizer.QT_8bit)):
        idx = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, qtype, ip, True)
        out.append(faiss_codec(f"faiss IVF,SQ{bits} (residual)", idx, sample))
    for m in pq_m or (d // 8, d // 4):
        idx = faiss.IndexIVFPQ(quantizer, d, nlist, m, 8, ip)
        out.append(faiss_codec(f"faiss IVF,PQ{m}x8 (residual)", idx, sample))
    if hasattr(faiss, "IndexIVFRaBitQ"):
        for bits in rabitq_bits:
            # Multi-bit RaBitQ (nb_bits > 1) arrived in FAISS 1.12; 1 bit keeps the old name.
            idx = faiss.IndexIVFRaBitQ(quantizer, d, nlist, ip, True, bits)
            name = "faiss IVF,RaBitQ" if bits == 1 else f"faiss IVF,RaBitQ{bits}"
            out.append(faiss_codec(name, idx, sample))
    for splits, stages in prq:
        idx = faiss.IndexIVFProductResidualQuantizer(quantizer, d, nlist, splits, stages, 8, ip)
        out.append(faiss_codec(f"faiss IVF,PRQ{splits}x{stages}x8 (residual)", idx, sample))
    return out


def decode_rate(decode: Callable[[np.ndarray], np.ndarray], codes: np.ndarray) -> float:
    """Tokens per second decoding ``codes`` to normalised float32, one thread, best of 3."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        l2_normalise(decode(codes))
        best = min(best, time.perf_counter() - t0)
    return len(codes) / best


def float16_rate(block: np.ndarray) -> float:
    """Tokens per second of today's exact stage before its product: gather float16 rows
    into a reused buffer and convert them to float32 (torch, as ``CandidateScorer`` does),
    one thread, best of 3."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store = torch.from_numpy(block)
    rows = torch.arange(len(block))
    half = torch.empty_like(store)
    full = torch.empty(store.shape, dtype=torch.float32)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        torch.index_select(store, 0, rows, out=half)
        full.copy_(half)
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return len(block) / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="an IVF index folder (its store and quantizer)")
    p.add_argument("--dataset", default="beir:scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--train", type=int, default=100_000, help="training sample (tokens)")
    p.add_argument(
        "--codecs",
        default="",
        help="names to run, separated by semicolons (names hold commas; default: all)",
    )
    p.add_argument(
        "--pq-m", default="", help="residual PQ sub-quantizers, comma list (default: d/8,d/4)"
    )
    p.add_argument("--rabitq-bits", default="1", help="RaBitQ bits per dimension, comma list")
    p.add_argument(
        "--prq",
        default="",
        help="residual product-residual quantizers, comma list of SPLITSxSTAGES (e.g. 16x4)",
    )
    args = p.parse_args()

    loaded = load_index(args.index)
    ivf = faiss.extract_index_ivf(loaded.index)
    quantizer, nlist, d = ivf.quantizer, ivf.nlist, loaded.dim
    centroids = quantizer.reconstruct_n(0, nlist)
    tokens = loaded.store
    n = tokens.shape[0]
    rng = np.random.default_rng(0)
    sample = np.asarray(tokens[np.sort(rng.choice(n, min(args.train, n), replace=False))],
                        dtype=np.float32)  # fmt: skip
    t0 = time.perf_counter()
    lists = np.empty(n, np.int64)
    for lo in range(0, n, 262_144):
        lists[lo : lo + 262_144] = quantizer.assign(
            np.asarray(tokens[lo : lo + 262_144], dtype=np.float32), 1
        ).ravel()
    assign_s = time.perf_counter() - t0
    sample_lists = quantizer.assign(sample, 1).ravel()

    encoder = load_query_encoder(loaded.meta.encoder)
    queries = load_queries(args.dataset, split=args.split)
    qrels = load_qrels(args.dataset, split=args.split)
    qv = encode_queries(encoder, queries).vectors
    params = default_params(loaded.meta, SearchParams())
    scorer = CandidateScorer()

    def ndcg(store: np.ndarray) -> tuple[float, float]:
        results = search(dataclasses.replace(loaded, store=store), qv, params, scorer)
        ranked = {
            q.query_id: ranked_list(r.doc_index, r.scores, loaded.doc_ids)
            for q, r in zip(queries, results, strict=True)
        }
        ev = evaluate(scored_docs(ranked), qrels)
        return ev.measures["nDCG@10"], ev.measures["R@100"]

    f16_rate = float16_rate(np.ascontiguousarray(tokens[:BLOCK]))

    index_bpt = loaded.meta.bytes_per_token["index"]
    mapping_bpt = (loaded.meta.n_docs + 1) * 8 / n  # doc offsets (int64 per document)
    base_ndcg, base_r100 = ndcg(tokens)
    rows = [{
        "codec": "float16 (today)", "store_B_per_token": 2 * d,
        "total_B_per_token": round(index_bpt + 2 * d + mapping_bpt, 1),
        "nDCG@10": round(base_ndcg, 4), "delta_nDCG@10": 0.0, "R@100": round(base_r100, 4),
        "encode_s": 0.0, "decode_Mtok_s": round(f16_rate / 1e6, 2), "decode_vs_f16": 1.0,
    }]  # fmt: skip
    print(json.dumps(rows[-1]), file=sys.stderr)
    t0 = time.perf_counter()
    codecs = [residual_codec(centroids, sample, sample_lists, b) for b in (1, 2, 4)]
    pq_m = tuple(int(m) for m in args.pq_m.split(",") if m)
    wanted = {c.strip() for c in args.codecs.split(";") if c.strip()}
    codecs += [
        opq_codec(centroids, sample, sample_lists, m)
        for m in pq_m
        if not wanted or f"residual OPQ{m}" in wanted
    ]
    codecs += [
        opq_codec(centroids, sample, sample_lists, m, "pca")
        for m in pq_m
        if not wanted or f"residual PCA-balanced PQ{m}" in wanted
    ]
    rabitq_bits = tuple(int(b) for b in args.rabitq_bits.split(",") if b)
    prq = tuple(tuple(int(v) for v in spec.split("x")) for spec in args.prq.split(",") if spec)
    codecs += faiss_codecs(quantizer, d, nlist, sample, pq_m, rabitq_bits, prq)
    train_s = time.perf_counter() - t0
    for codec in codecs:
        if wanted and codec.name not in wanted:
            continue
        try:
            codec.decode(codec.encode(sample[:8], sample_lists[:8]))
        except RuntimeError as exc:  # e.g. a FAISS index without standalone decoding
            print(json.dumps({"codec": codec.name, "skipped": str(exc)[:200]}), file=sys.stderr)
            continue
        t0 = time.perf_counter()
        codes = np.concatenate([
            codec.encode(np.asarray(tokens[lo : lo + BLOCK], dtype=np.float32),
                         lists[lo : lo + BLOCK])
            for lo in range(0, n, BLOCK)
        ])  # fmt: skip
        encode_s = time.perf_counter() - t0
        faiss.omp_set_num_threads(1)
        rate = decode_rate(codec.decode, codes[:BLOCK])
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        decoded = np.concatenate([
            l2_normalise(codec.decode(codes[lo : lo + BLOCK])).astype(np.float16)
            for lo in range(0, n, BLOCK)
        ])  # fmt: skip
        score, r100 = ndcg(decoded)
        rows.append({
            "codec": codec.name, "store_B_per_token": codec.code_bytes,
            "total_B_per_token": round(index_bpt + codec.code_bytes + mapping_bpt, 1),
            "nDCG@10": round(score, 4), "delta_nDCG@10": round(score - base_ndcg, 4),
            "R@100": round(r100, 4), "encode_s": round(encode_s, 1),
            "decode_Mtok_s": round(rate / 1e6, 2), "decode_vs_f16": round(rate / f16_rate, 3),
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
        del codes, decoded
    summary = {
        "index": args.index, "factory": loaded.meta.factory, "tokens": n, "dim": d,
        "index_B_per_token": index_bpt, "mapping_B_per_token": round(mapping_bpt, 2),
        "assign_s": round(assign_s, 1), "train_all_codecs_s": round(train_s, 1),
        "search": dataclasses.asdict(params), "queries": len(queries),
        "machine": f"{platform.machine()} {platform.processor()}, {os.cpu_count()} cores",
        "faiss": faiss.__version__, "rows": rows,
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    print(
        "\n| store codec | store B/token | all B/token | nDCG@10 | delta | R@100 | encode s "
        "| decode M tok/s (1 thread) | decode vs float16 |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['codec']} | {r['store_B_per_token']} | {r['total_B_per_token']} | "
            f"{r['nDCG@10']:.4f} | {r['delta_nDCG@10']:+.4f} | {r['R@100']:.4f} | "
            f"{r['encode_s']} | {r['decode_Mtok_s']} | {r['decode_vs_f16']} |"
        )


if __name__ == "__main__":
    main()
