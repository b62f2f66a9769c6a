"""``IDX/meta.json``: the one owner of the index folder's schema.

``meta.json`` is written last: an index folder is complete exactly when it exists. It
records what was built (type, factory, parameters), from what (the source manifest's
sha256, the encoder), how it went (seconds, peak memory, bytes per token) and the size and
sha256 of every other file, which the loader checks before FAISS reads a byte.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..encoder import EncoderRecord
from ..errors import ColbertBatchError, ConfigError

META = "meta.json"
INDEX_FILE = "index.faiss"
INDEX_FORMAT_VERSION = 1


class IndexLoadError(ColbertBatchError, ValueError):
    """An index folder is incomplete, damaged or does not match what it is used with."""


@dataclass(frozen=True)
class FileEntry:
    """Size and sha256 of one file of the index folder."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class IndexMeta:
    """The parsed ``meta.json`` of an index folder.

    Attributes
    ----------
    type, factory, params
        The resolved index configuration (:class:`~.spec.IndexSpec` as a dict).
    build
        The options the user asked for (:class:`~.spec.IndexConfig` as a dict); an index
        is reused for the same options and source only.
    dim, n_tokens, n_docs
        What the index holds.
    source_embeddings, source_manifest_sha256
        The encode output it was built from.
    encoder
        The model that encoded the documents (queries must use the same one).
    files
        Size and sha256 of every file but ``meta.json``.
    store
        The token store's kind and parameters (:mod:`colbert_core.tokenstore.store`);
        ``{"kind": "float16"}`` for an index written before the choice existed.
    """

    type: str
    factory: str
    params: dict[str, Any]
    dim: int
    n_tokens: int
    n_docs: int
    source_embeddings: str
    source_manifest_sha256: str
    encoder: EncoderRecord
    files: dict[str, FileEntry]
    build: dict[str, Any] = field(default_factory=dict)
    store: dict[str, Any] = field(default_factory=lambda: {"kind": "float16"})
    bytes_per_token: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0
    add_s: float = 0.0
    peak_rss_mb: float = 0.0
    gpu_training: bool = False
    parallel_groups: int = 1
    faiss_version: str = ""
    created: str = ""
    metric: str = "inner_product"
    format_version: int = INDEX_FORMAT_VERSION

    @property
    def model_fingerprint(self) -> str:
        return self.encoder.fingerprint

    @property
    def nlist(self) -> int | None:
        """IVF lists of a typed IVF index (``None`` for other types and factories)."""
        value = self.params.get("nlist")
        return int(value) if value else None

    def is_complete_for(self, build: dict[str, Any], manifest_sha256: str) -> bool:
        """Whether this index was built with options ``build`` from that exact manifest.

        An index from before ``--store`` existed was built with the float16 store.
        """
        recorded = {"store": "float16", **self.build}
        return recorded == build and self.source_manifest_sha256 == manifest_sha256

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "created": self.created,
            "type": self.type,
            "factory": self.factory,
            "metric": self.metric,
            "params": self.params,
            "build": self.build,
            "dim": self.dim,
            "n_tokens": self.n_tokens,
            "n_docs": self.n_docs,
            "store": self.store,
            "bytes_per_token": self.bytes_per_token,
            "train_s": self.train_s,
            "add_s": self.add_s,
            "peak_rss_mb": self.peak_rss_mb,
            "gpu_training": self.gpu_training,
            "parallel_groups": self.parallel_groups,
            "faiss_version": self.faiss_version,
            "source": {
                "embeddings": self.source_embeddings,
                "manifest_sha256": self.source_manifest_sha256,
            },
            "model_fingerprint": self.model_fingerprint,
            "encoder": self.encoder.to_dict(),
            "files": {name: dataclasses.asdict(e) for name, e in self.files.items()},
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> IndexMeta:
        """Parse and validate ``meta.json`` bytes read from ``where`` (named in errors).

        Raises
        ------
        IndexLoadError
            For invalid JSON, another format version, or a missing or malformed entry.
        """
        try:
            d = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexLoadError(f"{where}: invalid JSON ({exc})") from exc
        if not isinstance(d, dict) or d.get("format_version") != INDEX_FORMAT_VERSION:
            raise IndexLoadError(f"{where}: unsupported index format; rebuild the index")
        for key in ("dim", "n_tokens", "n_docs", "model_fingerprint", "files"):
            if key not in d:
                raise IndexLoadError(f"{where}: missing {key!r}; rebuild the index")
        try:
            encoder = EncoderRecord.from_dict(d.get("encoder"), where)
            if encoder.fingerprint != d["model_fingerprint"]:
                raise IndexLoadError(
                    f"{where}: model_fingerprint disagrees with the encoder entry; "
                    "rebuild the index"
                )
            source = d.get("source") or {}
            return cls(
                type=str(d["type"]),
                factory=str(d["factory"]),
                params=dict(d.get("params") or {}),
                dim=int(d["dim"]),
                n_tokens=int(d["n_tokens"]),
                n_docs=int(d["n_docs"]),
                source_embeddings=str(source.get("embeddings", "")),
                source_manifest_sha256=str(source.get("manifest_sha256", "")),
                encoder=encoder,
                files={
                    str(name): FileEntry(int(e["bytes"]), str(e["sha256"]))
                    for name, e in d["files"].items()
                },
                build=dict(d.get("build") or {}),
                store=dict(d.get("store") or {"kind": "float16"}),
                bytes_per_token=dict(d.get("bytes_per_token") or {}),
                train_s=float(d.get("train_s", 0.0)),
                add_s=float(d.get("add_s", 0.0)),
                peak_rss_mb=float(d.get("peak_rss_mb", 0.0)),
                gpu_training=bool(d.get("gpu_training", False)),
                parallel_groups=int(d.get("parallel_groups", 1)),
                faiss_version=str(d.get("faiss_version", "")),
                created=str(d.get("created", "")),
                metric=str(d.get("metric", "inner_product")),
            )
        except (KeyError, TypeError, ValueError, AttributeError, ConfigError) as exc:
            if isinstance(exc, IndexLoadError):
                raise
            raise IndexLoadError(
                f"{where}: missing or invalid entry ({type(exc).__name__}: {exc}); "
                "rebuild the index"
            ) from exc
