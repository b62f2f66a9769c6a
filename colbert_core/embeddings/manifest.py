"""``ROOT/manifest.json``: the one owner of the encode output's schema.

The manifest records the job's configuration, the encoder (model fingerprint and
settings), every stored shard with its size and sha256, the rejects and the totals. It is
rewritten after every stored shard and says ``"complete": true`` only once the whole corpus
is encoded: it is the completeness marker of ``ROOT``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..encoder import EncoderRecord, EncoderSettings
from ..errors import ColbertBatchError
from ..storage import Storage, open_storage, sha256_bytes
from .config import EncodeConfig, same_setting

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
SHARD_DIR = "embeddings"
REJECTS = "rejects.jsonl"


class ManifestError(ColbertBatchError, ValueError):
    """The manifest is missing, unreadable, or disagrees with what is on disk."""


def shard_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.parquet"


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records about a stored shard."""

    shard_id: int
    name: str
    first_doc: int
    n_docs: int
    n_tokens: int
    bytes: int
    sha256: str

    @property
    def key(self) -> str:
        """The shard's key under ``ROOT``."""
        return f"{SHARD_DIR}/{self.name}"


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json`` of an encode output.

    Attributes
    ----------
    config
        The job's recorded settings (:meth:`EncodeConfig.recorded`).
    encoder
        The model that encoded the documents.
    dim
        Token vector dimension.
    shards
        Stored shards in shard order.
    complete
        Whether every document of the corpus is encoded and recorded.
    rejects
        Bad records skipped (listed in ``rejects.jsonl``).
    summary
        Counts and timings of the last run (docs/s, per-worker throughput, ...).
    """

    config: dict[str, Any]
    encoder: EncoderRecord
    dim: int
    shards: tuple[ShardInfo, ...] = ()
    complete: bool = False
    rejects: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    updated: str = ""
    dtype: str = "float16"
    format_version: int = MANIFEST_VERSION

    @property
    def n_docs(self) -> int:
        return sum(s.n_docs for s in self.shards)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def fingerprint(self) -> str:
        return self.encoder.fingerprint

    def totals(self) -> dict[str, int]:
        return {"docs": self.n_docs, "tokens": self.n_tokens, "shards": len(self.shards)}

    # -- questions the pipeline and the encode job ask -------------------------------

    def config_differences(self, config: EncodeConfig) -> dict[str, tuple[Any, Any]]:
        """Output-defining settings that differ: ``{field: (recorded, wanted)}``."""
        return {
            k: (self.config.get(k), v)
            for k, v in config.output_defining().items()
            if not same_setting(k, self.config.get(k), v)
        }

    def is_complete_for(self, config: EncodeConfig) -> bool:
        """Whether this output is complete, was made with ``config``'s settings and holds
        at least the documents ``config`` asks for (:meth:`covers`)."""
        return self.complete and not self.config_differences(config) and self.covers(config)

    def covers(self, config: EncodeConfig) -> bool:
        """Whether the documents recorded include every one ``config.max_docs`` asks for.

        An output encoded without a limit, or whose corpus ended before its limit, holds
        the whole corpus; otherwise it holds its first ``max_docs`` documents.
        """
        recorded = self.config.get("max_docs")
        if recorded is None or self.n_docs < recorded:
            return True  # the whole corpus
        return config.max_docs is not None and self.n_docs >= config.max_docs

    # -- serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "complete": self.complete,
            "updated": self.updated,
            "config": self.config,
            "encoder": self.encoder.to_dict(),
            "dim": self.dim,
            "dtype": self.dtype,
            "shards": [dataclasses.asdict(s) for s in self.shards],
            "rejects": self.rejects,
            "totals": self.totals(),
            "summary": self.summary,
        }

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, default=str) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        """Parse and validate manifest bytes read from ``where`` (named in errors)."""
        try:
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ManifestError(f"{where}: not UTF-8 ({exc.reason})") from exc
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(d, dict) or d.get("format_version") != MANIFEST_VERSION:
            version = d.get("format_version") if isinstance(d, dict) else None
            raise ManifestError(
                f"{where}: format_version {version!r} is not supported "
                f"(expected {MANIFEST_VERSION})"
            )
        try:
            shards = tuple(ShardInfo(**s) for s in d.get("shards", []))
            manifest = cls(
                config=dict(d.get("config") or {}),
                encoder=EncoderRecord.from_dict(d["encoder"], where),
                dim=int(d["dim"]),
                shards=shards,
                complete=bool(d.get("complete", False)),
                rejects=int(d.get("rejects", 0)),
                summary=dict(d.get("summary") or {}),
                updated=str(d.get("updated", "")),
                dtype=str(d.get("dtype", "float16")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestError(
                f"{where}: missing or invalid entry ({type(exc).__name__}: {exc}); "
                "re-run encode with --overwrite"
            ) from exc
        if [s.shard_id for s in shards] != sorted({s.shard_id for s in shards}):
            raise ManifestError(f"{where}: shards are not listed once each in shard order")
        return manifest

    @classmethod
    def load(cls, root: str | Storage) -> Manifest:
        """Read ``manifest.json`` under ``root`` (a folder, ``s3://`` URI or storage)."""
        return cls.load_with_sha256(root)[0]

    @classmethod
    def load_with_sha256(cls, root: str | Storage) -> tuple[Manifest, str]:
        """The manifest and the sha256 of its bytes (what an index records as its source)."""
        storage = open_storage(root) if isinstance(root, str) else root
        try:
            raw = storage.get(MANIFEST)
        except FileNotFoundError as exc:
            raise ManifestError(
                f"{storage.describe(MANIFEST)} not found: {storage.uri} is not an encode "
                "output (run `colbert-batch encode` first)"
            ) from exc
        return cls.from_json(raw, storage.describe(MANIFEST)), sha256_bytes(raw)

    @classmethod
    def find(cls, root: str | Storage) -> Manifest | None:
        """The manifest under ``root``, or ``None`` when there is none (yet)."""
        storage = open_storage(root) if isinstance(root, str) else root
        return cls.load(storage) if storage.size(MANIFEST) is not None else None

    def save(self, root: str | Storage) -> None:
        """Store the manifest atomically under ``root`` (one PUT on S3)."""
        storage = open_storage(root) if isinstance(root, str) else root
        storage.put(MANIFEST, self.to_json())

    def replace(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_shards(
        cls,
        shards: list[ShardInfo] | tuple[ShardInfo, ...],
        *,
        dim: int,
        fingerprint: str,
        model_path: str = "none",
        complete: bool = True,
        config: dict[str, Any] | None = None,
    ) -> Manifest:
        """A manifest for shards written outside an encode job (tests, benchmarks).

        The encoder is recorded as a plain ``hf`` encoder of dimension ``dim`` with the
        given fingerprint; nothing is loaded.
        """
        encoder = EncoderRecord(
            model_path=model_path,
            fingerprint=fingerprint,
            settings=EncoderSettings(format="hf", query_maxlen=32, doc_maxlen=256, dim=dim),
        )
        return cls(
            config=dict(config or {}),
            encoder=encoder,
            dim=dim,
            shards=tuple(shards),
            complete=complete,
            updated=now_iso(),
        )


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
