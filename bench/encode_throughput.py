"""Encode throughput vs the machine's dense-matmul ceiling for the same model.

Measures documents/s and tokens/s of ``ColBERTEncoder.encode_documents`` on a real corpus,
then the GFLOP/s this machine reaches on the model's own GEMM shapes, and reports how
close the encoder gets to that ceiling:

    ceiling tokens/s = measured GFLOP/s / FLOPs per token
    efficiency       = achieved tokens/s / ceiling tokens/s

Usage::

    python bench/encode_throughput.py --dataset beir:scifact [--limit N] [--model minilm]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from colbert_core import load_encoder
from colbert_core.data import open_corpus


def flops_per_token(config, seq_len: float, proj_dim: int | None) -> float:
    """Forward FLOPs per token of a BERT-style encoder at sequence length ``seq_len``."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = (
        2 * h * 3 * h  # Q, K, V projections
        + 2 * h * h  # attention output projection
        + 2 * 2 * h * i  # feed-forward up and down
        + 2 * 2 * seq_len * h  # scores QK^T and the weighted sum over values
    )
    return layers * per_layer + (2 * h * proj_dim if proj_dim else 0)


def matmul_gflops(config, rows: int = 4096, repeats: int = 20) -> float:
    """Best sustained fp32 GFLOP/s over the model's GEMM shapes (rows x h @ h x n)."""
    h, i = config.hidden_size, config.intermediate_size
    best = 0.0
    for k, n in ((h, 3 * h), (h, i), (i, h)):
        a, b = torch.randn(rows, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = time.perf_counter() - start
        best = max(best, 2 * rows * k * n * repeats / seconds / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beir:scifact")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--limit", type=int, default=None, help="first N documents only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--doc-maxlen", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    encoder = load_encoder(args.model, doc_maxlen=args.doc_maxlen)
    texts = []
    for doc in open_corpus(args.dataset):
        texts.append(doc.contents)
        if args.limit and len(texts) >= args.limit:
            break
    encoder.encode_documents(texts[:64], batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    vectors = encoder.encode_documents(texts, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    kept = sum(v.shape[0] for v in vectors)
    # FLOPs are spent on every input position (incl. punctuation dropped afterwards).
    lengths = np.array([len(x) for x in encoder.tokenize(texts, is_query=False)])
    processed = int(lengths.sum())
    mean_len = float((lengths**2).sum() / processed)  # token-weighted sequence length
    config = encoder.backbone.config
    proj = encoder.settings.dim if encoder.projection is not None else None
    fpt = flops_per_token(config, mean_len, proj)
    gflops = matmul_gflops(config)
    achieved = processed / seconds
    ceiling = gflops * 1e9 / fpt
    result = {
        "dataset": args.dataset,
        "model": str(encoder.path),
        "docs": len(texts),
        "tokens_processed": processed,
        "tokens_kept": kept,
        "seconds": round(seconds, 2),
        "docs_per_s": round(len(texts) / seconds, 1),
        "tokens_per_s": round(achieved, 0),
        "flops_per_token": round(fpt / 1e6, 2),
        "flops_per_token_unit": "MFLOP",
        "matmul_gflops": round(gflops, 1),
        "ceiling_tokens_per_s": round(ceiling, 0),
        "efficiency": round(achieved / ceiling, 3),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
