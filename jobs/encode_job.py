"""`colbert-batch encode`: corpus -> token-embedding shards + manifest, on Ray actors."""

from __future__ import annotations

import argparse
import json
import logging
import math
from typing import Any

from colbert_core.encode import (
    EncodeConfig,
    ManifestBook,
    iter_shards,
    open_job_corpus,
    prepare_output,
)
from colbert_core.storage import open_storage
from colbert_core.store import ManifestError

from . import ray_runtime
from ._console import progress_bar
from .encode_workers import WorkerSpec, run_pool

logger = logging.getLogger(__name__)

#: CPUs left unclaimed by encoder actors on CPU-only clusters, so Ray's own tasks (and
#: the progress tracker) always get scheduled: actors holding every CPU hang Ray silently.
CPU_HEADROOM = 0.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        required=True,
        help="BEIR folder, beir:<name>, irds:<id>, or a .jsonl/.tsv/.parquet file",
    )
    p.add_argument(
        "--model",
        default="minilm",
        help="checkpoint directory or alias (default: minilm, the packaged "
        "all-MiniLM-L6-v2); must exist on every worker node",
    )
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix (ROOT)")
    p.add_argument("--shard-size", type=int, default=10_000, help="documents per shard")
    p.add_argument(
        "--workers", type=int, default=None, help="encoder actors (default: one per GPU, else 1)"
    )
    p.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs per actor (default: CPU-only: (cluster CPUs - 0.5) / workers)",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="torch threads per CPU actor (default 1; shards are bit-identical "
        "for any --workers at the same value)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="documents per forward pass")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="encoder precision (auto: fp32 on CPU, bf16/fp16 on GPU; bf16 on CPUs with AMX "
        "is ~2.5x faster)",
    )
    p.add_argument(
        "--doc-maxlen", type=int, default=None, help="override the checkpoint's document length"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (default: $RAY_ADDRESS, else a local cluster)",
    )
    p.add_argument(
        "--max-retries", type=int, default=3, help="retries of a failed shard before the job fails"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output made with another model or config",
    )
    p.add_argument(
        "--on-bad-record",
        choices=["error", "skip"],
        default="error",
        help="stop at a bad record (default) or skip it into rejects.jsonl",
    )


def worker_spec(args: argparse.Namespace, res: ray_runtime.ClusterResources) -> WorkerSpec:
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if res.gpus else 0.0)
    if gpus > 0:
        workers = args.workers or max(1, int(res.gpus // gpus))
        cpus = args.cpus_per_worker if args.cpus_per_worker is not None else 1.0
        return WorkerSpec(workers, cpus, gpus, None, "cuda", args.max_retries)
    # One single-threaded actor per core by default. The thread count is fixed rather than
    # derived from the worker count because oneDNN partitions small GEMMs differently for
    # different thread counts (last-bit differences): fixing it makes shard bytes identical
    # whatever the number of workers. One thread per actor is also the most efficient per
    # core.
    workers = args.workers if args.workers is not None else max(1, math.floor(res.cpus))
    if workers <= 0:
        raise ValueError(f"--workers must be positive, got {workers}")
    if args.threads_per_worker <= 0:
        raise ValueError(f"--threads-per-worker must be positive, got {args.threads_per_worker}")
    cpus = args.cpus_per_worker
    if cpus is None:
        cpus = max(0.05, (res.cpus - CPU_HEADROOM) / workers)
    return WorkerSpec(workers, cpus, 0.0, args.threads_per_worker, "cpu", args.max_retries)


def run(args: argparse.Namespace) -> int:
    config = EncodeConfig(
        corpus=args.corpus,
        model=args.model,
        out=args.out,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        doc_maxlen=args.doc_maxlen,
        on_bad_record=args.on_bad_record,
        dtype=args.dtype,
    )
    res = ray_runtime.connect(args.ray_address)
    spec = worker_spec(args, res)
    logger.info(
        "encoding %s -> %s with %d worker(s) (%.2g CPU, %.2g GPU, %s torch threads each)",
        args.corpus,
        args.out,
        spec.workers,
        spec.num_cpus,
        spec.num_gpus,
        spec.torch_threads or "default",
    )
    storage = open_storage(args.out)
    state: dict[str, Any] = {}

    def check(description: dict[str, Any]) -> None:
        # Every worker must load the same model: the first one fixes the fingerprint and
        # decides whether the existing output can be resumed.
        if "book" not in state:
            kept = prepare_output(
                config, description["fingerprint"], storage, overwrite=args.overwrite
            )
            state["book"] = ManifestBook(config, description, storage, kept)
            state["book"].write(complete=False)
        elif description["fingerprint"] != state["book"].encoder["fingerprint"]:
            raise ManifestError(
                "encoder workers loaded different model files (fingerprints "
                f"{state['book'].encoder['fingerprint']} vs {description['fingerprint']}); "
                "make the model directory identical on every node"
            )

    corpus, rejects = open_job_corpus(config)
    with progress_bar(None, "encode") as bar:
        skipped = {"docs": 0, "tokens": 0}

        def tasks():
            for task in iter_shards(corpus, config.shard_size):
                book = state["book"]
                if book.can_skip(task):
                    book.skipped(task)
                    info = book.kept[task.shard_id]
                    skipped["docs"] += info.n_docs
                    skipped["tokens"] += info.n_tokens
                    continue
                yield task

        def progress(docs: int, tokens: int) -> None:
            docs += skipped["docs"]
            tokens += skipped["tokens"]
            elapsed = bar.format_dict.get("elapsed") or 0.0
            bar.set_postfix(
                tokens=tokens, tok_s=f"{tokens / elapsed:,.0f}" if elapsed else "-", refresh=False
            )
            bar.update(docs - bar.n)

        worker_stats = run_pool(
            config,
            spec,
            tasks(),
            on_done=lambda info: state["book"].record(info),
            on_progress=progress,
            describe_check=check,
        )
    book: ManifestBook = state["book"]
    book.summary.workers = {
        pid: {
            "shards": s["shards"],
            "docs": s["docs"],
            "tokens": s["tokens"],
            "busy_s": round(s["busy_s"], 2),
            "docs_per_s": round(s["docs"] / s["busy_s"], 2) if s["busy_s"] else None,
            "tokens_per_s": round(s["tokens"] / s["busy_s"], 1) if s["busy_s"] else None,
        }
        for pid, s in worker_stats.items()
    }
    manifest = book.finish(rejects)
    print(json.dumps({"out": args.out, **manifest["totals"], **manifest["summary"]}, indent=2))
    return 0
