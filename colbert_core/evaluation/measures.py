"""Retrieval metrics with ir_measures, reported honestly.

A judged query absent from the run is *reported* (``missing_from_run``) rather than
silently scored 0: aggregates are over the queries present in both, as trec_eval does,
and the metrics file says how many judged queries that leaves out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ir_measures
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ir_measures import Qrel as IrQrel
from ir_measures import ScoredDoc

from ..data import Qrel
from ..errors import ColbertBatchError
from .runs import check_run

logger = logging.getLogger(__name__)

DEFAULT_MEASURES: tuple[str, ...] = ("nDCG@10", "R@10", "R@100", "RR@10")


class MeasureError(ColbertBatchError, ValueError):
    """A measure name ir_measures cannot parse."""


def parse_measures(names: Sequence[str] | None = None) -> list[Any]:
    """Default measures plus ``names`` (ir_measures syntax, e.g. ``"P@5"``, ``"AP"``)."""
    wanted = list(DEFAULT_MEASURES) + [n for n in (names or []) if n not in DEFAULT_MEASURES]
    parsed = []
    for name in wanted:
        try:
            parsed.append(ir_measures.parse_measure(name))
        except (ValueError, NameError, SyntaxError, TypeError) as exc:
            raise MeasureError(
                f"unknown measure {name!r}; use ir_measures names such as nDCG@10, R@100, "
                "RR@10, P@5, AP"
            ) from exc
    return parsed


@dataclass
class Evaluation:
    """Aggregate and per-query results of one run against one qrels set."""

    measures: dict[str, float]
    per_query: dict[str, dict[str, float]]
    judged_queries: int
    evaluated_queries: int
    missing_from_run: list[str] = field(default_factory=list)
    unjudged_in_run: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "measures": self.measures,
            "queries": self.evaluated_queries,
            "judged_queries": self.judged_queries,
            "missing_from_run": self.missing_from_run,
            "unjudged_in_run": len(self.unjudged_in_run),
        }


def evaluate(
    run: Iterable[ScoredDoc], qrels: Iterable[Qrel], measures: Sequence[str] | None = None
) -> Evaluation:
    """Evaluate ``run`` against ``qrels``.

    Examples
    --------
    >>> from colbert_core.data import Qrel
    >>> ev = evaluate([ScoredDoc("q1", "d1", 2.0), ScoredDoc("q1", "d2", 1.0)],
    ...               [Qrel("q1", "d2", 1), Qrel("q2", "d5", 1)], ["P@1"])
    >>> round(ev.measures["RR@10"], 3), ev.missing_from_run
    (0.5, ['q2'])
    """
    parsed = parse_measures(measures)
    run = check_run(run)
    ir_qrels = [IrQrel(q.query_id, q.doc_id, int(q.relevance)) for q in qrels]
    judged = {q.query_id for q in ir_qrels}
    in_run = {sd.query_id for sd in run}
    missing = sorted(judged - in_run)
    unjudged = sorted(in_run - judged)
    if missing:
        logger.warning(
            "%d judged queries have no results in the run and are left out of the averages "
            "(e.g. %s)",
            len(missing),
            missing[:5],
        )
    per_query: dict[str, dict[str, float]] = {}
    for m in ir_measures.iter_calc(parsed, ir_qrels, run):
        per_query.setdefault(m.query_id, {})[str(m.measure)] = float(m.value)
    # Aggregate exactly over the per-query values: one definition of "mean" everywhere.
    evaluated = sorted(q for q in per_query if q in judged and q in in_run)
    agg = {
        str(m): (sum(per_query[q].get(str(m), 0.0) for q in evaluated) / len(evaluated))
        if evaluated
        else 0.0
        for m in parsed
    }
    return Evaluation(
        measures=agg,
        per_query={q: per_query[q] for q in evaluated},
        judged_queries=len(judged),
        evaluated_queries=len(evaluated),
        missing_from_run=missing,
        unjudged_in_run=unjudged,
    )


def per_query_parquet(
    ev: Evaluation, extra: Mapping[str, Mapping[str, float]] | None = None
) -> bytes:
    """``per_query.parquet``: one row per evaluated query, one column per measure, then one
    per ``extra`` entry (column name -> query id -> value, e.g. ``latency_ms``)."""
    names = list(ev.measures)
    qids = list(ev.per_query)
    columns = {n: [ev.per_query[q].get(n) for q in qids] for n in names}
    columns |= {name: [values.get(q) for q in qids] for name, values in (extra or {}).items()}
    table = pa.table(
        {"query_id": pa.array(qids, pa.string())}
        | {n: pa.array(v, pa.float64()) for n, v in columns.items()}
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def latency_percentiles(latency_ms: Iterable[float]) -> dict[str, float | None]:
    """p50/p95/p99 of per-query latencies in ms, as ``metrics.json`` reports them.

    >>> latency_percentiles([1.0, 2.0, 3.0, 4.0])
    {'p50': 2.5, 'p95': 3.85, 'p99': 3.97}
    """
    lat = np.fromiter(latency_ms, dtype=np.float64)
    return {
        p: round(float(np.percentile(lat, int(p[1:]))), 2) if lat.size else None
        for p in ("p50", "p95", "p99")
    }


def candidate_recall(candidates: dict[str, set[str]], qrels: Iterable[Qrel]) -> float | None:
    """Mean over judged queries of the fraction of relevant documents among candidates.

    >>> candidate_recall({"q": {"a", "b"}}, [Qrel("q", "a", 1), Qrel("q", "c", 2)])
    0.5
    """
    relevant: dict[str, set[str]] = {}
    for q in qrels:
        if q.relevance > 0:
            relevant.setdefault(q.query_id, set()).add(q.doc_id)
    values = [
        len(rel & candidates.get(qid, set())) / len(rel)
        for qid, rel in relevant.items()
        if qid in candidates
    ]
    return round(sum(values) / len(values), 4) if values else None


def format_table(measures: dict[str, float]) -> str:
    """A two-column text table of measure values."""
    width = max((len(k) for k in measures), default=7)
    lines = [f"{'measure':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in measures.items()]
    return "\n".join(lines)
