"""Where artifacts live: a local folder or an S3 prefix, behind one small interface.

Keys are ``/``-separated paths relative to the root (``manifest.json``,
``embeddings/shard-00000.parquet``). Every ``put`` is atomic: a temp file + ``os.replace``
locally, a single PUT on S3 (an object is never visible half-written).

S3 credentials come from the standard AWS chain (environment, profile, instance role);
the endpoint of an S3-compatible store from ``AWS_ENDPOINT_URL``. Neither is ever logged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from .atomic import replace_durably, write_bytes_atomic, write_json_atomic, write_text_atomic
from .cache import (
    CacheError,
    Expected,
    FetchReport,
    default_cache_dir,
    entry_folder,
    fetch_prefix,
    fetch_verified,
    local_disk_errors,
    locked,
)
from .hashing import file_entry, sha256_bytes, sha256_file
from .local import LocalStorage
from .reach import SharedStorageError, require_reachable
from .s3 import S3Storage, StorageError

__all__ = [
    "CacheError",
    "Expected",
    "FetchReport",
    "LocalStorage",
    "S3Storage",
    "SharedStorageError",
    "Storage",
    "StorageError",
    "default_cache_dir",
    "entry_folder",
    "fetch_prefix",
    "fetch_verified",
    "file_entry",
    "is_s3",
    "join_uri",
    "local_disk_errors",
    "locked",
    "open_storage",
    "replace_durably",
    "require_reachable",
    "sha256_bytes",
    "sha256_file",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


class Storage(Protocol):
    """A root under which keys are read and written."""

    uri: str

    def describe(self, key: str) -> str:
        """A human-readable location of ``key`` (no secrets)."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when it does not exist."""
        ...

    def size(self, key: str) -> int | None:
        """Byte size of ``key``, or None when it does not exist."""
        ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def open_storage(uri: str | Path) -> Storage:
    """A :class:`Storage` for a local path or an ``s3://bucket/prefix`` URI."""
    uri = str(uri)
    if is_s3(uri):
        return S3Storage(uri)
    return LocalStorage(uri)


def join_uri(base: str | Path, *parts: str) -> str:
    """``base`` and ``parts`` joined with ``/``, for local paths and ``s3://`` alike.

    >>> join_uri("s3://bucket/out/", "embeddings"), join_uri("out/demo", "index-ivfpq")
    ('s3://bucket/out/embeddings', 'out/demo/index-ivfpq')
    """
    base = str(base)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base).joinpath(*parts))
