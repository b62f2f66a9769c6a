"""The node-local cache: artifacts a worker reads from S3 are downloaded once per node.

Every process on a node that needs the same S3 index (or model) takes the entry's file lock;
the first one downloads and verifies each file, the others wait for it and then reuse the
verified files. A file is reused only when its size and sha256 match what the artifact
records (``meta.json`` for an index, the download record for a model), so a truncated or
replaced cache file is downloaded again, never read.

The cache lives in ``$COLBERT_BATCH_CACHE`` (default ``~/.cache/colbert-batch``): put it on
each node's local disk, never on a shared mount (nodes would serialise on one lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ColbertBatchError
from .atomic import write_bytes_atomic
from .hashing import sha256_bytes, sha256_file
from .s3 import S3Storage

logger = logging.getLogger(__name__)

CACHE_ENV = "COLBERT_BATCH_CACHE"


class CacheError(ColbertBatchError, OSError):
    """A downloaded file does not match what its source records (the message names it)."""


def default_cache_dir() -> Path:
    """``$COLBERT_BATCH_CACHE``, else ``~/.cache/colbert-batch`` (read at call time)."""
    return Path(os.environ.get(CACHE_ENV, "~/.cache/colbert-batch")).expanduser()


@dataclass(frozen=True)
class Expected:
    """What a cached file must be: its byte size and sha256."""

    bytes: int
    sha256: str


@dataclass
class FetchReport:
    """What one fetch did: files downloaded by this process, files reused from the cache."""

    folder: Path
    downloaded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, int]:
        return {"downloaded": len(self.downloaded), "reused": len(self.reused)}


def entry_folder(cache_dir: Path, kind: str, uri: str) -> Path:
    """The cache folder of ``uri`` (an index or model prefix) under ``cache_dir/kind``.

    >>> entry_folder(Path("/c"), "indexes", "s3://b/idx").as_posix()
    '/c/indexes/028d41b6a1701bd3'
    """
    return cache_dir / kind / sha256_bytes(uri.encode())[:16]


@contextlib.contextmanager
def local_disk_errors(what: str, folder: Path) -> Iterator[None]:
    """Turn a failure of the cache's own disk (no room, no permission, a file deleted at
    the source between listing and download) into a :class:`CacheError` with the fix."""
    try:
        yield
    except ColbertBatchError:
        raise
    except OSError as exc:
        raise CacheError(
            f"cannot cache {what} in {folder}: {exc}; point ${CACHE_ENV} at a writable "
            "folder on this node's local disk with room for it"
        ) from exc


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the exclusive lock of a cache entry (a ``flock`` on ``<folder>.lock``).

    ``flock`` is released by the kernel when the holder dies, so a worker killed
    mid-download never leaves the entry locked.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with (folder.parent / f"{folder.name}.lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def fetch_verified(
    folder: Path,
    expected: Mapping[str, Expected],
    download: Callable[[str, Path], None],
    describe: Callable[[str], str],
) -> FetchReport:
    """Make ``folder`` hold every file of ``expected``, downloading only what is missing
    or differs; the caller holds :func:`locked`.

    Parameters
    ----------
    expected
        File name -> size and sha256 (from the artifact's own record).
    download
        ``download(name, path)`` streams one file into ``path`` (e.g.
        :meth:`S3Storage.download`); it is renamed into place once verified.
    describe
        The source location of a name, for messages.

    Raises
    ------
    CacheError
        When a downloaded file's size or sha256 differs from ``expected`` (the source is
        damaged or was replaced during the download); nothing of it is kept.
    """
    report = FetchReport(folder)
    for name, want in expected.items():
        local = folder / name
        if _matches(local, want):
            report.reused.append(name)
            continue
        logger.info("downloading %s into the node cache", describe(name))
        with _downloaded(local, lambda tmp, name=name: download(name, tmp)) as tmp:
            size, sha256 = tmp.stat().st_size, sha256_file(tmp)
            if size != want.bytes or sha256 != want.sha256:
                raise CacheError(
                    f"{describe(name)}: downloaded {size} bytes whose size or sha256 differs "
                    f"from its record ({want.bytes} bytes); the source is damaged or was "
                    "replaced while it was read - rebuild or re-upload it"
                )
        report.downloaded.append(name)
    return report


@contextlib.contextmanager
def _downloaded(local: Path, download: Callable[[Path], None]) -> Iterator[Path]:
    """Download into a temp file beside ``local``; yield it for checks, then rename it into
    place (atomic) - or delete it when a check raises."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.parent / f".{local.name}.download"
    try:
        download(tmp)
        yield tmp
        os.replace(tmp, local)
    finally:
        tmp.unlink(missing_ok=True)


def _matches(path: Path, want: Expected) -> bool:
    try:
        if path.stat().st_size != want.bytes:
            return False
    except FileNotFoundError:
        return False
    return sha256_file(path) == want.sha256


def fetch_prefix(
    storage: S3Storage, cache_dir: Path | None = None, *, kind: str = "models"
) -> FetchReport:
    """Download every object under an S3 prefix (a model checkpoint) into the node cache.

    S3 records no sha256 for an arbitrary prefix, so the listing is the record: each
    object's size and ETag key the entry (replaced objects land in a fresh entry), each
    download must have the listed size (botocore checks the transfer's own checksum where
    S3 sends one), and the sha256 of every file downloaded is written to
    ``.download.json`` and checked on reuse. (An ETag is not compared with an MD5: for
    KMS-encrypted or multipart objects it is not one.)

    Raises
    ------
    CacheError
        When the prefix holds no objects, or a download does not match its listing.
    """
    listing = [obj for obj in storage.list_objects("") if not obj[0].endswith("/")]
    for name, _, _ in listing:  # folder markers (keys ending in "/") are skipped above
        if name.startswith("/") or ".." in name.split("/"):
            raise CacheError(f"{storage.describe(name)}: a key that leaves its prefix; rename it")
    if not listing:
        raise CacheError(
            f"{storage.uri}/ holds no objects; upload the checkpoint directory there "
            "(e.g. `aws s3 sync ./my-model s3://bucket/models/my-model/`)"
        )
    cache_dir = cache_dir or default_cache_dir()
    stamp = sha256_bytes(json.dumps(listing, sort_keys=True).encode())[:12]
    folder = entry_folder(cache_dir, kind, f"{storage.uri}@{stamp}")
    record = folder / ".download.json"
    with local_disk_errors(storage.uri, folder), locked(folder):
        if record.is_file():
            expected = {
                name: Expected(**want) for name, want in json.loads(record.read_text()).items()
            }
            return fetch_verified(folder, expected, storage.download, storage.describe)
        report = FetchReport(folder)
        hashes: dict[str, dict[str, int | str]] = {}
        for name, size, etag in listing:
            with _downloaded(folder / name, lambda tmp, n=name: storage.download(n, tmp)) as tmp:
                hashes[name] = _check_listing(storage.describe(name), tmp, size, etag)
            report.downloaded.append(name)
        write_bytes_atomic(record, json.dumps(hashes, indent=1).encode())
        logger.info("downloaded %d files of %s into %s", len(listing), storage.uri, folder)
        return report


def _check_listing(where: str, path: Path, size: int, etag: str) -> dict[str, int | str]:
    """Check a downloaded object against its listing; return its size and sha256."""
    got = path.stat().st_size
    if got != size:
        raise CacheError(
            f"{where}: downloaded {got} bytes but the S3 listing says {size} (ETag {etag}); "
            "the object changed while it was read - run the job again"
        )
    return {"bytes": got, "sha256": sha256_file(path)}
