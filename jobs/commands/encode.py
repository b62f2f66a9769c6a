"""`colbert-batch encode`: corpus -> token-embedding shards + manifest, on Ray actors."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from colbert_core.data import open_corpus
from colbert_core.embeddings import (
    DEFAULT_SHARD_SIZE,
    EncodeConfig,
    Manifest,
    ManifestBook,
    ManifestError,
    ShardInfo,
    ShardTask,
    corpus_shards,
    open_job_corpus,
    prepare_output,
)
from colbert_core.encoder import EncoderRecord
from colbert_core.storage import open_storage

from ..cluster import ClusterOptions, connect_for, place
from ..cluster.encode_actors import run_pool
from ..cluster.hooks import park_point
from ..console import print_json, progress_bar

logger = logging.getLogger(__name__)

HELP = "encode a corpus into token-embedding shards"


@dataclass(frozen=True)
class Config:
    """An encode job: what defines the output, where it runs, whether to replace."""

    encode: EncodeConfig
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    overwrite: bool = False


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        required=True,
        help="BEIR folder, beir:<name>, irds:<id>, or a .jsonl/.tsv/.parquet file",
    )
    p.add_argument(
        "--model",
        help="checkpoint directory, alias (default: minilm, the packaged all-MiniLM-L6-v2) "
        "or s3://bucket/models/NAME/ (downloaded once per node, checked); a directory must "
        "hold identical files on every worker node",
    )
    p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix (ROOT)")
    p.add_argument(
        "--shard-size",
        type=int,
        help=f"documents per shard (default {DEFAULT_SHARD_SIZE}: several shards even for "
        "small corpora, so every worker gets work; shard k holds documents [k*N, (k+1)*N) "
        "whatever the number of workers)",
    )
    add_cluster_arguments(p, gpus=True)
    p.add_argument("--batch-size", type=int, help="documents per forward pass (default 32)")
    p.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="encoder precision (auto: fp32 on CPU, bf16/fp16 on GPU; bf16 on CPUs with AMX "
        "is ~2.5x faster)",
    )
    p.add_argument("--doc-maxlen", type=int, help="override the checkpoint's document length")
    p.add_argument(
        "--max-docs",
        type=int,
        help="encode only the first N documents (default: all); a later run with a larger N "
        "keeps the shards already written",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output made with another model or config",
    )
    p.add_argument(
        "--on-bad-record",
        choices=["error", "skip"],
        help="stop at a bad record (default) or skip it into rejects.jsonl",
    )


def add_cluster_arguments(p: argparse.ArgumentParser, *, gpus: bool) -> None:
    """The Ray options shared by the commands that run actors."""
    p.add_argument(
        "--workers",
        type=int,
        help="Ray actors (default: one per GPU" + (", else one per CPU)" if gpus else ")"),
    )
    if gpus:
        p.add_argument(
            "--gpus-per-worker",
            type=float,
            help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)",
        )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        help="CPUs per actor (default: (cluster CPUs - 0.5) / workers)",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        help="torch threads per CPU actor (default 1; results are bit-identical for any "
        "--workers at the same value)",
    )
    p.add_argument(
        "--max-retries", type=int, help="retries of a failed item before the job fails (3)"
    )
    p.add_argument(
        "--ray-address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local one)"
    )
    add_shared_fs_argument(p)


def add_shared_fs_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shared-fs",
        action="store_true",
        help="local paths are on a mount every node sees at the same path (NFS, EFS, "
        "Lustre); without it a multi-node cluster takes s3:// for what workers read or write",
    )


def run(config: Config) -> Manifest:
    """Encode the corpus on Ray actors; returns the complete manifest."""
    job = config.encode
    driver = _Driver(job, config.overwrite)
    corpus, rejects = open_job_corpus(job)
    shards = corpus_shards(job, corpus, rejects, driver.storage)  # an empty corpus: refused
    res = connect_for(
        config.cluster.ray_address, {"--out": job.out}, shared_fs=config.cluster.shared_fs
    )
    placement = place(config.cluster, res, use_gpus=True)
    logger.info(
        "encoding %s -> %s with %d worker(s) (%.2g CPU, %.2g GPU, %s torch threads each)",
        job.corpus,
        job.out,
        placement.workers,
        placement.num_cpus,
        placement.num_gpus,
        placement.torch_threads or "default",
    )
    total = open_corpus(job.corpus).estimate_count()
    if total is not None and job.max_docs is not None:
        total = min(total, job.max_docs)
    with progress_bar(total, "encode") as bar:
        driver.bar = bar
        stats, pool = run_pool(
            job,
            placement,
            driver.tasks(shards),
            max_retries=config.cluster.max_retries,
            on_done=driver.record,
            on_progress=driver.progress,
            on_started=driver.started,
        )
    driver.book.summary.workers = _worker_summary(stats)
    driver.book.summary.nodes = _node_summary(stats)
    driver.book.summary.retries = pool.retries
    driver.book.summary.replaced_workers = pool.replaced
    return driver.book.finish(rejects)


class _Driver:
    """The driver's side of an encode job: resume decisions, skipping, progress."""

    def __init__(self, job: EncodeConfig, overwrite: bool):
        self.job = job
        self.overwrite = overwrite
        self.storage = open_storage(job.out)
        self.book: ManifestBook | None = None  # type: ignore[assignment]
        self.bar: Any = None
        self.skipped_docs = 0
        self.skipped_tokens = 0

    def started(self, record: EncoderRecord) -> None:
        # Every worker must load the same model: the first one fixes the fingerprint and
        # decides whether the existing output can be resumed.
        if self.book is None:
            kept = prepare_output(
                self.job, record.fingerprint, self.storage, overwrite=self.overwrite
            )
            self.book = ManifestBook(self.job, record, self.storage, kept)
            self.book.write(complete=False)
        elif record.fingerprint != self.book.encoder.fingerprint:
            raise ManifestError(
                "encoder workers loaded different model files (fingerprints "
                f"{self.book.encoder.fingerprint} vs {record.fingerprint}); "
                "make the model directory identical on every node"
            )

    def record(self, info: ShardInfo) -> None:
        self.book.record(info)
        park_point("encode-recorded")

    def tasks(self, shards: Iterator[ShardTask]) -> Iterator[ShardTask]:
        for task in shards:
            if self.book.can_skip(task):
                self.book.skipped(task)
                info = self.book.kept[task.shard_id]
                self.skipped_docs += info.n_docs
                self.skipped_tokens += info.n_tokens
                continue
            yield task

    def progress(self, docs: int, tokens: int) -> None:
        docs += self.skipped_docs
        tokens += self.skipped_tokens
        elapsed = self.bar.format_dict.get("elapsed") or 0.0
        self.bar.set_postfix(
            tokens=f"{tokens:,}",
            tok_s=f"{tokens / elapsed:,.0f}" if elapsed else "-",
            refresh=False,
        )
        self.bar.update(docs - self.bar.n)


