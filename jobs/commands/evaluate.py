"""`colbert-batch evaluate`: metrics of any TREC run against qrels."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from colbert_core.data import load_qrels
from colbert_core.evaluation import (
    RunMetrics,
    evaluate,
    format_table,
    read_trec_run,
    save_evaluation,
)
from colbert_core.storage import join_uri

HELP = "evaluate any TREC run against qrels"


@dataclass(frozen=True)
class Config:
    run: str
    qrels: str
    split: str = "test"
    measures: tuple[str, ...] = ()
    out: str | None = None

    @property
    def folder(self) -> str:
        """Where metrics go: ``out``, else the run's folder."""
        return self.out or str(Path(self.run).parent)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="TREC run file")
    p.add_argument("--qrels", required=True, help="qrels source (BEIR folder, file, irds:)")
    p.add_argument("--split", help="qrels split of a BEIR folder (test)")
    p.add_argument("--measures", nargs="*", help="extra ir_measures measures")
    p.add_argument(
        "--out", help="folder for metrics.json and per_query.parquet (default: beside the run)"
    )


def run(config: Config) -> RunMetrics:
    ev = evaluate(
        read_trec_run(config.run), load_qrels(config.qrels, split=config.split), config.measures
    )
    metrics = RunMetrics(
        params={
            "mode": "evaluate",
            "run": config.run,
            "qrels": config.qrels,
            "split": config.split,
            "measures": list(config.measures),
        }
    )
    save_evaluation(config.folder, metrics, ev)
    return metrics


def report(config: Config, metrics: RunMetrics) -> None:
    print_metrics(config.folder, metrics, run_file=config.run)


def print_metrics(folder: str, metrics: RunMetrics, run_file: str | None = None) -> None:
    """The measures table and where the run folder's files are."""
    if not metrics.measures:
        print(f"run written to {join_uri(folder, 'run.trec')} (no qrels: nothing to evaluate)")
        return
    print(format_table(metrics.measures))
    print(f"queries evaluated: {metrics.queries} of {metrics.judged_queries} judged")
    if metrics.missing_from_run:
        print(
            f"judged queries missing from the run: {len(metrics.missing_from_run)} "
            f"(listed in {join_uri(folder, 'metrics.json')})"
        )
    files = [run_file or join_uri(folder, "run.trec"), join_uri(folder, "metrics.json")]
    print(f"artifacts: {', '.join(files)}, {join_uri(folder, 'per_query.parquet')}")
