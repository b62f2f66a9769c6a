"""Verified read access to a complete encode output (``ROOT``), local or on S3.

Layout::

    ROOT/manifest.json          job config, encoder, per-shard counts + sha256, totals
    ROOT/embeddings/shard-*.parquet
    ROOT/rejects.jsonl          bad records skipped under --on-bad-record skip
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ..encoder import EncoderRecord
from ..storage import LocalStorage, open_storage, sha256_bytes, sha256_file
from .manifest import MANIFEST, Manifest, ManifestError, ShardInfo
from .shards import ShardData, ShardError, read_shard

logger = logging.getLogger(__name__)


class EmbeddingSource(Protocol):
    """What index building and exact search read: shards of token vectors in corpus order.

    :class:`Embeddings` (one encode output), :class:`~colbert_core.embeddings.view.
    EmbeddingsView` (several, cut at a document count) and a scaling study's synthetic
    corpus all provide it.
    """

    root: str
    manifest_sha256: str

    @property
    def shards(self) -> tuple[ShardInfo, ...]: ...

    @property
    def dim(self) -> int: ...

    @property
    def n_docs(self) -> int: ...

    @property
    def n_tokens(self) -> int: ...

    @property
    def encoder(self) -> EncoderRecord: ...

    def read(self, info: ShardInfo) -> ShardData: ...

    def __iter__(self) -> Iterator[ShardData]: ...


class Embeddings:
    """A complete encode output; every shard is checked against the manifest when read.

    Parameters
    ----------
    root
        The encode output folder or ``s3://`` prefix.
    verify
        Check each shard's byte size and sha256 against the manifest while reading it.

    Raises
    ------
    ManifestError
        When ``root`` holds no manifest, an unreadable one, or an unfinished job.
    """

    def __init__(self, root: str | Path, *, verify: bool = True):
        self.storage = open_storage(root)
        self.root = self.storage.uri
        self.manifest, self.manifest_sha256 = Manifest.load_with_sha256(self.storage)
        if not self.manifest.complete:
            raise ManifestError(
                f"{self.root}: the encode job has not finished (manifest says incomplete); "
                "re-run the same `colbert-batch encode` command to complete it"
            )
        self.verify = verify

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self.manifest.shards

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def n_docs(self) -> int:
        return self.manifest.n_docs

    @property
    def n_tokens(self) -> int:
        return self.manifest.n_tokens

    @property
    def encoder(self) -> EncoderRecord:
        return self.manifest.encoder

    def read(self, info: ShardInfo) -> ShardData:
        """One shard, validated against its manifest entry.

        Raises
        ------
        ShardError
            When the shard is missing, differs from the manifest, or is corrupt.
        """
        path = self.storage.describe(info.key)
        if isinstance(self.storage, LocalStorage):
            # Hash the file as a stream, then decode it from disk: the shard's bytes are
            # never held beside its decoded tokens (peak ~2x a shard, not 3x).
            local = self.storage.path(info.key)
            if self.verify:
                self._verify_file(local, info)
            data = read_shard(local, dim=self.dim)
        else:
            try:
                raw = self.storage.get(info.key)
            except FileNotFoundError as exc:
                raise ShardError(
                    f"missing shard {path} (listed in the manifest); re-run encode to rewrite it"
                ) from exc
            if self.verify and (len(raw) != info.bytes or sha256_bytes(raw) != info.sha256):
                raise ShardError(
                    f"{path}: size or sha256 differs from {self.storage.describe(MANIFEST)} "
                    "(truncated or modified); re-run encode to rewrite it"
                )
            try:
                data = read_shard(raw, dim=self.dim)
            except ShardError as exc:
                raise ShardError(f"{path}: {exc}") from exc
        if data.n_docs != info.n_docs or data.n_tokens != info.n_tokens:
            raise ShardError(
                f"{path}: holds {data.n_docs} docs / {data.n_tokens} tokens but the manifest "
                f"says {info.n_docs} / {info.n_tokens}"
            )
        if data.n_docs and int(data.doc_index[0]) != info.first_doc:
            raise ShardError(
                f"{path}: starts at document {int(data.doc_index[0])} but the manifest says "
                f"{info.first_doc}"
            )
        return data

    def _verify_file(self, local: Path, info: ShardInfo) -> None:
        try:
            size = local.stat().st_size
        except FileNotFoundError as exc:
            raise ShardError(
                f"missing shard {local} (listed in the manifest); re-run encode to rewrite it"
            ) from exc
        if size != info.bytes or sha256_file(local) != info.sha256:
            raise ShardError(
                f"{local}: size or sha256 differs from {self.storage.describe(MANIFEST)} "
                "(truncated or modified); re-run encode to rewrite it"
            )

    def __iter__(self) -> Iterator[ShardData]:
        for info in self.shards:
            yield self.read(info)
