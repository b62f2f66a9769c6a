"""TREC run files: the one rule for a valid run, a strict line-numbered reader, an atomic writer.

A run lists, per query, documents with a score: ``qid Q0 docid rank score tag``. The rule
every run obeys here, whether read from a file, written by a search or handed to
:func:`~colbert_core.evaluation.measures.evaluate`:

* ids are non-empty and hold no whitespace (the columns are whitespace-separated; see
  :func:`colbert_core.data.id_problem`);
* a score is a finite number (a NaN has no rank: measures that sort by it disagree);
* a document appears at most once per query (with two copies the last silently wins in
  ir_measures and a measure like RR@10 changes).

A run that breaks it is refused with the file and line (or the query and document), never
normalised silently: which copy of a duplicate, or which rank for a NaN, is a guess the
user should make. The ``rank`` column is ignored when reading (measures rank by score, as
trec_eval does).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ir_measures import ScoredDoc

from ..data import id_problem
from ..errors import ColbertBatchError
from ..storage import write_text_atomic

logger = logging.getLogger(__name__)


class RunFormatError(ColbertBatchError, ValueError):
    """A run breaks the run rule (the message names the file and line, or the entry)."""


class RunChecker:
    """Applies the run rule entry by entry; ``where`` names each entry in errors."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], str] = {}

    def check(self, qid: str, doc_id: str, score: float, where: str) -> None:
        for what, ident in (("query", qid), ("document", doc_id)):
            problem = id_problem(ident)
            if problem:
                raise RunFormatError(f"{where}: {what} id {ident!r} {problem}")
        if not math.isfinite(score):
            raise RunFormatError(
                f"{where}: score {score!r} of document {doc_id!r} for query {qid!r} is not a "
                "finite number; fix the system that wrote the run"
            )
        first = self._seen.get((qid, doc_id))
        if first is not None:
            raise RunFormatError(
                f"{where}: document {doc_id!r} appears twice for query {qid!r} (first at "
                f"{first}); a run lists each document once per query"
            )
        self._seen[(qid, doc_id)] = where


def check_run(run: Iterable[ScoredDoc], label: str = "run") -> list[ScoredDoc]:
    """The entries of an in-memory run, checked against the run rule.

    >>> check_run([ScoredDoc("q", "d", 1.0), ScoredDoc("q", "d", 0.5)])
    Traceback (most recent call last):
    ...
    colbert_core.evaluation.runs.RunFormatError: run entry 2: document 'd' appears twice \
for query 'q' (first at run entry 1); a run lists each document once per query
    """
    checker = RunChecker()
    entries = list(run)
    for i, sd in enumerate(entries, start=1):
        checker.check(sd.query_id, sd.doc_id, float(sd.score), f"{label} entry {i}")
    return entries


def format_trec_run(
    results: Mapping[str, Sequence[tuple[str, float]]], *, tag: str = "colbert"
) -> tuple[str, int]:
    """The run file text of ranked ``results`` and its number of lines.

    ``results`` maps query id to ``(doc_id, score)`` pairs already in rank order. Queries
    are written in the mapping's order; scores keep 6 decimals, enough to separate MaxSim
    sums of float16 vectors while keeping files diff-able.
    """
    if id_problem(tag):
        raise RunFormatError(f"the run tag {tag!r} {id_problem(tag)}")
    checker = RunChecker()
    buf = io.StringIO()
    n = 0
    for qid, ranked in results.items():
        for rank, (doc_id, score) in enumerate(ranked, start=1):
            checker.check(qid, doc_id, float(score), f"query {qid!r} rank {rank}")
            buf.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")
            n += 1
    return buf.getvalue(), n


def write_trec_run(
    path: str | Path, results: Mapping[str, Sequence[tuple[str, float]]], *, tag: str = "colbert"
) -> int:
    """Write ranked results as a TREC run file (atomically); returns the number of lines."""
    text, n = format_trec_run(results, tag=tag)
    write_text_atomic(path, text)
    return n


def read_trec_run(path: str | Path) -> list[ScoredDoc]:
    """Read a TREC run (6 whitespace-separated columns), failing on the first bad line."""
    path = Path(path)
    out: list[ScoredDoc] = []
    checker = RunChecker()
    if not path.is_file():
        raise RunFormatError(f"run file {path} not found; pass the path of a TREC run")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RunFormatError(f"{where}: invalid UTF-8 ({exc.reason})") from exc
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise RunFormatError(
                    f"{where}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}"
                )
            try:
                score = float(parts[4])
            except ValueError as exc:
                raise RunFormatError(f"{where}: score {parts[4]!r} is not a number") from exc
            checker.check(parts[0], parts[2], score, where)
            out.append(ScoredDoc(parts[0], parts[2], score))
    return out


def group_run(run: Iterable[ScoredDoc]) -> dict[str, list[ScoredDoc]]:
    grouped: dict[str, list[ScoredDoc]] = {}
    for sd in run:
        grouped.setdefault(sd.query_id, []).append(sd)
    return grouped
