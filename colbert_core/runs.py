"""TREC run files: writing (atomic, deterministic) and reading (strict, line-numbered)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ir_measures import ScoredDoc

from .atomic import write_text_atomic

logger = logging.getLogger(__name__)


class RunFormatError(ValueError):
    """A run file line is not ``qid Q0 docid rank score tag``."""


def write_trec_run(
    path: str | Path, results: Mapping[str, Sequence[tuple[str, float]]], *, tag: str = "colbert"
) -> int:
    """Write ranked results as a TREC run; returns the number of lines.

    ``results`` maps query id to ``(doc_id, score)`` pairs already in rank order. Queries
    are written in the mapping's order; scores keep 6 decimals, enough to separate
    MaxSim sums of float16 vectors while keeping files diff-able.
    """
    if not _is_token(tag):
        raise RunFormatError(f"the run tag must be non-empty without whitespace: {tag!r}")
    buf = io.StringIO()
    n = 0
    for qid, ranked in results.items():
        for rank, (doc_id, score) in enumerate(ranked, start=1):
            # An empty id would shift the columns just like one with a space in it.
            if not (_is_token(doc_id) and _is_token(qid)):
                raise RunFormatError(
                    "ids must be non-empty and must not contain whitespace in a TREC run: "
                    f"{qid!r} / {doc_id!r}"
                )
            buf.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")
            n += 1
    write_text_atomic(path, buf.getvalue())
    return n


def _is_token(s: str) -> bool:
    return bool(s) and not any(c.isspace() for c in s)


def read_trec_run(path: str | Path) -> list[ScoredDoc]:
    """Read a TREC run (6 whitespace-separated columns), failing on the first bad line."""
    path = Path(path)
    out: list[ScoredDoc] = []
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RunFormatError(f"{path}:{lineno}: invalid UTF-8 ({exc.reason})") from exc
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise RunFormatError(
                    f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', "
                    f"got {len(parts)}"
                )
            try:
                score = float(parts[4])
            except ValueError as exc:
                raise RunFormatError(
                    f"{path}:{lineno}: score {parts[4]!r} is not a number"
                ) from exc
            out.append(ScoredDoc(parts[0], parts[2], score))
    return out


def group_run(run: Iterable[ScoredDoc]) -> dict[str, list[ScoredDoc]]:
    grouped: dict[str, list[ScoredDoc]] = {}
    for sd in run:
        grouped.setdefault(sd.query_id, []).append(sd)
    return grouped
