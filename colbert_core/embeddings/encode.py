"""Encode a corpus into token-embedding shards: the engine shared by every runner.

The corpus stream is cut into fixed shards: shard ``k`` holds documents
``[k * shard_size, (k + 1) * shard_size)`` of the corpus order (bad records skipped under
``--on-bad-record skip`` do not take a position), whatever runs the encoding. Each shard is
written atomically and only then recorded in the manifest, so a shard is either complete
and recorded or absent, and an interrupted job resumes where it stopped.

:func:`run_encode` runs everything in this process; the Ray job in :mod:`jobs` drives the
same pieces (:func:`prepare_output`, :func:`encode_shard`, :class:`ManifestBook`) from a
pool of actors.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..data import Document, RejectLog, open_corpus
from ..encoder import ColBERTEncoder, EncoderRecord
from ..errors import EmptyInputError
from ..storage import LocalStorage, Storage, open_storage, sha256_bytes
from .config import EncodeConfig
from .manifest import (
    MANIFEST,
    REJECTS,
    SHARD_DIR,
    Manifest,
    ManifestError,
    ShardInfo,
    now_iso,
    shard_name,
)
from .shards import build_shard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: a shard's documents, cut by the driver in corpus order."""

    shard_id: int
    first_doc: int
    docs: tuple[Document, ...]

    @property
    def name(self) -> str:
        return shard_name(self.shard_id)


@dataclass
class EncodeSummary:
    docs: int = 0
    tokens: int = 0
    rejects: int = 0
    shards_written: int = 0
    shards_skipped: int = 0
    retries: int = 0
    replaced_workers: int = 0
    seconds: float = 0.0
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per Ray node: workers, shards, documents and tokens encoded there.
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["docs_per_s"] = round(self.docs / self.seconds, 2) if self.seconds else None
        d["tokens_per_s"] = round(self.tokens / self.seconds, 2) if self.seconds else None
        return d


def iter_shards(docs: Iterable[Document], shard_size: int) -> Iterator[ShardTask]:
    """Cut a document stream into :class:`ShardTask` s in corpus order."""
    it = iter(docs)
    for shard_id in itertools.count():
        chunk = tuple(itertools.islice(it, shard_size))
        if not chunk:
            return
        yield ShardTask(shard_id, shard_id * shard_size, chunk)


def encode_shard(
    encoder: ColBERTEncoder,
    storage: Storage,
    task: ShardTask,
    *,
    batch_size: int,
    progress: Callable[[int, int], None] | None = None,
) -> ShardInfo:
    """Encode one shard and store it atomically; returns what the manifest records."""
    vectors = encoder.encode_documents(
        [d.contents for d in task.docs], batch_size=batch_size, progress=progress
    )
    data = build_shard(
        [d.doc_id for d in task.docs],
        range(task.first_doc, task.first_doc + len(task.docs)),
        vectors,
        encoder.dim,
        encoder.fingerprint,
    )
    info = ShardInfo(
        shard_id=task.shard_id,
        name=task.name,
        first_doc=task.first_doc,
        n_docs=len(task.docs),
        n_tokens=sum(v.shape[0] for v in vectors),
        bytes=len(data),
        sha256=sha256_bytes(data),
    )
    storage.put(info.key, data)
    return info


def prepare_output(
    config: EncodeConfig, fingerprint: str, storage: Storage, *, overwrite: bool
) -> dict[int, ShardInfo]:
    """Check an existing ROOT against this job; return the shards that can be kept.

    A kept shard is listed in the manifest and its stored object has the recorded size and
    sha256. Anything else is re-encoded.

    Raises
    ------
    ManifestError
        When ROOT holds the output of a different model or configuration and
        ``overwrite`` is false.
    """
    if isinstance(storage, LocalStorage):
        stale = storage.remove_stale_temps(SHARD_DIR)
        if stale:
            logger.info("removed %d temp files left by an interrupted run", stale)
    exists = storage.size(MANIFEST) is not None
    if overwrite or not exists:
        if overwrite and exists:
            logger.info("--overwrite: discarding the existing output in %s", storage.uri)
        if overwrite:
            _remove_output(storage)
        return {}
    manifest = Manifest.load(storage)
    if manifest.fingerprint != fingerprint:
        raise ManifestError(
            f"{storage.uri} holds embeddings from a different model or encoder settings "
            f"(fingerprint {manifest.fingerprint} vs {fingerprint}); pass --overwrite to "
            "replace them or choose another --out"
        )
    diff = manifest.config_differences(config)
    if diff:
        raise ManifestError(
            f"{storage.uri} was written with a different configuration {diff} (old, new); "
            "pass --overwrite to replace it or choose another --out"
        )
    kept: dict[int, ShardInfo] = {}
    for info in manifest.shards:
        if (
            storage.size(info.key) == info.bytes
            and sha256_bytes(storage.get(info.key)) == info.sha256
        ):
            kept[info.shard_id] = info
        else:
            logger.warning(
                "shard %s is missing or differs from the manifest: re-encoding",
                storage.describe(info.key),
            )
    return kept


