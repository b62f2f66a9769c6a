"""Load an index folder, validating everything before FAISS reads a byte.

A missing, truncated or corrupt file, or a dimension, count or model mismatch, is an
:class:`IndexLoadError` naming the file and the fix - never a wrong answer, a hang or a
segfault (FAISS is only handed files whose size and sha256 match ``meta.json``).

The FAISS index is read into memory (``faiss.read_index`` without ``IO_FLAG_MMAP``: in FAISS
1.15 memory-mapping a merged on-disk index crashed at search time); the float16 token
store is memory-mapped with numpy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from ..storage import is_s3, open_storage
from .build import INDEX_FILE, INDEX_FORMAT_VERSION, META
from .tokenstore import DOC_IDS, OFFSETS, TOKENS, open_tokens, read_doc_ids, read_offsets

logger = logging.getLogger(__name__)


# Small files whose corruption can exhaust memory while parsing; hashing them costs
# milliseconds even for millions of documents.
_ALWAYS_VERIFIED = frozenset({OFFSETS, DOC_IDS})


class IndexLoadError(ValueError):
    """An index folder is incomplete, damaged or does not match what it is used with."""


@dataclass
class LoadedIndex:
    """A validated index: FAISS index, token store and token -> document mapping."""

    folder: Path
    meta: dict[str, Any]
    index: faiss.Index
    tokens: np.ndarray
    doc_offsets: np.ndarray
    doc_ids: list[str]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def n_docs(self) -> int:
        return int(self.meta["n_docs"])

    @property
    def model_fingerprint(self) -> str:
        return str(self.meta["model_fingerprint"])


def default_cache_dir() -> Path:
    return Path(os.environ.get("COLBERT_BATCH_CACHE", "~/.cache/colbert-batch")).expanduser()


def load_index(
    path: str | Path,
    *,
    verify: bool = True,
    expected_fingerprint: str | None = None,
    cache_dir: Path | None = None,
) -> LoadedIndex:
    """Open and validate an index folder (or ``s3://`` prefix, downloaded to a cache).

    Parameters
    ----------
    path
        The folder ``colbert-batch index --out`` wrote.
    verify
        Check the sha256 of the FAISS index and the token store against ``meta.json``.
        Sizes are always checked, and so are the checksums of the two small mapping
        files (offsets, document ids): a damaged Parquet footer can make pyarrow allocate
        hundreds of GB, which no exception handler can catch once the kernel kills us.
    expected_fingerprint
        The query encoder's model fingerprint; a different one is an error.
    """
    if is_s3(str(path)):
        folder = _download(str(path), cache_dir or default_cache_dir())
    else:
        folder = Path(path)
    meta = _read_meta(folder)
    files = meta.get("files", {})
    for name in (INDEX_FILE, TOKENS, OFFSETS, DOC_IDS):
        entry = files.get(name)
        if entry is None:
            raise IndexLoadError(f"{folder / META}: no entry for {name}; rebuild the index")
        _check_file(folder / name, entry, verify or name in _ALWAYS_VERIFIED)
    if expected_fingerprint is not None and meta.get("model_fingerprint") != expected_fingerprint:
        raise IndexLoadError(
            f"{folder} was built from embeddings of model {meta.get('model_fingerprint')}, "
            f"but the query encoder is {expected_fingerprint}; use the same checkpoint"
        )
    dim, n_tokens, n_docs = int(meta["dim"]), int(meta["n_tokens"]), int(meta["n_docs"])
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
    except (RuntimeError, MemoryError) as exc:
        raise IndexLoadError(f"{folder / INDEX_FILE}: FAISS cannot read it: {exc}") from exc
    if index.d != dim or index.ntotal != n_tokens:
        raise IndexLoadError(
            f"{folder / INDEX_FILE}: holds {index.ntotal} vectors of dim {index.d}, "
            f"meta.json says {n_tokens} of dim {dim}; rebuild the index"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexLoadError(f"{folder / INDEX_FILE}: metric is not inner product")
    try:
        offsets = read_offsets((folder / OFFSETS).read_bytes())
    except (ValueError, EOFError, OSError) as exc:  # damaged file loaded with verify=False
        raise IndexLoadError(f"{folder / OFFSETS}: unreadable ({exc}); rebuild the index") from exc
    if (
        offsets.dtype != np.int64
        or offsets.shape != (n_docs + 1,)
        or offsets[0] != 0
        or offsets[-1] != n_tokens
        or np.any(np.diff(offsets) < 0)
    ):
        raise IndexLoadError(
            f"{folder / OFFSETS}: not {n_docs + 1} non-decreasing int64 offsets from 0 to "
            f"{n_tokens}; rebuild the index"
        )
    try:
        doc_ids = read_doc_ids((folder / DOC_IDS).read_bytes())
    except (pa.ArrowException, ValueError, KeyError, OSError) as exc:
        raise IndexLoadError(f"{folder / DOC_IDS}: unreadable ({exc}); rebuild the index") from exc
    if len(doc_ids) != n_docs:
        raise IndexLoadError(f"{folder / DOC_IDS}: {len(doc_ids)} ids for {n_docs} documents")
    if (folder / TOKENS).stat().st_size != n_tokens * dim * 2:
        raise IndexLoadError(f"{folder / TOKENS}: size is not {n_tokens} x {dim} x 2 bytes")
    tokens = open_tokens(folder / TOKENS, n_tokens, dim)
    return LoadedIndex(folder, meta, index, tokens, offsets, doc_ids)


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IndexLoadError(
            f"{path} not found: {folder} is not a complete index (run `colbert-batch index`)"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexLoadError(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != INDEX_FORMAT_VERSION:
        raise IndexLoadError(f"{path}: unsupported index format; rebuild the index")
    for key in ("dim", "n_tokens", "n_docs", "model_fingerprint", "files"):
        if key not in meta:
            raise IndexLoadError(f"{path}: missing {key!r}; rebuild the index")
    return meta


def _check_file(path: Path, entry: dict[str, Any], verify: bool) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise IndexLoadError(f"missing index file {path}; rebuild the index") from exc
    if size != entry["bytes"]:
        raise IndexLoadError(
            f"{path}: {size} bytes, meta.json says {entry['bytes']} (truncated or replaced); "
            "rebuild the index"
        )
    if verify and _sha256(path) != entry["sha256"]:
        raise IndexLoadError(f"{path}: sha256 differs from meta.json (corrupt); rebuild the index")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _download(uri: str, cache_dir: Path) -> Path:
    """Copy an S3 index into the cache (reusing verified files) and return the folder."""
    storage = open_storage(uri)
    folder = cache_dir / "indexes" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        raw_meta = storage.get(META)
    except FileNotFoundError as exc:
        raise IndexLoadError(f"{storage.describe(META)} not found: not a complete index") from exc
    meta = json.loads(raw_meta)
    from ..atomic import write_bytes_atomic

    for name, entry in meta.get("files", {}).items():
        local = folder / name
        if (
            local.exists()
            and local.stat().st_size == entry["bytes"]
            and (_sha256(local) == entry["sha256"])
        ):
            continue
        logger.info("downloading %s", storage.describe(name))
        write_bytes_atomic(local, storage.get(name))
    write_bytes_atomic(folder / META, raw_meta)
    return folder
