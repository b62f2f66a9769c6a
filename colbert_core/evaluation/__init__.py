"""Runs and their evaluation: the run rule, ir_measures metrics, the run folder.

* :mod:`.runs` - TREC run files: the one rule for a valid run, reader and writer;
* :mod:`.measures` - :func:`evaluate` (ir_measures), candidate recall, tables;
* :mod:`.rundir` - the run folder (``RUNDIR``) and :class:`RunMetrics`, the one owner of
  ``metrics.json``.
"""

from .measures import (
    DEFAULT_MEASURES,
    Evaluation,
    MeasureError,
    candidate_recall,
    evaluate,
    format_table,
    latency_percentiles,
    parse_measures,
    per_query_parquet,
)
from .rundir import (
    METRICS,
    PER_QUERY,
    RUN_FILE,
    RunFolderError,
    RunMetrics,
    qrels_outside,
    save_evaluation,
    scored_docs,
    write_run_folder,
)
from .runs import (
    RunFormatError,
    check_run,
    format_trec_run,
    group_run,
    read_trec_run,
    write_trec_run,
)

__all__ = [
    "DEFAULT_MEASURES",
    "METRICS",
    "PER_QUERY",
    "RUN_FILE",
    "Evaluation",
    "MeasureError",
    "RunFolderError",
    "RunFormatError",
    "RunMetrics",
    "candidate_recall",
    "check_run",
    "evaluate",
    "format_table",
    "format_trec_run",
    "group_run",
    "latency_percentiles",
    "parse_measures",
    "per_query_parquet",
    "qrels_outside",
    "read_trec_run",
    "save_evaluation",
    "scored_docs",
    "write_run_folder",
    "write_trec_run",
]