class ManifestBook:
    """The driver's record of finished shards, persisted after every change."""

    def __init__(
        self,
        config: EncodeConfig,
        encoder: EncoderRecord,
        storage: Storage,
        kept: dict[int, ShardInfo],
    ):
        self.config = config
        self.encoder = encoder
        self.storage = storage
        self.shards: dict[int, ShardInfo] = dict(kept)
        self.kept = dict(kept)
        self.summary = EncodeSummary()
        self._start = time.perf_counter()

    def can_skip(self, task: ShardTask) -> bool:
        """Whether ``task`` is already stored, complete and recorded."""
        info = self.kept.get(task.shard_id)
        return (
            info is not None and info.n_docs == len(task.docs) and info.first_doc == task.first_doc
        )

    def skipped(self, task: ShardTask) -> None:
        info = self.kept[task.shard_id]
        self.summary.shards_skipped += 1
        self.summary.docs += info.n_docs
        self.summary.tokens += info.n_tokens

    def record(self, info: ShardInfo) -> None:
        self.shards[info.shard_id] = info
        self.summary.shards_written += 1
        self.summary.docs += info.n_docs
        self.summary.tokens += info.n_tokens
        self.summary.seconds = time.perf_counter() - self._start
        self.write(complete=False)

    def finish(self, rejects: RejectLog) -> Manifest:
        """Check coverage, write rejects and the final manifest; return it.

        Raises
        ------
        EmptyInputError
            When the corpus held no document (or only bad records that were skipped).
        ManifestError
            When the recorded shards do not cover the corpus read in this run.
        """
        self.summary.seconds = time.perf_counter() - self._start
        self.summary.rejects = len(rejects)
        write_rejects(self.storage, rejects)
        if self.summary.docs == 0:
            raise empty_corpus_error(self.config, rejects)
        # Shards left from a longer earlier corpus (kept but never seen) are not ours.
        covered = sorted(self.shards)
        if covered != list(range(len(covered))) or self.summary.docs != sum(
            s.n_docs for s in self.shards.values()
        ):
            raise ManifestError(
                f"{self.storage.uri}: shards {covered} do not cover the corpus "
                f"({self.summary.docs} docs); the corpus changed since the previous run: "
                "pass --overwrite"
            )
        return self.write(complete=True)

    def write(self, *, complete: bool) -> Manifest:
        manifest = Manifest(
            config=self.config.recorded(),
            encoder=self.encoder,
            dim=self.encoder.settings.dim,
            shards=tuple(self.shards[k] for k in sorted(self.shards)),
            complete=complete,
            rejects=self.summary.rejects,
            summary=self.summary.as_dict(),
            updated=now_iso(),
        )
        manifest.save(self.storage)
        return manifest


def write_rejects(storage: Storage, rejects: RejectLog) -> None:
    """``ROOT/rejects.jsonl`` with the skipped bad records (nothing when there are none)."""
    if len(rejects):
        storage.put(REJECTS, rejects.to_jsonl().encode("utf-8"))
        logger.warning("%d bad records skipped; see %s", len(rejects), storage.describe(REJECTS))


def empty_corpus_error(config: EncodeConfig, rejects: RejectLog) -> EmptyInputError:
    skipped = f" ({len(rejects)} bad records were skipped)" if len(rejects) else ""
    return EmptyInputError(
        f"the corpus {config.corpus} holds no document to encode{skipped}; "
        "check the corpus path and format (nothing was recorded as complete)"
    )


def corpus_shards(
    config: EncodeConfig, corpus: Iterable[Document], rejects: RejectLog, storage: Storage
) -> Iterator[ShardTask]:
    """The corpus cut into shards; an empty corpus is refused before any work starts.

    Raises
    ------
    EmptyInputError
        When the corpus yields no document (after skipping bad records, whose
        ``rejects.jsonl`` is written first).
    """
    tasks = iter_shards(corpus, config.shard_size)
    first = next(tasks, None)
    if first is None:
        write_rejects(storage, rejects)
        raise empty_corpus_error(config, rejects)
    return itertools.chain([first], tasks)


def open_job_corpus(config: EncodeConfig) -> tuple[Iterable[Document], RejectLog]:
    rejects = RejectLog()
    corpus: Iterable[Document] = open_corpus(
        config.corpus, on_bad_record=config.on_bad_record, rejects=rejects
    )
    if config.max_docs is not None:
        corpus = itertools.islice(corpus, config.max_docs)
    return corpus, rejects


def run_encode(
    config: EncodeConfig,
    encoder: ColBERTEncoder,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Manifest:
    """Encode ``config.corpus`` into ``config.out`` in this process; returns the manifest.

    ``progress(docs, tokens)`` is called after every encoded batch.
    """
    storage = open_storage(config.out)
    corpus, rejects = open_job_corpus(config)
    shards = corpus_shards(config, corpus, rejects, storage)
    kept = prepare_output(config, encoder.fingerprint, storage, overwrite=overwrite)
    book = ManifestBook(config, encoder.describe(), storage, kept)
    book.write(complete=False)
    for task in shards:
        if book.can_skip(task):
            book.skipped(task)
            if progress:
                progress(len(task.docs), book.kept[task.shard_id].n_tokens)
            continue
        info = encode_shard(encoder, storage, task, batch_size=config.batch_size, progress=progress)
        book.record(info)
    return book.finish(rejects)


def _remove_output(storage: Storage) -> None:
    for key in storage.list(SHARD_DIR):
        if key.endswith(".parquet") or key.endswith(".tmp"):
            storage.delete(key)
    storage.delete(MANIFEST)
    storage.delete(REJECTS)
