"""An encode output folder (``ROOT``): its manifest and verified access to its shards.

Layout::

    ROOT/manifest.json          job config, encoder, per-shard counts + sha256, totals
    ROOT/embeddings/shard-*.parquet
    ROOT/rejects.jsonl          bad records skipped under --on-bad-record skip
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic
from .shards import SHARD_DIR, ShardData, ShardError, ShardInfo, read_shard

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """The manifest is missing, unreadable, or disagrees with what is on disk."""


def load_manifest(root: str | Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(
            f"{path} not found: {root} is not an encode output (run `colbert-batch encode` first)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise ManifestError(
            f"{path}: format_version {manifest.get('format_version')!r} is not supported "
            f"(expected {MANIFEST_VERSION})"
        )
    return manifest


def write_manifest(root: str | Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(Path(root) / MANIFEST, manifest)


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
        self.root = Path(root)
        self.manifest = load_manifest(self.root)
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
        path = self.root / SHARD_DIR / info.name
        if not self.verify:
            data = read_shard(path, dim=self.dim)
        else:
            try:
                raw = path.read_bytes()
            except FileNotFoundError as exc:
                raise ShardError(
                    f"missing shard {path} (listed in the manifest); re-run encode to rewrite it"
                ) from exc
            if len(raw) != info.bytes or hashlib.sha256(raw).hexdigest() != info.sha256:
                raise ShardError(
                    f"{path}: size or sha256 differs from {self.root / MANIFEST} (truncated or "
                    "modified); re-run encode to rewrite it"
                )
            try:
                data = read_shard(io.BytesIO(raw), dim=self.dim)
            except ShardError as exc:
                raise ShardError(f"{path}: {exc}") from exc
        if data.n_docs != info.n_docs or data.n_tokens != info.n_tokens:
            raise ShardError(
                f"{path}: holds {data.n_docs} docs / {data.n_tokens} tokens but the manifest "
                f"says {info.n_docs} / {info.n_tokens}"
            )
        return data

    def __iter__(self) -> Iterator[ShardData]:
        for info in self.shards:
            yield self.read(info)
