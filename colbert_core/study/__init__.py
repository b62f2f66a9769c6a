"""Scaling studies: index types x corpus sizes grown with distractors (``colbert-batch study``).

* :mod:`.config` - the study YAML (:class:`StudyConfig`, the grid);
* :mod:`.results` - ``results.parquet`` (:class:`ResultRow`, :class:`StudyResults`);
* :mod:`.sizes` - the corpus at each size (:func:`size_view`), synthetic corpora, the
  exact references;
* :mod:`.points` - one grid point: memory prediction, build, search sweep, measures;
* :mod:`.report` - ``report.md``, power-law fits and projections, the PNG plots.
"""

from .config import IndexEntry, StudyConfig, StudyConfigError, check_sizes, load_study
from .results import RESULTS, ResultRow, StudyResults, StudyResultsError, point_key

__all__ = [
    "RESULTS",
    "IndexEntry",
    "ResultRow",
    "StudyConfig",
    "StudyConfigError",
    "StudyResults",
    "StudyResultsError",
    "check_sizes",
    "load_study",
    "point_key",
]
