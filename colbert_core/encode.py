"""Encode a corpus into token-embedding shards (the single-process engine).

The corpus stream is cut into fixed shards: shard ``k`` holds documents
``[k * shard_size, (k + 1) * shard_size)`` of the corpus order (bad records skipped under
``--on-bad-record skip`` do not take a position). Shards are written atomically and
recorded in the manifest one by one, so an interrupted job resumes where it stopped.
The Ray job in :mod:`jobs` reuses :func:`encode_shard` and the manifest logic here.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .data import Document, OnBadRecord, RejectLog, open_corpus
from .encoder import ColBERTEncoder
from .shards import SHARD_DIR, ShardInfo, build_shard, write_shard
from .store import (
    MANIFEST,
    MANIFEST_VERSION,
    ManifestError,
    load_manifest,
    shard_infos,
    shard_to_json,
    write_manifest,
)

logger = logging.getLogger(__name__)

REJECTS = "rejects.jsonl"


@dataclass(frozen=True)
class EncodeConfig:
    """Everything that determines an encode job's output (written into the manifest)."""

    corpus: str
    model: str
    out: str
    shard_size: int = 10_000
    batch_size: int = 32
    doc_maxlen: int | None = None
    on_bad_record: str = "error"

    def __post_init__(self) -> None:
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        OnBadRecord(self.on_bad_record)  # raises ValueError naming the bad value

    def output_defining(self) -> dict[str, Any]:
        """The fields that must match for an existing output to be resumed."""
        d = dataclasses.asdict(self)
        d.pop("out")
        d.pop("batch_size")  # batching does not change the vectors beyond float noise
        return d


@dataclass
class EncodeSummary:
    docs: int = 0
    tokens: int = 0
    rejects: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["docs_per_s"] = round(self.docs / self.seconds, 2) if self.seconds else None
        d["tokens_per_s"] = round(self.tokens / self.seconds, 2) if self.seconds else None
        return d


def iter_shards(
    docs: Iterator[Document] | Any, shard_size: int
) -> Iterator[tuple[int, int, list[Document]]]:
    """Yield ``(shard_id, first_doc_index, documents)`` in corpus order."""
    it = iter(docs)
    for shard_id in itertools.count():
        chunk = list(itertools.islice(it, shard_size))
        if not chunk:
            return
        yield shard_id, shard_id * shard_size, chunk


