"""Data I/O: read corpora, queries and qrels from BEIR, JSONL, TSV, Parquet and ir_datasets.

Examples
--------
>>> from colbert_core.data import Document
>>> Document("7", "text", title="A title").contents
'A title text'
"""

from colbert_core.data.queryset import LoadedQueries, QuerySet
from colbert_core.data.readers import (
    CorpusReader,
    MissingDependencyError,
    load_qrels,
    load_queries,
    open_corpus,
)
from colbert_core.data.records import (
    BadRecord,
    BadRecordError,
    Document,
    OnBadRecord,
    Qrel,
    Query,
    RejectLog,
    id_problem,
)
from colbert_core.data.sources import (
    DatasetDownloadError,
    DatasetNotFoundError,
    DataSourceError,
    datasets_dir,
    default_qrels,
    is_dataset,
    resolve_source,
)

__all__ = [
    "BadRecord",
    "BadRecordError",
    "CorpusReader",
    "DataSourceError",
    "DatasetDownloadError",
    "DatasetNotFoundError",
    "Document",
    "LoadedQueries",
    "MissingDependencyError",
    "OnBadRecord",
    "Qrel",
    "Query",
    "QuerySet",
    "RejectLog",
    "datasets_dir",
    "default_qrels",
    "id_problem",
    "is_dataset",
    "load_qrels",
    "load_queries",
    "open_corpus",
    "resolve_source",
]
