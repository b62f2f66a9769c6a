"""Token -> document mapping arrays of an index folder.

Files::

    doc_offsets.npy   (n_docs + 1,) int64: document i owns tokens offsets[i]:offsets[i+1]
    doc_ids.parquet   one string column ``doc_id``: document index -> external id

A token id (the FAISS id) maps to its document with one ``searchsorted``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OFFSETS = "doc_offsets.npy"
DOC_IDS = "doc_ids.parquet"


class MappingError(ValueError):
    """A mapping file is unreadable or inconsistent (the index loader names the file)."""


def token_to_doc(offsets: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    """Document index of each token id (``-1`` stays ``-1``: FAISS's "no result").

    >>> token_to_doc(np.array([0, 3, 3, 5]), np.array([0, 2, 3, 4, -1]))
    array([ 0,  0,  2,  2, -1])
    """
    docs = np.searchsorted(offsets, token_ids, side="right") - 1
    return np.where(token_ids < 0, -1, docs)


@dataclass(frozen=True)
class DocMapping:
    """Documents of an index in corpus order.

    Attributes
    ----------
    offsets
        ``(n_docs + 1,)`` int64; document ``i`` owns tokens ``offsets[i]:offsets[i+1]``.
    doc_ids
        External id of each document.
    """

    offsets: np.ndarray
    doc_ids: list[str]

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])


class DocMappingWriter:
    """Collects documents shard by shard; :meth:`close` serialises both files."""

    def __init__(self) -> None:
        self._lengths: list[np.ndarray] = []
        self._ids: list[str] = []

    def append(self, doc_ids: list[str], offsets: np.ndarray) -> None:
        """Add a shard's documents (``offsets`` local to the shard, ``(n + 1,)``)."""
        self._lengths.append(np.diff(offsets))
        self._ids.extend(doc_ids)

    def close(self) -> dict[str, bytes]:
        """``{OFFSETS: bytes, DOC_IDS: bytes}`` of everything appended."""
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        buf = io.BytesIO()
        np.save(buf, offsets)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"doc_id": pa.array(self._ids, pa.string())}), sink)
        return {OFFSETS: buf.getvalue(), DOC_IDS: sink.getvalue().to_pybytes()}


def read_offsets(raw: bytes, n_docs: int, n_tokens: int) -> np.ndarray:
    """Parse and validate ``doc_offsets.npy``.

    Raises
    ------
    MappingError
        When the bytes are not ``n_docs + 1`` non-decreasing int64 from 0 to ``n_tokens``.
    """
    try:
        offsets = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise MappingError(f"unreadable ({exc})") from exc
    if (
        offsets.dtype != np.int64
        or offsets.shape != (n_docs + 1,)
        or offsets[0] != 0
        or offsets[-1] != n_tokens
        or np.any(np.diff(offsets) < 0)
    ):
        raise MappingError(f"not {n_docs + 1} non-decreasing int64 offsets from 0 to {n_tokens}")
    return offsets


def read_doc_ids(raw: bytes, n_docs: int) -> list[str]:
    """Parse and validate ``doc_ids.parquet``.

    Raises
    ------
    MappingError
        When the file is unreadable or does not hold ``n_docs`` ids.
    """
    try:
        ids = pq.read_table(io.BytesIO(raw))["doc_id"].to_pylist()
    except (pa.ArrowException, ValueError, KeyError, OSError) as exc:
        raise MappingError(f"unreadable ({exc})") from exc
    if len(ids) != n_docs:
        raise MappingError(f"{len(ids)} ids for {n_docs} documents")
    return ids
