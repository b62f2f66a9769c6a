"""The run folder (``RUNDIR``) every search, rerank and BM25 run writes, local or on S3.

Files::

    RUNDIR/run.trec           qid Q0 docid rank score tag
    RUNDIR/per_query.parquet  one row per evaluated query (with qrels only)
    RUNDIR/rejects.jsonl      queries skipped under --on-bad-record skip (if any)
    RUNDIR/metrics.json       written last: the folder is complete exactly when it exists

:class:`RunMetrics` is the one owner of ``metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

from ir_measures import ScoredDoc

from ..data import LoadedQueries, Qrel
from ..errors import ColbertBatchError
from ..storage import Storage, open_storage
from .measures import Evaluation, evaluate, per_query_parquet
from .runs import format_trec_run

logger = logging.getLogger(__name__)

RUN_FILE = "run.trec"
METRICS = "metrics.json"
PER_QUERY = "per_query.parquet"
QUERY_REJECTS = "rejects.jsonl"
METRICS_VERSION = 1
#: How many example ids lists in ``metrics.json`` keep (counts are always complete).
EXAMPLES = 20


class RunFolderError(ColbertBatchError, ValueError):
    """A ``metrics.json`` that cannot be read."""


@dataclass
class RunMetrics:
    """The parsed ``metrics.json`` of a run folder.

    Attributes
    ----------
    params
        The settings that made the run (mode, k, queries, qrels, split, ...); a run folder
        is reused for the same settings and source only.
    source
        Checksums of what was searched (``index_meta_sha256``, ``manifest_sha256``,
        ``run_sha256``): a rebuilt index makes the run stale.
    measures
        Mean of each measure over the evaluated queries (empty without qrels).
    queries, judged_queries
        Queries evaluated (in the run and judged) and judged queries.
    missing_from_run
        Judged queries with no results: reported and left out of the means.
    unjudged_in_run
        Queries in the run without judgements.
    qrels_not_in_corpus
        ``{"count": n, "examples": [...]}``: judged documents the searched collection does
        not hold (they can never be retrieved); ``None`` when not checked.
    empty_queries, truncated_queries, query_rejects
        Queries with empty text, queries cut at ``query_maxlen`` (id -> tokens lost), and
        queries skipped as bad records.
    encoder, timings, latency_ms, candidate_recall, workers
        The query encoder, where the time went, per-query latency percentiles, the
        candidate stage's recall of relevant documents, and per-worker counts.
    unknown_documents, queries_without_run
        Rerank only: run documents absent from the collection, queries the run lacks.
    """

    params: dict[str, Any]
    source: dict[str, str] = field(default_factory=dict)
    measures: dict[str, float] = field(default_factory=dict)
    queries: int = 0
    judged_queries: int = 0
    missing_from_run: list[str] = field(default_factory=list)
    unjudged_in_run: int = 0
    qrels_not_in_corpus: dict[str, Any] | None = None
    empty_queries: list[str] = field(default_factory=list)
    truncated_queries: dict[str, int] = field(default_factory=dict)
    query_rejects: int = 0
    encoder: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float | None] | None = None
    candidate_recall: float | None = None
    workers: dict[str, Any] | None = None
    unknown_documents: int | None = None
    queries_without_run: list[str] | None = None
    format_version: int = METRICS_VERSION

    def is_complete_for(self, params: Mapping[str, Any], source: Mapping[str, str]) -> bool:
        """Whether this run was made with ``params`` from exactly ``source``."""
        return self.params == dict(params) and self.source == dict(source)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if v is not None}

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, default=str) + "\n").encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> RunMetrics:
        try:
            d = json.loads(raw.decode("utf-8"))
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in names})
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
            raise RunFolderError(f"{where}: unreadable metrics ({exc}); run it again") from exc

    @classmethod
    def load(cls, rundir: str) -> RunMetrics | None:
        """``metrics.json`` of ``rundir`` (folder or ``s3://``), ``None`` when absent."""
        storage = open_storage(rundir)
        try:
            raw = storage.get(METRICS)
        except FileNotFoundError:
            return None
        return cls.from_json(raw, storage.describe(METRICS))


def scored_docs(ranked: Mapping[str, Sequence[tuple[str, float]]]) -> list[ScoredDoc]:
    """A ranked mapping as ir_measures entries, scores as ``run.trec`` writes them (6
    decimals), so evaluating the file later gives the same numbers."""
    return [ScoredDoc(q, d, round(s, 6)) for q, docs in ranked.items() for d, s in docs]


def write_run_folder(
    out: str,
    ranked: Mapping[str, Sequence[tuple[str, float]]],
    metrics: RunMetrics,
    *,
    tag: str,
    queries: LoadedQueries | None = None,
    measures: Sequence[str] = (),
    collection: Set[str] | None = None,
    per_query: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[RunMetrics, Evaluation | None]:
    """Write ``run.trec``, then (with qrels) ``per_query.parquet``, then ``metrics.json``.

    Parameters
    ----------
    out
        The run folder or ``s3://`` prefix.
    ranked
        Query id -> ``(doc_id, score)`` best first.
    metrics
        What the caller knows (params, source, timings, ...); the evaluation is added.
    queries
        The run's queries: their qrels evaluate it, their rejects are written beside it.
    collection
        Every document id that could have been retrieved: judged documents outside it are
        counted in ``qrels_not_in_corpus`` and logged.
    per_query
        Extra ``per_query.parquet`` columns: name -> query id -> value.

    Returns
    -------
    The metrics as written and the evaluation (``None`` without qrels).
    """
    storage = open_storage(out)
    storage.delete(METRICS)  # incomplete until the new metrics.json lands
    text, _ = format_trec_run(ranked, tag=tag)
    storage.put(RUN_FILE, text.encode("utf-8"))
    rejects = queries.rejects if queries is not None else None
    metrics.query_rejects = len(rejects) if rejects else 0
    if rejects:
        storage.put(QUERY_REJECTS, rejects.to_jsonl().encode("utf-8"))
    qrels = queries.qrels if queries is not None else None
    metrics.queries = len(ranked)
    ev = None
    if qrels is not None:
        ev = evaluate(scored_docs(ranked), qrels, measures)
        if collection is not None:
            metrics.qrels_not_in_corpus = qrels_outside(qrels, collection)
    save_evaluation(storage, metrics, ev, per_query)
    return metrics, ev


def save_evaluation(
    out: str | Storage,
    metrics: RunMetrics,
    ev: Evaluation | None,
    per_query: Mapping[str, Mapping[str, float]] | None = None,
) -> None:
    """Store ``per_query.parquet`` (with an evaluation) and then ``metrics.json``."""
    storage = open_storage(out) if isinstance(out, str) else out
    if ev is not None:
        _add_evaluation(metrics, ev)
        storage.put(PER_QUERY, per_query_parquet(ev, per_query))
    storage.put(METRICS, metrics.to_json())


def _add_evaluation(metrics: RunMetrics, ev: Evaluation) -> None:
    metrics.measures = ev.measures
    metrics.queries = ev.evaluated_queries
    metrics.judged_queries = ev.judged_queries
    metrics.missing_from_run = ev.missing_from_run
    metrics.unjudged_in_run = len(ev.unjudged_in_run)


def qrels_outside(qrels: Iterable[Qrel], collection: Set[str]) -> dict[str, Any]:
    """Judged documents (any grade) absent from ``collection``: count and examples, logged.

    >>> qrels_outside([Qrel("q", "a", 1), Qrel("q", "z", 0)], {"a"})
    {'count': 1, 'examples': ['z']}
    """
    outside = sorted({q.doc_id for q in qrels} - collection)
    if outside:
        logger.warning(
            "%d judged documents are not in the searched collection and can never be "
            "retrieved (e.g. %s); metrics.json lists them under qrels_not_in_corpus",
            len(outside),
            outside[:5],
        )
    return {"count": len(outside), "examples": outside[:EXAMPLES]}
