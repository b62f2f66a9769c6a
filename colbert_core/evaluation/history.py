"""The nightly history: one row per check per run, append-only, local or on S3.

``history.parquet`` is a Parquet dataset: a folder (or S3 prefix) holding one file per run,
``run-<run id>.parquet``, written with a single atomic put when the run ends. Appending
therefore never rewrites what is there: two runs started at once write two files, a run
killed midway writes none, and readers see whole runs only. :class:`HistoryRow` is the one
owner of the row schema.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ColbertBatchError
from ..storage import open_storage

logger = logging.getLogger(__name__)

HISTORY_VERSION = 1
PART_PREFIX = "run-"

#: Columns stored as JSON text: nested maps whose keys vary by measure and query.
_JSON_COLUMNS = ("settings", "measures", "per_query", "latency_ms", "reasons")


class HistoryError(ColbertBatchError, ValueError):
    """A history file is unreadable, or a run id is reused."""


@dataclass
class HistoryRow:
    """One check of one nightly run.

    Attributes
    ----------
    run_id, timestamp
        The run (ids sort by time) and when it started (UTC, ISO 8601).
    check
        The check's name in the suite.
    accepted
        Whether this run is a baseline (``nightly --accept``).
    verdict
        ``pass`` or ``regressed``.
    version, git_commit
        colbert-batch's version and the source commit, when known.
    model_fingerprint, source_sha256
        The model, and the checksum of what was searched (index ``meta.json``, manifest or
        reranked run): a rebuilt index shows up here.
    settings
        The check's search settings.
    measures, per_query
        Mean per measure; measure -> query id -> value (for the paired tests).
    latency_ms, calibration_ms, latency_ratio
        p50/p95/p99 per query, the MaxSim calibration timed just before the check, and
        ``p50 / calibration``.
    reasons
        Why the check regressed (empty when it passed).
    """

    run_id: str
    timestamp: str
    check: str
    accepted: bool
    verdict: str
    version: str
    git_commit: str | None
    model_fingerprint: str
    source_sha256: str
    settings: dict[str, Any] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    latency_ms: dict[str, float | None] = field(default_factory=dict)
    calibration_ms: float | None = None
    latency_ratio: float | None = None
    reasons: list[str] = field(default_factory=list)
    format_version: int = HISTORY_VERSION


def rows_to_parquet(rows: Sequence[HistoryRow]) -> bytes:
    """The rows as one Parquet file (nested maps as JSON text columns)."""
    columns: dict[str, list[Any]] = {f.name: [] for f in fields(HistoryRow)}
    for row in rows:
        for name, value in asdict(row).items():
            columns[name].append(json.dumps(value) if name in _JSON_COLUMNS else value)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def rows_from_parquet(raw: bytes, where: str) -> list[HistoryRow]:
    try:
        records = pq.read_table(io.BytesIO(raw)).to_pylist()
        names = {f.name for f in fields(HistoryRow)}
        return [
            HistoryRow(
                **{
                    k: (json.loads(v) if k in _JSON_COLUMNS else v)
                    for k, v in record.items()
                    if k in names
                }
            )
            for record in records
        ]
    except (pa.ArrowException, OSError, TypeError, ValueError) as exc:
        raise HistoryError(f"{where}: unreadable history part ({exc})") from exc


class History:
    """The history dataset at ``uri`` (a folder or ``s3://`` prefix)."""

    def __init__(self, uri: str):
        self.uri = uri
        self.storage = open_storage(uri)

    def part(self, run_id: str) -> str:
        return f"{PART_PREFIX}{run_id}.parquet"

    def rows(self) -> list[HistoryRow]:
        """Every row of every complete run, oldest run first."""
        out: list[HistoryRow] = []
        for key in self.storage.list(""):
            name = key.rsplit("/", 1)[-1]
            if name.startswith(PART_PREFIX) and name.endswith(".parquet"):
                out += rows_from_parquet(self.storage.get(key), self.storage.describe(key))
        return sorted(out, key=lambda r: (r.run_id, r.check))

    def append(self, run_id: str, rows: Sequence[HistoryRow]) -> None:
        """Add one run's rows as one new part (a single atomic put).

        Raises
        ------
        HistoryError
            When this run id is already in the history.
        """
        key = self.part(run_id)
        if self.storage.size(key) is not None:
            raise HistoryError(f"{self.storage.describe(key)} exists: run id {run_id} reused")
        self.storage.put(key, rows_to_parquet(rows))
        logger.info("history: %d rows of run %s in %s", len(rows), run_id, self.uri)

    def baseline(
        self, check: str, run_id: str | None = None, rows: Sequence[HistoryRow] | None = None
    ) -> HistoryRow | None:
        """The row to compare ``check`` with: that of run ``run_id`` when given, else the
        most recent accepted run's."""
        rows = self.rows() if rows is None else rows
        mine = [r for r in rows if r.check == check]
        if run_id is not None:
            return next((r for r in mine if r.run_id == run_id), None)
        accepted = [r for r in mine if r.accepted]
        return accepted[-1] if accepted else None

    def run_ids(self, rows: Sequence[HistoryRow] | None = None) -> list[str]:
        rows = self.rows() if rows is None else rows
        return sorted({r.run_id for r in rows})
