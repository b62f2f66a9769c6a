"""The queries of a run and the judgements that evaluate it, as one configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from colbert_core.config import check_choice
from colbert_core.data.readers import load_qrels, load_queries
from colbert_core.data.records import OnBadRecord, Qrel, Query, RejectLog
from colbert_core.data.sources import default_qrels


@dataclass(frozen=True)
class QuerySet:
    """Which queries to run and how to judge them.

    Attributes
    ----------
    queries
        BEIR folder, ``beir:<name>``, ``irds:<id>`` or a queries file.
    qrels
        Judgements; by default the queries' own dataset (:func:`default_qrels`).
    split
        Qrels split of a BEIR folder (also selects the judged queries).
    on_bad_record
        ``error`` or ``skip`` for malformed query records.
    """

    queries: str
    qrels: str | None = None
    split: str = "test"
    on_bad_record: str = "error"

    def __post_init__(self) -> None:
        check_choice(self, "on_bad_record", [m.value for m in OnBadRecord])

    @property
    def qrels_source(self) -> str | None:
        return default_qrels(self.queries, self.qrels)

    def params(self) -> dict[str, Any]:
        """What a run records about its queries."""
        return {"queries": self.queries, "qrels": self.qrels_source, "split": self.split}

    def load(self) -> LoadedQueries:
        """Read the queries (bad records per policy) and the qrels (strictly)."""
        rejects = RejectLog()
        queries = load_queries(
            self.queries, split=self.split, on_bad_record=self.on_bad_record, rejects=rejects
        )
        source = self.qrels_source
        qrels = load_qrels(source, split=self.split) if source else None
        return LoadedQueries(queries, qrels, rejects)


@dataclass
class LoadedQueries:
    queries: list[Query]
    qrels: list[Qrel] | None
    rejects: RejectLog = field(default_factory=RejectLog)