def encode_shard(
    encoder: ColBERTEncoder,
    shard_id: int,
    first_doc: int,
    docs: list[Document],
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[bytes, int]:
    """Encode one shard's documents; returns the Parquet bytes and the token count."""
    vectors = encoder.encode_documents(
        [d.contents for d in docs], batch_size=batch_size, progress=progress
    )
    data = build_shard(
        [d.doc_id for d in docs],
        range(first_doc, first_doc + len(docs)),
        vectors,
        encoder.dim,
        encoder.fingerprint,
    )
    return data, sum(v.shape[0] for v in vectors)


def prepare_output(
    config: EncodeConfig, encoder: ColBERTEncoder, *, overwrite: bool
) -> dict[int, ShardInfo]:
    """Check an existing ROOT against this job; return the shards that can be kept.

    Raises
    ------
    ManifestError
        When ROOT holds the output of a different model or configuration and
        ``overwrite`` is false.
    """
    root = Path(config.out)
    if not (root / MANIFEST).exists():
        if overwrite:
            _remove_shards(root)
        return {}
    if overwrite:
        logger.info("--overwrite: discarding the existing output in %s", root)
        _remove_shards(root)
        (root / MANIFEST).unlink()
        return {}
    manifest = load_manifest(root)
    old_fp = manifest.get("encoder", {}).get("fingerprint")
    if old_fp != encoder.fingerprint:
        raise ManifestError(
            f"{root} holds embeddings from a different model or encoder settings "
            f"(fingerprint {old_fp} vs {encoder.fingerprint}); pass --overwrite to replace "
            "them or choose another --out"
        )
    old_cfg = manifest.get("config", {})
    new_cfg = config.output_defining()
    diff = {k: (old_cfg.get(k), v) for k, v in new_cfg.items() if old_cfg.get(k) != v}
    if diff:
        raise ManifestError(
            f"{root} was written with a different configuration {diff} (old, new); pass "
            "--overwrite to replace it or choose another --out"
        )
    kept: dict[int, ShardInfo] = {}
    for info in shard_infos(manifest):
        path = root / SHARD_DIR / info.name
        if path.is_file() and path.stat().st_size == info.bytes and _sha256(path) == info.sha256:
            kept[info.shard_id] = info
        else:
            logger.warning("shard %s is missing or differs from the manifest: re-encoding", path)
    return kept


def run_encode(
    config: EncodeConfig,
    encoder: ColBERTEncoder,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Encode ``config.corpus`` into ``config.out`` in this process; returns the manifest.

    ``progress(docs, tokens)`` is called after every encoded batch.
    """
    root = Path(config.out)
    kept = prepare_output(config, encoder, overwrite=overwrite)
    rejects = RejectLog()
    corpus = open_corpus(
        config.corpus, on_bad_record=OnBadRecord(config.on_bad_record), rejects=rejects
    )
    summary = EncodeSummary()
    shards: dict[int, ShardInfo] = dict(kept)
    manifest = _manifest(config, encoder, shards, summary, complete=False)
    write_manifest(root, manifest)
    start = time.perf_counter()
    for shard_id, first_doc, docs in iter_shards(corpus, config.shard_size):
        info = kept.get(shard_id)
        if info is not None and info.n_docs == len(docs) and info.first_doc == first_doc:
            summary.shards_skipped += 1
            summary.docs += info.n_docs
            summary.tokens += info.n_tokens
            if progress:
                progress(info.n_docs, info.n_tokens)
            continue
        data, n_tokens = encode_shard(
            encoder, shard_id, first_doc, docs, batch_size=config.batch_size, progress=progress
        )
        shards[shard_id] = write_shard(root, shard_id, first_doc, data, len(docs), n_tokens)
        summary.shards_written += 1
        summary.docs += len(docs)
        summary.tokens += n_tokens
        summary.seconds = time.perf_counter() - start
        write_manifest(root, _manifest(config, encoder, shards, summary, complete=False))
    summary.seconds = time.perf_counter() - start
    summary.rejects = len(rejects)
    expected = range(len(shards))
    if sorted(shards) != list(expected) or summary.docs != sum(s.n_docs for s in shards.values()):
        raise ManifestError(
            f"{root}: shards {sorted(shards)} do not cover the corpus ({summary.docs} docs); "
            "the corpus changed since the previous run: pass --overwrite"
        )
    if len(rejects):
        rejects.write_jsonl(root / REJECTS)
        logger.warning("%d bad records skipped; see %s", len(rejects), root / REJECTS)
    manifest = _manifest(config, encoder, shards, summary, complete=True)
    write_manifest(root, manifest)
    return manifest


def _manifest(
    config: EncodeConfig,
    encoder: ColBERTEncoder,
    shards: dict[int, ShardInfo],
    summary: EncodeSummary,
    *,
    complete: bool,
) -> dict[str, Any]:
    ordered = [shards[k] for k in sorted(shards)]
    return {
        "format_version": MANIFEST_VERSION,
        "complete": complete,
        "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": config.output_defining() | {"batch_size": config.batch_size},
        "encoder": encoder.describe(),
        "dim": encoder.dim,
        "dtype": "float16",
        "shards": [shard_to_json(s) for s in ordered],
        "rejects": summary.rejects,
        "totals": {
            "docs": sum(s.n_docs for s in ordered),
            "tokens": sum(s.n_tokens for s in ordered),
            "shards": len(ordered),
        },
        "summary": summary.as_dict(),
    }


def _remove_shards(root: Path) -> None:
    shard_dir = root / SHARD_DIR
    if shard_dir.is_dir():
        for f in shard_dir.glob("*.parquet"):
            f.unlink()


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
