"""Nightly re-evaluation: a suite of checks run against stored indexes, embeddings and
runs, judged against expected values and the last accepted run, recorded in an
append-only history, reported as a verdict, a Markdown report and trend plots.

* :mod:`.suite` - the suite YAML (:class:`Suite`, :class:`Check`);
* :mod:`.runner` - validation before any work, warm models and indexes, the run;
* :mod:`.report` - ``verdict.json``, ``report.md``, PNG trend plots.

The statistics live in :mod:`colbert_core.evaluation.regression`, the history schema in
:mod:`colbert_core.evaluation.history`.
"""

from .report import write_reports
from .runner import CheckOutcome, NightlyResult, WarmCache, run_suite
from .suite import Check, Rerank, Suite, SuiteError, load_suite

__all__ = [
    "Check",
    "CheckOutcome",
    "NightlyResult",
    "Rerank",
    "Suite",
    "SuiteError",
    "WarmCache",
    "load_suite",
    "run_suite",
    "write_reports",
]
