"""`colbert-batch study STUDY.yaml`: index types x corpus sizes grown with distractors.

Encodes the target corpus and the distractors once (the encode job, Ray actors), computes
the exact reference of every real size in one pass (a Ray task), then runs each grid point
- one (size, index config): build, then every search setting - as a Ray task with its
predicted memory declared, one at a time. Rows land in ``results.parquet`` after every
point; ``report.md`` and the plots are rewritten at the end. Rerunning skips what is done.
See :mod:`colbert_core.study` for the YAML and the folder layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colbert_core.data import QuerySet, open_corpus
from colbert_core.embeddings import Embeddings, Manifest
from colbert_core.errors import ColbertBatchError
from colbert_core.search.queries import encode_queries, load_query_encoder, report_queries
from colbert_core.study import (
    ResultRow,
    StudyConfig,
    StudyResults,
    check_sizes,
    load_study,
)
from colbert_core.study.plan import (
    Layout,
    PlannedPoint,
    describe,
    distractors_needed,
    failed_rows,
    plan_points,
    skipped_rows,
    write_study_json,
)
from colbert_core.study.points import QueryBundle
from colbert_core.study.report import write_report
from colbert_core.study.sizes import (
    Reference,
    SizeInfo,
    SourceSpec,
    load_reference,
    load_template,
    make_template,
    queries_sha256,
    save_reference,
    save_template,
)

from ..cluster import ClusterOptions, connect_for
from ..cluster.actor_pool import cause_of, is_user_error
from ..cluster.hooks import park_point
from ..cluster.study_tasks import StudyTasks, node_memory_bytes
from ..console import progress_bar
from . import encode
from .encode import add_shared_fs_argument

logger = logging.getLogger(__name__)

HELP = "scaling study: index types x corpus sizes grown with distractors (YAML)"


@dataclass(frozen=True)
class Config:
    config: str
    out: str | None = None
    ray_address: str | None = None
    shared_fs: bool = False


@dataclass
class StudyOutcome:
    """What a study run did (``report`` prints it)."""

    study: StudyConfig
    layout: Layout
    rows: list[ResultRow]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    encoded: dict[str, int] = field(default_factory=dict)  # ROOT -> shards written
    phases: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="study YAML (e.g. jobs/configs/study-scifact.yaml)")
    p.add_argument("--out", help="study folder (default: the YAML's `out`)")
    p.add_argument("--ray-address", help="join this Ray cluster")
    add_shared_fs_argument(p)


def run(config: Config) -> StudyOutcome:
    t0 = time.perf_counter()
    study = load_study(config.config)
    if config.out:
        study = dataclasses.replace(study, out=config.out)
    check_sizes(study, *_counts(study))  # before any work
    layout = Layout(Path(study.out))
    res = connect_for(config.ray_address, {"--out": study.out}, shared_fs=config.shared_fs)
    write_study_json(study, layout)
    outcome = StudyOutcome(study, layout, [])
    cluster = ClusterOptions(ray_address=config.ray_address, shared_fs=config.shared_fs)
    with progress_bar(None, "study", unit="point") as bar:
        bar.set_postfix_str("encode")
        target_docs = _encode(study, layout, cluster, outcome)
        queries = _queries(study, layout)
        bar.set_postfix_str("sizes")
        sizes = _sizes(study, layout, target_docs, outcome)
        bar.set_postfix_str("exact references")
        refs = _references(study, layout, sizes, queries, StudyTasks(res), outcome)
        dim = Embeddings(layout.target).dim
        results = _measure_sizes(study, sizes, queries, refs, dim, StudyTasks(res), outcome, bar)
    outcome.rows = results.rows
    outcome.phases["total_s"] = time.perf_counter() - t0
    outcome.files = write_report(layout.out, outcome.rows, title=study.name, notes=_notes(outcome))
    return outcome


def _counts(study: StudyConfig) -> tuple[int, int | None]:
    """Documents in the target corpus and the distractor source (cheap pre-counts)."""
    target = open_corpus(study.corpus).estimate_count()
    if target is None:  # not countable cheaply: the encode output will tell
        target = 0
    distractors = open_corpus(study.distractors).estimate_count() if study.distractors else 0
    return target, distractors


def _encode(study: StudyConfig, layout: Layout, cluster: ClusterOptions, outcome: Any) -> int:
    """Encode the target, then the distractors the largest size needs; the target's size."""
    t0 = time.perf_counter()
    _encode_one(encode.Config(study.encode_config("target", layout.target), cluster), outcome)
    target_docs = Embeddings(layout.target).n_docs
    check_sizes(study, target_docs, None)
    need = distractors_needed(study, target_docs)
    if need:
        job = encode.Config(study.encode_config("distractors", layout.distractors, need), cluster)
        _encode_one(job, outcome)
    outcome.phases["encode_s"] = time.perf_counter() - t0
    return target_docs


