"""Data I/O: read corpora, queries and qrels from BEIR, JSONL, TSV, Parquet and ir_datasets.

Examples
--------
>>> from colbert_core.data import Document
>>> Document("7", "text", title="A title").contents
'A title text'
"""

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
)
from colbert_core.data.sources import (
    DatasetDownloadError,
    DataSourceError,
    datasets_dir,
    resolve_source,
)

__all__ = [
    "BadRecord",
    "BadRecordError",
    "CorpusReader",
    "DataSourceError",
    "DatasetDownloadError",
    "Document",
    "MissingDependencyError",
    "OnBadRecord",
    "Qrel",
    "Query",
    "RejectLog",
    "datasets_dir",
    "load_qrels",
    "load_queries",
    "open_corpus",
    "resolve_source",
]
