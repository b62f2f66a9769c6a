"""The contiguous float16 token store and the token -> document mapping arrays.

Files in an index folder::

    tokens.f16        (n_tokens, dim) float16, row-major, memory-mapped for exact MaxSim
    doc_offsets.npy   (n_docs + 1,) int64: document i owns tokens offsets[i]:offsets[i+1]
    doc_ids.parquet   one string column ``doc_id``: document index -> external id

A token id (the FAISS id) maps to its document with one ``searchsorted``.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TOKENS = "tokens.f16"
OFFSETS = "doc_offsets.npy"
DOC_IDS = "doc_ids.parquet"


def token_to_doc(offsets: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """Document index of each token id (``-1`` stays ``-1``: FAISS's "no result").

    >>> token_to_doc(np.array([0, 3, 3, 5]), np.array([0, 2, 3, 4, -1]))
    array([ 0,  0,  2,  2, -1])
    """
    docs = np.searchsorted(offsets, token_ids, side="right") - 1
    return np.where(token_ids < 0, -1, docs)


class TokenStoreWriter:
    """Append shards' float16 tokens to ``tokens.f16`` and collect offsets and ids."""

    def __init__(self, folder: Path, dim: int):
        self.folder = folder
        self.dim = dim
        folder.mkdir(parents=True, exist_ok=True)
        self._tmp = folder / f".{TOKENS}.tmp"
        self._fh = self._tmp.open("wb")
        self._lengths: list[np.ndarray] = []
        self._ids: list[str] = []
        self.n_tokens = 0
        self.sha256 = hashlib.sha256()

    def append(self, doc_ids: list[str], offsets: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.dtype != np.float16 or tokens.ndim != 2 or tokens.shape[1] != self.dim:
            raise ValueError(
                f"expected (n, {self.dim}) float16 tokens, got {tokens.dtype} {tokens.shape}"
            )
        raw = np.ascontiguousarray(tokens, dtype="<f2").tobytes()
        self._fh.write(raw)
        self.sha256.update(raw)
        self._lengths.append(np.diff(offsets))
        self._ids.extend(doc_ids)
        self.n_tokens += tokens.shape[0]

    def close(self) -> dict[str, bytes | None]:
        """Finish the files; returns the small ones' bytes (offsets, ids) for checksums."""
        self._fh.flush()
        self._fh.close()
        self._tmp.replace(self.folder / TOKENS)
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        buf = io.BytesIO()
        np.save(buf, offsets)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"doc_id": pa.array(self._ids, pa.string())}), sink)
        return {OFFSETS: buf.getvalue(), DOC_IDS: sink.getvalue().to_pybytes()}

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def open_tokens(path: Path, n_tokens: int, dim: int) -> np.ndarray:
    """Memory-map the token store read-only as ``(n_tokens, dim)`` float16."""
    if n_tokens == 0:
        return np.zeros((0, dim), np.float16)
    return np.memmap(path, dtype="<f2", mode="r", shape=(n_tokens, dim))


def read_doc_ids(raw: bytes) -> list[str]:
    return pq.read_table(io.BytesIO(raw))["doc_id"].to_pylist()


def read_offsets(raw: bytes) -> np.ndarray:
    return np.load(io.BytesIO(raw), allow_pickle=False)