def _encode_one(job: encode.Config, outcome: StudyOutcome) -> None:
    manifest = encode.ensure_encoded(job)
    written = manifest.summary.get("shards_written", 0) if manifest is not None else 0
    outcome.encoded[job.encode.out] = int(written)


def _queries(study: StudyConfig, layout: Layout) -> QueryBundle:
    loaded = QuerySet(study.queries, study.qrels, study.split).load()
    if loaded.qrels is None:
        raise ColbertBatchError(
            f"{study.path}: no qrels for {study.queries}: a study measures quality against "
            "judgments; set `qrels`"
        )
    encoder = load_query_encoder(Manifest.load(layout.target).encoder)
    encoded = encode_queries(encoder, loaded.queries)
    report_queries(encoded.truncated, encoded.empty)
    return QueryBundle(encoded.query_ids, encoded.vectors, list(loaded.qrels))


def _sizes(
    study: StudyConfig, layout: Layout, target_docs: int, outcome: StudyOutcome
) -> list[SizeInfo]:
    """Every size's source and token count; the synthetic template is drawn once."""
    distractors = layout.distractors if max(study.sizes) > target_docs else None
    real = [
        SizeInfo.of(SourceSpec(s, layout.target, distractors, target_docs)) for s in study.sizes
    ]
    if not study.synthetic_sizes:
        return real
    t0 = time.perf_counter()
    largest = real[-1]
    template = load_template(layout.out, largest.source_sha256)
    if template is None:
        logger.info("drawing the synthetic template from size %d", largest.source.size_docs)
        template = make_template(largest.source.open(), study.seed)
        save_template(layout.out, template)
    synthetic = [
        SizeInfo.of(SourceSpec(s, "", None, 0, template, study.shard_size, study.seed))
        for s in study.synthetic_sizes
    ]
    outcome.phases["template_s"] = time.perf_counter() - t0
    return real + synthetic


def _references(
    study: StudyConfig,
    layout: Layout,
    sizes: list[SizeInfo],
    queries: QueryBundle,
    tasks: StudyTasks,
    outcome: StudyOutcome,
) -> dict[int, Reference]:
    """Stored references that still match, and one exact pass for the missing ones."""
    t0 = time.perf_counter()
    q_sha = queries_sha256(queries.query_ids, queries.vectors)
    refs: dict[int, Reference] = {}
    missing: list[SizeInfo] = []
    for info in (i for i in sizes if not i.source.synthetic):
        ref = load_reference(layout.out, info.source.size_docs)
        if ref is not None and (ref.source_sha256, ref.queries_sha256) == (
            info.source_sha256,
            q_sha,
        ):
            refs[info.source.size_docs] = ref
        else:
            missing.append(info)
    if missing:
        logger.info("exact references for sizes %s", [m.source.size_docs for m in missing])
        budget = study.exact_memory_budget_mb << 20
        computed = tasks.references(
            missing[-1].source,
            [m.source for m in missing],
            queries.query_ids,
            queries.vectors,
            study.k,
            budget,
        )
        for ref in computed:
            save_reference(layout.out, ref)
            refs[ref.size_docs] = ref
    outcome.phases["exact_s"] = time.perf_counter() - t0
    return refs


def _measure_sizes(
    study: StudyConfig,
    sizes: list[SizeInfo],
    queries: QueryBundle,
    refs: dict[int, Reference],
    dim: int,
    tasks: StudyTasks,
    outcome: StudyOutcome,
    bar: Any,
) -> StudyResults:
    """Plan every (size, index config) point of ``sizes`` and run those not yet measured;
    the study's results, with this run's rows saved as each point ends."""
    results = StudyResults.load(outcome.layout.out)
    planned = list(
        plan_points(
            study,
            outcome.layout,
            sizes,
            results,
            queries_sha256(queries.query_ids, queries.vectors),
            node_memory_bytes(),
            dim,
        )
    )
    bar.reset(total=len(planned))
    _run_points(planned, queries, refs, tasks, results, outcome, bar)
    return results