def _worker_summary(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        pid: {
            "node_id": s.get("node_id"),
            "shards": s["shards"],
            "docs": s["docs"],
            "tokens": s["tokens"],
            "busy_s": round(s["busy_s"], 2),
            "docs_per_s": round(s["docs"] / s["busy_s"], 2) if s["busy_s"] else None,
            "tokens_per_s": round(s["tokens"] / s["busy_s"], 1) if s["busy_s"] else None,
        }
        for pid, s in stats.items()
    }


def _node_summary(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per node: its workers and what they encoded (this run's shards, not skipped ones)."""
    nodes: dict[str, dict[str, Any]] = {}
    for s in stats.values():
        node = nodes.setdefault(
            str(s.get("node_id")),
            {"node_ip": s.get("node_ip"), "workers": 0, "shards": 0, "docs": 0, "tokens": 0},
        )
        node["workers"] += 1
        for key in ("shards", "docs", "tokens"):
            node[key] += s[key]
    return nodes


def ensure_encoded(job: Config, *, force: bool = False) -> Manifest | None:
    """Run ``job`` unless its output is already complete for it; the manifest, or ``None``
    when nothing had to be encoded.

    For callers that own the output folder (``pipeline``, ``study``): new output-defining
    settings replace the old embeddings; an unchanged, unfinished output is resumed, and
    one that holds fewer documents than ``max_docs`` asks for is extended.
    """
    manifest = Manifest.find(job.encode.out)
    if not force and manifest is not None and manifest.is_complete_for(job.encode):
        logger.info("stage encode: %s is complete, skipping", job.encode.out)
        return None
    changed = manifest.config_differences(job.encode) if manifest is not None else {}
    if changed:
        logger.info("stage encode: settings changed %s (old, new): re-encoding", changed)
        job = dataclasses.replace(job, overwrite=True)
    logger.info("stage encode -> %s", job.encode.out)
    return run(job)


def report(config: Config, manifest: Manifest) -> None:
    print_json({"out": config.encode.out, **manifest.totals(), **manifest.summary})
