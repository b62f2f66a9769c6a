"""`colbert-batch nightly SUITE.yaml`: re-evaluate stored indexes and runs; exit 0 when every
check passes, 1 when any regressed, 2 on an error (before any work where possible)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, replace

from colbert_core.evaluation.history import History
from colbert_core.nightly import NightlyResult, load_suite, run_suite, write_reports
from colbert_core.nightly.suite import HISTORY_NAME
from colbert_core.storage import join_uri

logger = logging.getLogger(__name__)

HELP = "nightly re-evaluation with regression verdicts (exit 1 on a regression)"

#: Exit status of a run in which a check regressed (errors are 2, as for every command).
REGRESSED = 1


@dataclass(frozen=True)
class Config:
    suite: str
    accept: bool = False
    baseline: str | None = None
    out: str | None = None
    history: str | None = None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="suite YAML (see jobs/configs/nightly-scifact.yaml)")
    p.add_argument("--accept", action="store_true", help="mark this run as the new baseline")
    p.add_argument("--baseline", help="compare with this run id instead of the last accepted")
    p.add_argument("--out", help="folder or s3:// prefix for run folders (overrides the suite)")
    p.add_argument("--history", help="history location (default: OUT/history.parquet)")


def run(config: Config) -> NightlyResult:
    suite = load_suite(config.suite)
    if config.out:
        history = config.history or join_uri(config.out, HISTORY_NAME)
        suite = replace(suite, out=config.out, history=history)
    if config.history:
        suite = replace(suite, history=config.history)
    result = run_suite(
        suite,
        accept=config.accept,
        baseline_run=config.baseline,
        on_check=lambda name: logger.info("check %s", name),
    )
    for name, where in write_reports(result, History(suite.history).rows()).items():
        logger.info("%s: %s", name, where)
    return result


def report(config: Config, result: NightlyResult) -> int:
    for o in result.outcomes:
        print(
            f"{o.check.name:<24} {o.row.verdict:<10} "
            + " ".join(f"{v.measure}={v.now:.4f}" for v in o.verdicts)
        )
        for reason in o.row.reasons:
            print(f"  - {reason}")
    status = "REGRESSED" if result.regressed else "pass"
    print(
        f"nightly {result.suite.name} run {result.run_id}: {status}; report {result.folder}/report.md"
    )
    return REGRESSED if result.regressed else 0
