"""An encode output folder (``ROOT``): its manifest and verified access to its shards.

Layout::

    ROOT/manifest.json          job config, encoder, per-shard counts + sha256, totals
    ROOT/embeddings/shard-*.parquet
    ROOT/rejects.jsonl          bad records skipped under --on-bad-record skip
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .shards import SHARD_DIR, ShardData, ShardError, ShardInfo, read_shard
from .storage import LocalStorage, Storage, open_storage

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """The manifest is missing, unreadable, or disagrees with what is on disk."""


def parse_manifest(raw: bytes, where: str) -> dict[str, Any]:
    """Parse and version-check manifest bytes read from ``where`` (named in errors)."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where}: not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{where}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") != MANIFEST_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ManifestError(
            f"{where}: format_version {version!r} is not supported (expected {MANIFEST_VERSION})"
        )
    return manifest


def load_manifest(root: str | Path | Storage) -> dict[str, Any]:
    storage = root if not isinstance(root, str | Path) else open_storage(root)
    try:
        raw = storage.get(MANIFEST)
    except FileNotFoundError as exc:
        raise ManifestError(
            f"{storage.describe(MANIFEST)} not found: {storage.uri} is not an encode output "
            "(run `colbert-batch encode` first)"
        ) from exc
    return parse_manifest(raw, storage.describe(MANIFEST))


def write_manifest(root: str | Path | Storage, manifest: dict[str, Any]) -> None:
    """Store ``manifest`` atomically under ``root``."""
    storage = root if not isinstance(root, str | Path) else open_storage(root)
    storage.put(MANIFEST, (json.dumps(manifest, indent=2, default=str) + "\n").encode())


def shard_infos(manifest: dict[str, Any]) -> list[ShardInfo]:
    return [ShardInfo(**s) for s in manifest.get("shards", [])]


def shard_to_json(info: ShardInfo) -> dict[str, Any]:
    return asdict(info)


class EmbeddingStore:
    """Read access to a complete encode output, every shard checked against the manifest.

    Parameters
    ----------
    root
        The encode output folder.
    verify
        Check each shard's byte size and sha256 against the manifest while reading it.
    """

    def __init__(self, root: str | Path, *, verify: bool = True):
        self.storage = open_storage(root)
        self.root = self.storage.uri
        self.manifest = load_manifest(self.storage)
        if not self.manifest.get("complete", False):
            raise ManifestError(
                f"{self.root}: the encode job has not finished (manifest says incomplete); "
                "re-run the same `colbert-batch encode` command to complete it"
            )
        self.verify = verify
        self.shards = shard_infos(self.manifest)
        self.dim = int(self.manifest["dim"])
        self.n_docs = int(self.manifest["totals"]["docs"])
        self.n_tokens = int(self.manifest["totals"]["tokens"])

    @property
    def encoder(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    def read(self, info: ShardInfo) -> ShardData:
        key = f"{SHARD_DIR}/{info.name}"
        path = self.storage.describe(key)
        if not self.verify and isinstance(self.storage, LocalStorage):
            data = read_shard(self.storage.path(key), dim=self.dim)
        else:
            try:
                raw = self.storage.get(key)
            except FileNotFoundError as exc:
                raise ShardError(
                    f"missing shard {path} (listed in the manifest); re-run encode to rewrite it"
                ) from exc
            if self.verify and (
                len(raw) != info.bytes or hashlib.sha256(raw).hexdigest() != info.sha256
            ):
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

    def __iter__(self) -> Iterator[ShardData]:
        for info in self.shards:
            yield self.read(info)
