"""The study folder and its plan: which points to run, which to skip, and why.

Layout of a study folder::

    study.json                 the resolved study config (written first)
    embeddings/target/         ROOT of the target corpus (encoded once)
    embeddings/distractors/    ROOT of the distractors (their first max(sizes)-|target|,
                               rounded up to whole shards; encoded once)
    exact/size-<N>.parquet     the exact reference of each real size
    indexes/size-<N>/<name>/   an index while its point runs (kept with keep_indexes)
    results.parquet            one row per (size, index config, search setting)
    report.md, plots/*.png     written at the end of every run

A point is skipped, with a row saying why, when its index config has ``max_docs`` below
the size, when its predicted memory exceeds what the largest node offers, or (for a real
size) when no exact reference could be computed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..config import config_to_dict
from ..storage import write_json_atomic
from .config import IndexEntry, StudyConfig
from .points import PointSpec, gib, not_run_row, predict_memory_bytes
from .results import ResultRow, StudyResults
from .sizes import SizeInfo, SourceSpec

STUDY_JSON = "study.json"


@dataclass(frozen=True)
class Layout:
    """Where a study keeps each artifact."""

    out: Path

    @property
    def target(self) -> str:
        return str(self.out / "embeddings" / "target")

    @property
    def distractors(self) -> str:
        return str(self.out / "embeddings" / "distractors")

    def index_dir(self, size: int, name: str, synthetic: bool) -> str:
        kind = "synthetic" if synthetic else "size"
        return str(self.out / "indexes" / f"{kind}-{size}" / name)


def write_study_json(study: StudyConfig, layout: Layout) -> None:
    """The resolved study config next to its outputs (what every number was made with)."""
    d = config_to_dict(study)
    d.pop("raw", None)
    d["indexes"] = [
        {
            "name": e.name,
            "index": config_to_dict(e.index),
            "settings": [config_to_dict(s) for s in e.settings],
            "max_docs": e.max_docs,
        }
        for e in study.indexes
    ]
    layout.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(layout.out / STUDY_JSON, d)


def distractors_needed(study: StudyConfig, target_docs: int) -> int:
    """Distractors the largest real size needs, rounded up to whole shards: a later study
    with a slightly larger size then re-encodes at most one shard."""
    need = max(0, max(study.sizes) - target_docs)
    shard = study.shard_size
    return math.ceil(need / shard) * shard if need else 0


@dataclass(frozen=True)
class PlannedPoint:
    """A point to run (``skip`` is None) or to record as skipped (``skip`` says why)."""

    point: PointSpec
    source: SourceSpec
    skip: str | None = None


def plan_points(
    study: StudyConfig,
    layout: Layout,
    sizes: list[SizeInfo],
    results: StudyResults,
    queries_sha256: str,
    node_memory_bytes: float,
    dim: int,
) -> Iterator[PlannedPoint]:
    """Every point still to measure, in size order (real, then synthetic).

    Points whose every setting is already ``ok`` in ``results`` are left out.
    """
    for info in sorted(sizes, key=lambda i: (i.source.synthetic, i.source.size_docs)):
        for entry in study.indexes:
            point = _point(study, layout, entry, info, dim)
            point = dataclasses.replace(point, queries_sha256=queries_sha256)
            if all(results.is_done(point.key(s)) for s in entry.settings):
                continue
            skip = _skip_reason(point, node_memory_bytes, study.max_point_memory_gb)
            yield PlannedPoint(point, info.source, skip)


def _point(
    study: StudyConfig,
    layout: Layout,
    entry: IndexEntry,
    info: SizeInfo,
    dim: int,
) -> PointSpec:
    index = entry.resolved(info.n_tokens, dim)
    size, synthetic = info.source.size_docs, info.source.synthetic
    return PointSpec(
        study=study.name,
        size_docs=size,
        n_tokens=info.n_tokens,
        dim=dim,
        synthetic=synthetic,
        entry=entry,
        index=index,
        index_dir=layout.index_dir(size, entry.name, synthetic),
        k=study.k,
        latency_queries=study.latency_queries,
        keep_index=study.keep_indexes,
        predicted_bytes=predict_memory_bytes(index, info.n_tokens, dim, info.shard_tokens),
        source_sha256=info.source_sha256,
        queries_sha256="",
    )


def _skip_reason(point: PointSpec, node_memory_bytes: float, limit_gb: float | None) -> str | None:
    if point.entry.max_docs is not None and point.size_docs > point.entry.max_docs:
        return f"above this index config's max_docs ({point.entry.max_docs}) in the study YAML"
    if point.predicted_bytes > node_memory_bytes:
        return (
            f"predicted memory {gib(point.predicted_bytes)} exceeds the largest node's "
            f"{gib(node_memory_bytes)} (Ray memory resource)"
        )
    if limit_gb is not None and point.predicted_bytes > limit_gb * 2**30:
        return (
            f"predicted memory {gib(point.predicted_bytes)} exceeds max_point_memory_gb "
            f"({limit_gb:g} GiB) in the study YAML"
        )
    return None


def skipped_rows(planned: PlannedPoint, reason: str) -> list[ResultRow]:
    """One ``skipped`` row per setting of a point that will not run."""
    return [not_run_row(planned.point, s, "skipped", reason) for s in planned.point.entry.settings]


def failed_rows(planned: PlannedPoint, reason: str) -> list[ResultRow]:
    """One ``failed`` row per setting of a point whose task raised or died."""
    return [not_run_row(planned.point, s, "failed", reason) for s in planned.point.entry.settings]


def describe(planned: PlannedPoint) -> str:
    """``size 30000 ivfpq`` / ``synthetic 1000000 ivfpq`` for progress and logs."""
    p = planned.point
    return f"{'synthetic' if p.synthetic else 'size'} {p.size_docs} {p.entry.name}"
