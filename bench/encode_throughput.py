"""Encode throughput vs the machine's dense-matmul ceiling for the same model.

Measures documents/s and tokens/s of ``ColBERTEncoder.encode_documents`` on a real corpus,
then the GFLOP/s this machine reaches on the model's own GEMM shapes, and reports how
close the encoder gets to that ceiling:

    ceiling tokens/s = measured GFLOP/s / FLOPs per token
    efficiency       = achieved tokens/s / ceiling tokens/s

Usage::

    python bench/encode_throughput.py --dataset beir:scifact [--limit N] [--model minilm] \
        [--modes single,ray1,ray2,pylate]

``rayN`` runs the real ``colbert-batch encode`` Ray job with N workers (encode-phase time
from its manifest; Ray start-up and model loading are reported separately). ``pylate``
runs PyLate's encoder on the same model and texts in its own virtualenv
(``bench/setup_pylate_venv.sh``).
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


def matmul_gflops(config, rows: int = 4096, repeats: int = 20, dtype=torch.float32) -> float:
    """Best sustained GFLOP/s in ``dtype`` over the model's GEMM shapes (rows x h @ h x n)."""
    h, i = config.hidden_size, config.intermediate_size
    best = 0.0
    for k, n in ((h, 3 * h), (h, i), (i, h)):
        a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        for _ in range(3):
            a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        seconds = time.perf_counter() - start
        best = max(best, 2 * rows * k * n * repeats / seconds / 1e9)
    return best


def run_single(encoder, texts: list[str], batch_size: int) -> dict:
    encoder.encode_documents(texts[:64], batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    vectors = encoder.encode_documents(texts, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return {
        "mode": f"single-process, {str(encoder.dtype).removeprefix('torch.')}",
        "seconds": seconds,
        "tokens_kept": sum(v.shape[0] for v in vectors),
        "torch_threads": torch.get_num_threads(),
    }


def run_ray(texts_file: Path, n_docs: int, workers: int, args, tmp: Path) -> dict:
    """The real `colbert-batch encode` Ray job; encode-phase time from its manifest."""
    out = tmp / f"ray-{workers}"
    shard = max(1, -(-n_docs // 8))
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        "encode",
        "--corpus",
        str(texts_file),
        "--out",
        str(out),
        "--model",
        args.model,
        "--workers",
        str(workers),
        "--shard-size",
        str(shard),
        "--batch-size",
        str(args.batch_size),
        "--threads-per-worker",
        str(args.threads_per_worker),
        "--dtype",
        args.dtype,
    ]
    if args.doc_maxlen:
        cmd += ["--doc-maxlen", str(args.doc_maxlen)]
    start = time.perf_counter()
    subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | {"CI": "1"},
    )
    wall = time.perf_counter() - start
    manifest = json.loads((out / "manifest.json").read_text())
    summary = manifest["summary"]
    return {
        "mode": f"ray, {workers} worker(s) x {args.threads_per_worker} thread(s), {args.dtype}",
        "seconds": summary["seconds"],
        "wall_seconds_incl_startup": round(wall, 2),
        "tokens_kept": manifest["totals"]["tokens"],
    }


def run_pylate(texts_file_lines: Path, encoder, args) -> dict | None:
    python = Path(args.pylate_venv) / "bin" / "python"
    if not python.exists():
        print(f"(skipping PyLate: no {python}; run bench/setup_pylate_venv.sh)", file=sys.stderr)
        return None
    cmd = [
        str(python),
        str(Path(__file__).with_name("pylate_encode.py")),
        "--model",
        str(encoder.path),
        "--texts",
        str(texts_file_lines),
        "--document-length",
        str(encoder.settings.doc_maxlen),
        "--batch-size",
        str(args.batch_size),
        "--dtype",
        "bf16" if args.dtype == "bf16" else "fp32",
    ]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "mode": f"PyLate 1.6.0 models.ColBERT.encode, {'bf16' if args.dtype == 'bf16' else 'fp32'}",
        "seconds": out["seconds"],
        "tokens_kept": out["tokens_kept"],
        "torch_threads": out["torch_threads"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="beir:scifact")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--limit", type=int, default=None, help="first N documents only")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--doc-maxlen", type=int, default=None)
    parser.add_argument(
        "--modes",
        default="single",
        help="comma list of single, ray1, ray2, ... (rayN: N workers), pylate",
    )
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--dtype", default="auto", help="encoder precision for single/rayN")
    parser.add_argument("--pylate-venv", default=str(Path(__file__).parent / ".venv-pylate"))
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    encoder = load_encoder(args.model, doc_maxlen=args.doc_maxlen, dtype=args.dtype)
    texts, ids = [], []
    for doc in open_corpus(args.dataset):
        texts.append(doc.contents)
        ids.append(doc.doc_id)
        if args.limit and len(texts) >= args.limit:
            break
    lengths = np.array([len(x) for x in encoder.tokenize(texts, is_query=False)])
    processed = int(lengths.sum())
    mean_len = float((lengths**2).sum() / processed)  # token-weighted sequence length
    config = encoder.backbone.config
    proj = encoder.settings.dim if encoder.projection is not None else None
    fpt = flops_per_token(config, mean_len, proj)
    # The ceiling in the precision the encoder runs in (AMX makes bf16 far faster).
    gflops = matmul_gflops(config, dtype=encoder.dtype)
    ceiling = gflops * 1e9 / fpt
    header = {
        "dataset": args.dataset,
        "model": str(encoder.path),
        "docs": len(texts),
        "tokens_processed": processed,
        "flops_per_token_mflop": round(fpt / 1e6, 2),
        "matmul_gflops": round(gflops, 1),
        "matmul_dtype": str(encoder.dtype).removeprefix("torch."),
        "ceiling_tokens_per_s": round(ceiling, 0),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="encode-bench-") as tmpdir:
        tmp = Path(tmpdir)
        corpus = tmp / "corpus.jsonl"
        corpus.write_text(
            "".join(
                json.dumps({"_id": i, "text": t}) + "\n" for i, t in zip(ids, texts, strict=True)
            ),
            encoding="utf-8",
        )
        plain = tmp / "texts.jsonl"
        plain.write_text("".join(json.dumps(t) + "\n" for t in texts), encoding="utf-8")
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            if mode == "single":
                row = run_single(encoder, texts, args.batch_size)
            elif mode.startswith("ray"):
                row = run_ray(corpus, len(texts), int(mode[3:] or 1), args, tmp)
            elif mode == "pylate":
                row = run_pylate(plain, encoder, args)
            else:
                raise SystemExit(f"unknown mode {mode!r}")
            if row is None:
                continue
            row["docs_per_s"] = round(len(texts) / row["seconds"], 2)
            row["tokens_per_s"] = round(processed / row["seconds"], 0)
            row["efficiency_vs_matmul_ceiling"] = round(processed / row["seconds"] / ceiling, 3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {**header, "runs": rows}
    print(json.dumps(result, indent=2))
    print("\n| mode | docs/s | tokens/s | vs ceiling |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['docs_per_s']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['efficiency_vs_matmul_ceiling']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
