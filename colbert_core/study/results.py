"""``results.parquet``: one row per (size, index config, search setting); its one owner.

A row is written for every point of the grid: ``status`` ``ok`` (measured), ``skipped``
(predicted not to fit the cluster, above the config's ``max_docs``, or the exact reference
is missing: ``reason`` says which, ``predicted_memory_gb`` what it would need) or
``failed`` (an error, with its message). The file is rewritten atomically after every
point, so a killed study loses at most the point in progress; a rerun skips the ``ok``
rows whose ``point_key`` (a hash of everything that defines the point: the documents, the
resolved index config, the search setting, the queries) matches.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ColbertBatchError
from ..storage import write_bytes_atomic

logger = logging.getLogger(__name__)

RESULTS = "results.parquet"
FORMAT_VERSION = 1


class StudyResultsError(ColbertBatchError, ValueError):
    """``results.parquet`` is unreadable or was written by another format version."""


@dataclass(frozen=True)
class ResultRow:
    """One point of a study.

    Quality columns (``ndcg10`` ... ``overlap10``) are ``None`` for synthetic sizes (no
    judgments, no exact reference) and for points that did not run. Latencies are in
    milliseconds and exclude query encoding (the same for every index); ``qps`` is all
    queries in one call, ``p50_ms``/``p95_ms``/``p99_ms`` one query at a time.
    """

    point_key: str
    study: str
    status: str  # ok | skipped | failed
    reason: str | None
    size_docs: int
    n_tokens: int
    synthetic: bool
    index_name: str
    index_type: str
    factory: str | None
    setting: str  # e.g. "k'=64 cand=256 nprobe=8"
    k: int
    k_prime: int
    max_candidates: int
    nprobe: int | None
    ef_search: int | None
    store: str | None
    predicted_memory_gb: float
    train_s: float | None = None
    add_s: float | None = None
    build_s: float | None = None
    peak_rss_mb: float | None = None
    index_bytes_per_token: float | None = None
    store_bytes_per_token: float | None = None
    total_bytes_per_token: float | None = None
    qps: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    ndcg10: float | None = None
    r10: float | None = None
    r100: float | None = None
    candidate_recall: float | None = None
    overlap10: float | None = None
    exact_ndcg10: float | None = None
    queries: int | None = None
    latency_queries: int | None = None
    config: str = "{}"  # JSON: the resolved index config and search setting
    versions: str = "{}"  # JSON: colbert-batch, faiss, torch, numpy, python
    created: str = ""


_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "str": pa.string(),
}


def _schema() -> pa.Schema:
    cols = []
    for f in fields(ResultRow):
        base = str(f.type).split("|")[0].strip()
        cols.append(pa.field(f.name, _TYPES[base]))
    return pa.schema(cols, metadata={b"colbert_batch_study_results": str(FORMAT_VERSION).encode()})


SCHEMA = _schema()


def point_key(definition: Mapping[str, Any]) -> str:
    """A stable hash of what defines a point (JSON with sorted keys).

    >>> point_key({"a": 1, "b": [2]}) == point_key({"b": [2], "a": 1})
    True
    """
    raw = json.dumps(definition, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


class StudyResults:
    """The rows of ``<study>/results.parquet``, kept in grid order."""

    def __init__(self, folder: str | Path, rows: Iterable[ResultRow] = ()):
        self.path = Path(folder) / RESULTS
        self._rows: dict[str, ResultRow] = {r.point_key: r for r in rows}

    @classmethod
    def load(cls, folder: str | Path) -> StudyResults:
        """The rows already written (none when the file does not exist yet).

        Raises
        ------
        StudyResultsError
            When the file is corrupt or of another format version; the message says to
            move it away (the study then re-measures every point).
        """
        path = Path(folder) / RESULTS
        if not path.exists():
            return cls(folder)
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise StudyResultsError(
                f"{path}: unreadable ({exc}); move it away to re-measure every point"
            ) from exc
        version = (table.schema.metadata or {}).get(b"colbert_batch_study_results")
        if version != str(FORMAT_VERSION).encode():
            raise StudyResultsError(
                f"{path}: written by another results format ({version!r}, expected "
                f"{FORMAT_VERSION}); move it away to re-measure every point"
            )
        names = {f.name for f in fields(ResultRow)}
        rows = [ResultRow(**{k: v for k, v in r.items() if k in names}) for r in table.to_pylist()]
        return cls(folder, rows)

    @property
    def rows(self) -> list[ResultRow]:
        return list(self._rows.values())

    def is_done(self, key: str) -> bool:
        """Whether the point was measured (skipped and failed points are retried)."""
        row = self._rows.get(key)
        return row is not None and row.status == "ok"

    def put(self, rows: Iterable[ResultRow]) -> None:
        """Add or replace rows (by ``point_key``) and rewrite the file atomically."""
        for row in rows:
            self._rows[row.point_key] = row
        self.save()

    def save(self) -> None:
        table = pa.Table.from_pylist([asdict(r) for r in self._rows.values()], schema=SCHEMA)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(self.path, buf.getvalue())
        logger.debug("wrote %d rows to %s", len(self._rows), self.path)