def _run_points(
    planned: list[PlannedPoint],
    queries: QueryBundle,
    refs: dict[int, Reference],
    tasks: StudyTasks,
    results: StudyResults,
    outcome: StudyOutcome,
    bar: Any,
) -> None:
    """Each point in turn; its rows are saved as soon as it ends."""
    import ray

    queries_ref = ray.put(queries)
    for p in planned:
        name = describe(p)
        bar.set_postfix_str(name)
        park_point("study-point")
        reference = None if p.point.synthetic else refs.get(p.point.size_docs)
        t0 = time.perf_counter()
        if p.skip:
            rows = skipped_rows(p, p.skip)
            outcome.skipped.append(f"{name}: {p.skip}")
            logger.info("skipping %s: %s", name, p.skip)
        else:
            rows = _run_one(p, queries_ref, reference, tasks, outcome)
        key = f"{p.point.entry.name}_s"
        outcome.phases[key] = outcome.phases.get(key, 0.0) + time.perf_counter() - t0
        results.put(rows)
        bar.update(1)


def _run_one(
    p: PlannedPoint,
    queries_ref: Any,
    reference: Reference | None,
    tasks: StudyTasks,
    outcome: StudyOutcome,
) -> list[ResultRow]:
    name = describe(p)
    try:
        with progress_bar(p.point.n_tokens, "build", unit="tok") as bar:
            rows = tasks.point(p, queries_ref, reference, _PointProgress(name, bar))
    except Exception as exc:
        if not is_user_error(exc) and not _worker_died(exc):
            raise  # a bug: traceback
        cause = cause_of(exc)
        reason = f"{type(cause).__name__}: {str(cause).splitlines()[0][:300]}"
        logger.error("point %s failed: %s", name, reason)
        outcome.failed.append(f"{name}: {reason}")
        return failed_rows(p, reason)
    outcome.ran.append(name)
    return rows


class _PointProgress:
    """A point's stages as a bar under the study's (tokens added) and one log line each:
    without a terminal (CI, ``ray job submit``) the log is the progress."""

    def __init__(self, name: str, bar: Any):
        self.name, self.bar, self.stage = name, bar, ""

    def __call__(self, stage: str, n: int) -> None:
        if stage != self.stage:
            self.stage = stage
            logger.info("%s: %s", self.name, stage)
            self.bar.set_description(stage.split(" ")[0])
        self.bar.update(n)


def _worker_died(exc: BaseException) -> bool:
    from ray.exceptions import OutOfMemoryError, WorkerCrashedError

    return isinstance(exc, OutOfMemoryError | WorkerCrashedError)


def _notes(outcome: StudyOutcome) -> list[str]:
    phases = ", ".join(f"{k[:-2]} {v / 60:.1f} min" for k, v in outcome.phases.items())
    notes = [f"Wall time of this run: {phases}."]
    if outcome.encoded:
        notes.append(
            "Shards encoded this run: "
            + ", ".join(f"{Path(k).name} {v}" for k, v in outcome.encoded.items())
            + " (every size reads a prefix of the same shards)."
        )
    notes.append(
        f"Points this run: {len(outcome.ran)} measured, {len(outcome.skipped)} skipped, "
        f"{len(outcome.failed)} failed."
    )
    return notes


def report(config: Config, outcome: StudyOutcome) -> int:
    ok = sum(r.status == "ok" for r in outcome.rows)
    print(
        f"study {outcome.study.name}: {len(outcome.rows)} rows ({ok} measured); this run "
        f"measured {len(outcome.ran)} point(s), skipped {len(outcome.skipped)}, "
        f"{len(outcome.failed)} failed"
    )
    for line in outcome.skipped + outcome.failed:
        print(f"  {line}")
    print(f"outputs in {outcome.layout.out}:")
    for name in ("results.parquet", "report.md"):
        print(f"  {outcome.layout.out / name}")
    plots = [f for f in outcome.files.values() if str(f).endswith(".png")]
    print(f"  {len(plots)} plots in {outcome.layout.out / 'plots'}")
    if outcome.failed:
        logger.error("%d point(s) failed; their rows and report.md say why", len(outcome.failed))
        return 2
    return 0
