"""Streaming readers for corpora, queries and qrels in the supported formats.

A spec is detected as follows:

* ``irds:<id>``: an ``ir_datasets`` dataset (optional dependency);
* ``beir:<name>``: a BEIR dataset, downloaded on first use (see :mod:`.sources`);
* a directory: a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``);
* a file, by suffix (an extra ``.gz`` is allowed for the text formats):
  ``.jsonl`` / ``.json`` / ``.ndjson`` (JSON lines), ``.tsv`` / ``.txt`` (tab
  separated; qrels may also be TREC), ``.parquet``.

Records that cannot be read are handled by the :class:`~.records.OnBadRecord` policy;
qrels are always read strictly.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from colbert_core.data._io import count_lines, is_gzip, iter_binary_lines
from colbert_core.data.records import (
    EXCERPT_CHARS,
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
    IRDS_PREFIX,
    DatasetNotFoundError,
    DataSourceError,
    resolve_source,
)
from colbert_core.errors import ColbertBatchError

logger = logging.getLogger(__name__)

_Format = Literal["jsonl", "tsv", "parquet"]

_DOC_ID_KEYS = ("_id", "doc_id", "id", "docno")
_DOC_TEXT_KEYS = ("text", "contents")
_DOC_TITLE_KEYS = ("title",)
_QUERY_ID_KEYS = ("_id", "query_id", "qid", "id")
_QUERY_TEXT_KEYS = ("text", "query")
_QREL_QID_KEYS = ("query-id", "query_id", "qid")
_QREL_DID_KEYS = ("corpus-id", "doc_id", "docno", "docid", "pid")
_QREL_REL_KEYS = ("score", "relevance", "rel", "label")
# First-column names that mark a TSV header line rather than a record.
_TSV_HEADER_IDS = frozenset(
    {"_id", "id", "doc_id", "docid", "docno", "pid", "qid", "query_id", "query-id"}
)
_PARQUET_BATCH_ROWS = 8192
#: Compressed corpora larger than this are not pre-counted for the progress bar.
COUNT_GZ_LIMIT = 2 << 30
_QRELS_HINT = "qrels are always read strictly; fix or remove that line"
_IRDS_INSTALL_HINT = "pip install 'colbert-batch[irds]'"


class MissingDependencyError(ColbertBatchError, ImportError):
    """An optional dependency needed for the requested source is not installed."""


class _Invalid(Exception):
    """Internal: a record failed validation; the message is the reason."""


@dataclass(frozen=True, slots=True)
class _Row:
    """A raw record before validation: a mapping (JSON, Parquet) or TSV columns."""

    line: int
    excerpt: str
    fields: Mapping[str, Any] | None = None
    columns: list[str] | None = None


class _Policy:
    """Applies the bad-record policy for one source."""

    def __init__(self, source: str, on_bad_record: OnBadRecord, rejects: RejectLog) -> None:
        self.source = source
        self.on_bad_record = on_bad_record
        self.rejects = rejects

    def bad(self, line: int, reason: str, excerpt: str) -> None:
        """Raise or log a bad record; returns only under the SKIP policy."""
        rec = BadRecord(self.source, line, reason, excerpt[:EXCERPT_CHARS])
        if self.on_bad_record is OnBadRecord.ERROR:
            raise BadRecordError(rec)
        self.rejects.add(rec)


class _StrictPolicy(_Policy):
    """Policy for qrels: every problem is fatal."""

    def __init__(self, source: str) -> None:
        super().__init__(source, OnBadRecord.ERROR, RejectLog())

    def bad(self, line: int, reason: str, excerpt: str) -> NoReturn:
        raise BadRecordError(
            BadRecord(self.source, line, reason, excerpt[:EXCERPT_CHARS]), hint=_QRELS_HINT
        )


# --------------------------------------------------------------------------- detection


def _format_of(path: Path) -> _Format:
    """Detect the file format from the suffix (ignoring a trailing ``.gz``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if last in (".tsv", ".txt"):
        return "tsv"
    if last == ".parquet":
        if is_gzip(path):
            raise DataSourceError(
                f"{path}: gzip-compressed Parquet is not supported; decompress it "
                "(Parquet compresses its pages itself)"
            )
        return "parquet"
    raise DataSourceError(
        f"cannot tell the format of {path}; name it *.jsonl[.gz], *.tsv[.gz] or *.parquet, "
        "pass a BEIR folder, or use a 'beir:<name>' / 'irds:<id>' spec"
    )


def _existing_path(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(
            f"dataset {spec!r} not found; pass an existing file or BEIR folder, "
            "'beir:<name>' to download a BEIR dataset, or 'irds:<id>' for ir_datasets"
        )
    return path


def _beir_file(folder: Path, stem: str) -> Path:
    """``<folder>/<stem>.jsonl`` or its ``.gz`` variant."""
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz"):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    raise DataSourceError(
        f"{folder} is not a BEIR folder: it has no {stem}.jsonl; a BEIR folder holds "
        "corpus.jsonl, queries.jsonl and qrels/<split>.tsv"
    )


def _beir_qrels_file(folder: Path, split: str) -> Path:
    qrels_dir = folder / "qrels"
    path = qrels_dir / f"{split}.tsv"
    if path.is_file():
        return path
    available = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    listed = ", ".join(available) if available else "none"
    raise DatasetNotFoundError(
        f"{folder} has no qrels for split {split!r} (expected {path}); "
        f"available splits: {listed}; pass one of them as split"
    )


def _load_irds(dataset_id: str) -> Any:
    """Import ir_datasets lazily and load ``dataset_id``."""
    try:
        ir_datasets = importlib.import_module("ir_datasets")
    except ImportError as exc:
        raise MissingDependencyError(
            f"reading 'irds:{dataset_id}' needs the optional ir_datasets package; "
            f"install it with: {_IRDS_INSTALL_HINT}"
        ) from exc
    try:
        return ir_datasets.load(dataset_id)
    except KeyError as exc:
        raise DataSourceError(
            f"ir_datasets has no dataset {dataset_id!r}; see https://ir-datasets.com "
            "for the valid ids"
        ) from exc


# --------------------------------------------------------------------------- raw rows


def _decode(raw: bytes, line: int, policy: _Policy) -> str | None:
    """Decode one line strictly; report invalid UTF-8 and return None."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        policy.bad(
            line,
            f"invalid UTF-8 at byte {exc.start} of the line",
            raw.decode("utf-8", errors="replace"),
        )
        return None


def _jsonl_rows(path: Path, policy: _Policy) -> Iterator[_Row]:
    for line, raw in iter_binary_lines(path):
        text = _decode(raw, line, policy)
        if text is None or not text.strip():
            # Blank lines carry no record (trailing newlines, concatenated files).
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            policy.bad(line, f"malformed JSON: {exc.msg} at column {exc.colno}", text)
            continue
        if not isinstance(obj, dict):
            policy.bad(line, f"expected a JSON object, got {type(obj).__name__}", text)
            continue
        yield _Row(line=line, excerpt=text, fields=obj)


def _tsv_rows(path: Path, policy: _Policy) -> Iterator[_Row]:
    first = True
    for line, raw in iter_binary_lines(path):
        text = _decode(raw, line, policy)
        if text is None or not text.strip():
            continue
        columns = text.split("\t")
        if first:
            first = False
            if columns[0].strip().lower() in _TSV_HEADER_IDS:
                continue
        yield _Row(line=line, excerpt=text, columns=columns)


def _parquet_rows(path: Path, wanted: Iterable[str]) -> Iterator[_Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pfile = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataSourceError(f"cannot read Parquet file {path}: {exc}") from exc
    # Reading only the known columns keeps unrelated wide columns (embeddings,
    # metadata) out of memory.
    present = set(pfile.schema_arrow.names)
    columns = [name for name in wanted if name in present]
    row_number = 0
    try:
        for batch in pfile.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            for record in batch.to_pylist():
                row_number += 1
                yield _Row(
                    line=row_number,
                    excerpt=json.dumps(record, ensure_ascii=False, default=str),
                    fields=record,
                )
    except (pa.ArrowException, OSError) as exc:
        raise DataSourceError(
            f"cannot read Parquet file {path} after row {row_number}: {exc}"
        ) from exc


def _rows(path: Path, fmt: _Format, policy: _Policy, wanted: Iterable[str]) -> Iterator[_Row]:
    if fmt == "jsonl":
        return _jsonl_rows(path, policy)
    if fmt == "tsv":
        return _tsv_rows(path, policy)
    return _parquet_rows(path, wanted)


# --------------------------------------------------------------------------- validation


def _pick(fields: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    """First of ``keys`` present in ``fields`` with a non-null value."""
    for key in keys:
        value = fields.get(key)
        if value is not None:
            return key, value
    return None, None


def _id_field(fields: Mapping[str, Any], keys: tuple[str, ...], what: str) -> str:
    key, value = _pick(fields, keys)
    if key is None:
        raise _Invalid(f"missing {what} id (expected one of the fields {', '.join(keys)})")
    # bool is an int subclass, but True is never a meaningful id.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(f"{what} id field {key!r} must be a string or integer, got {value!r}")
    ident = str(value)
    if not ident.strip():
        raise _Invalid(f"empty {what} id in field {key!r}")
    return _checked_id(ident, what, f"field {key!r}")


def _checked_id(ident: str, what: str, where: str) -> str:
    """``ident`` if it can be written to runs; a bad record now beats a failed job later."""
    problem = id_problem(ident)
    if problem:
        raise _Invalid(f"{what} id {ident!r} in {where} {problem}")
    return ident


def _text_field(fields: Mapping[str, Any], keys: tuple[str, ...], what: str) -> str:
    key, value = _pick(fields, keys)
    if key is None:
        raise _Invalid(f"missing {what} text (expected one of the fields {', '.join(keys)})")
    if not isinstance(value, str):
        raise _Invalid(f"{what} field {key!r} must be a string, got {type(value).__name__}")
    return value


def _document_from(row: _Row, tsv_width: list[int]) -> Document:
    if row.columns is not None:
        width = len(row.columns)
        expected = tsv_width[0] if tsv_width else None
        if width not in (2, 3) or (expected is not None and width != expected):
            want = f"{expected}" if expected is not None else "2 (id, text) or 3 (id, title, text)"
            raise _Invalid(f"expected {want} tab-separated columns, got {width}")
        if not tsv_width:
            # The first record fixes the layout: a later line with an extra tab
            # would otherwise silently turn part of its text into a title.
            tsv_width.append(width)
        doc_id = row.columns[0].strip()
        if not doc_id:
            raise _Invalid("empty document id in column 1")
        _checked_id(doc_id, "document", "column 1")
        if width == 2:
            return Document(doc_id, row.columns[1])
        return Document(doc_id, row.columns[2], title=row.columns[1])
    fields = row.fields or {}
    doc_id = _id_field(fields, _DOC_ID_KEYS, "document")
    text = _text_field(fields, _DOC_TEXT_KEYS, "document")
    title_key, title = _pick(fields, _DOC_TITLE_KEYS)
    if title_key is not None and not isinstance(title, str):
        raise _Invalid(f"title must be a string, got {type(title).__name__}")
    return Document(doc_id, text, title=title or "")


def _query_from(row: _Row) -> Query:
    if row.columns is not None:
        if len(row.columns) != 2:
            raise _Invalid(
                f"expected 2 tab-separated columns (query id, text), got {len(row.columns)}"
            )
        query_id = row.columns[0].strip()
        if not query_id:
            raise _Invalid("empty query id in column 1")
        _checked_id(query_id, "query", "column 1")
        return Query(query_id, row.columns[1])
    fields = row.fields or {}
    return Query(
        _id_field(fields, _QUERY_ID_KEYS, "query"),
        _text_field(fields, _QUERY_TEXT_KEYS, "query"),
    )


# --------------------------------------------------------------------------- corpus


class CorpusReader:
    """Streams the documents of a corpus, in file order, without loading it whole.

    Every iteration re-reads the source and restarts duplicate-id detection, so
    the reader can be iterated several times (e.g. once to count, once to encode).

    Parameters
    ----------
    spec : str
        Corpus spec: BEIR folder, ``beir:<name>``, ``irds:<id>``, or a
        ``.jsonl[.gz]`` / ``.tsv[.gz]`` / ``.parquet`` file.
    on_bad_record : OnBadRecord or str, optional
        ``ERROR`` (default) raises :class:`BadRecordError` at the first bad
        record; ``SKIP`` skips it and adds it to ``rejects``.
    rejects : RejectLog, optional
        Where skipped records go; a new log (available as ``.rejects``) if omitted.

    Attributes
    ----------
    description : str
        What is read, e.g. the corpus file path.
    rejects : RejectLog
        The records skipped so far.

    Raises
    ------
    DatasetNotFoundError
        If a local spec does not exist.
    DataSourceError
        If the format cannot be told or a folder is not a BEIR folder.
    MissingDependencyError
        For ``irds:`` specs when ir_datasets is not installed.
    """

    def __init__(
        self,
        spec: str,
        *,
        on_bad_record: OnBadRecord | str = OnBadRecord.ERROR,
        rejects: RejectLog | None = None,
    ) -> None:
        self.spec = spec
        self.on_bad_record = OnBadRecord.coerce(on_bad_record)
        self.rejects = rejects if rejects is not None else RejectLog()
        self._irds: Any = None
        # None means the documents come from ir_datasets instead of a file.
        self._path: Path | None = None
        self._format: _Format = "jsonl"
        if spec.startswith(IRDS_PREFIX):
            self._irds = _load_irds(spec[len(IRDS_PREFIX) :])
            self.description = spec
            return
        path = _existing_path(resolve_source(spec))
        if path.is_dir():
            path = _beir_file(path, "corpus")
        self._path = path
        self._format = _format_of(path)
        self.description = str(path)

    def __repr__(self) -> str:
        return f"CorpusReader({self.description!r}, on_bad_record={self.on_bad_record.value!r})"

    def estimate_count(self) -> int | None:
        """About how many documents the corpus holds, when that is cheap to tell.

        Parquet: the row count from the footer; ir_datasets: its ``docs_count()``;
        JSONL/TSV: the number of lines (about a second per GB, longer for ``.gz``;
        compressed files over :data:`COUNT_GZ_LIMIT` bytes are not counted). Blank lines,
        a TSV header and bad records make it an upper bound. ``None`` when unknown.
        """
        if self._path is None:
            count = getattr(self._irds, "docs_count", None)
            return int(count()) if callable(count) and count() is not None else None
        if self._format == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self._path).metadata.num_rows)
        if is_gzip(self._path) and self._path.stat().st_size > COUNT_GZ_LIMIT:
            return None
        return count_lines(self._path)

    def __iter__(self) -> Iterator[Document]:
        policy = _Policy(self.description, self.on_bad_record, self.rejects)
        # Holding every id is the price of catching duplicates; ids are short
        # compared with the texts that are never kept.
        seen: set[str] = set()
        for line, doc in self._candidates(policy):
            if doc.doc_id in seen:
                policy.bad(
                    line, f"duplicate document id {doc.doc_id!r}", json.dumps(_doc_json(doc))
                )
                continue
            seen.add(doc.doc_id)
            yield doc

    def _candidates(self, policy: _Policy) -> Iterator[tuple[int, Document]]:
        if self._path is None:
            yield from _irds_documents(self._irds, policy)
            return
        tsv_width: list[int] = []
        wanted = _DOC_ID_KEYS + _DOC_TEXT_KEYS + _DOC_TITLE_KEYS
        for row in _rows(self._path, self._format, policy, wanted):
            try:
                yield row.line, _document_from(row, tsv_width)
            except _Invalid as exc:
                policy.bad(row.line, str(exc), row.excerpt)


def _doc_json(doc: Document) -> dict[str, str]:
    return {"doc_id": doc.doc_id, "title": doc.title, "text": doc.text}


def _irds_documents(dataset: Any, policy: _Policy) -> Iterator[tuple[int, Document]]:
    for number, doc in enumerate(dataset.docs_iter(), start=1):
        text = getattr(doc, "text", None)
        if text is None:
            # Some collections name the body differently (msmarco-document: body);
            # default_text() is ir_datasets' own choice of the readable text.
            text = getattr(doc, "body", None)
        if text is None and hasattr(doc, "default_text"):
            text = doc.default_text()
        fields = {"doc_id": doc.doc_id, "text": text, "title": getattr(doc, "title", "")}
        try:
            row = _Row(line=number, excerpt=repr(doc), fields=fields)
            yield number, _document_from(row, [])
        except _Invalid as exc:
            policy.bad(number, str(exc), repr(doc))


def open_corpus(
    spec: str,
    *,
    on_bad_record: OnBadRecord | str = OnBadRecord.ERROR,
    rejects: RejectLog | None = None,
) -> CorpusReader:
    """Open a corpus for streaming; see :class:`CorpusReader`.

    Parameters
    ----------
    spec : str
        Corpus spec.
    on_bad_record : OnBadRecord or str, optional
        Bad-record policy.
    rejects : RejectLog, optional
        Where skipped records go.

    Returns
    -------
    CorpusReader
        A re-iterable stream of :class:`Document`.
    """
    return CorpusReader(spec, on_bad_record=on_bad_record, rejects=rejects)


# --------------------------------------------------------------------------- queries


def load_queries(
    spec: str,
    *,
    split: str = "test",
    on_bad_record: OnBadRecord | str = OnBadRecord.ERROR,
    rejects: RejectLog | None = None,
) -> list[Query]:
    """Load the queries of a dataset.

    For a BEIR folder only the queries judged in ``qrels/<split>.tsv`` are
    returned (as BEIR's ``GenericDataLoader`` does), in ``queries.jsonl`` order.
    For a plain file every query is returned and ``split`` is ignored; for
    ``irds:`` the dataset id already names the split.

    Parameters
    ----------
    spec : str
        BEIR folder, ``beir:<name>``, ``irds:<id>``, or a queries file
        (``.jsonl[.gz]``, ``.tsv[.gz]`` as ``qid<TAB>text``, ``.parquet``).
    split : str, optional
        Qrels split for BEIR folders, default ``"test"``.
    on_bad_record : OnBadRecord or str, optional
        Bad-record policy; a duplicate query id counts as a bad record.
    rejects : RejectLog, optional
        Where skipped records go.

    Returns
    -------
    list of Query
        Queries in source order.

    Raises
    ------
    BadRecordError
        For a bad record under the ``ERROR`` policy.
    DatasetNotFoundError
        If the spec or the BEIR split does not exist.
    """
    policy_mode = OnBadRecord.coerce(on_bad_record)
    rejects = rejects if rejects is not None else RejectLog()
    judged: set[str] | None = None
    if spec.startswith(IRDS_PREFIX):
        dataset = _load_irds(spec[len(IRDS_PREFIX) :])
        policy = _Policy(spec, policy_mode, rejects)
        rows: Iterator[_Row] = (
            _Row(
                line=n,
                excerpt=repr(q),
                fields={"query_id": q.query_id, "text": _irds_query_text(q)},
            )
            for n, q in enumerate(dataset.queries_iter(), start=1)
        )
    else:
        path = _existing_path(resolve_source(spec))
        if path.is_dir():
            qrels = _read_qrels_file(_beir_qrels_file(path, split))
            judged = {q.query_id for q in qrels}
            path = _beir_file(path, "queries")
        policy = _Policy(str(path), policy_mode, rejects)
        rows = _rows(path, _format_of(path), policy, _QUERY_ID_KEYS + _QUERY_TEXT_KEYS)
    queries = _collect_queries(rows, policy, judged)
    if judged is not None:
        missing = judged.difference(q.query_id for q in queries)
        if missing:
            logger.warning(
                "%d judged query id(s) of split %r have no query text in %s, e.g. %s",
                len(missing),
                split,
                policy.source,
                sorted(missing)[:5],
            )
    logger.info("loaded %d queries from %s", len(queries), policy.source)
    return queries


def _irds_query_text(query: Any) -> str | None:
    text = getattr(query, "text", None)
    if text is None and hasattr(query, "default_text"):
        text = query.default_text()
    return text


def _collect_queries(rows: Iterator[_Row], policy: _Policy, judged: set[str] | None) -> list[Query]:
    queries: list[Query] = []
    seen: set[str] = set()
    for row in rows:
        try:
            query = _query_from(row)
        except _Invalid as exc:
            policy.bad(row.line, str(exc), row.excerpt)
            continue
        if query.query_id in seen:
            policy.bad(row.line, f"duplicate query id {query.query_id!r}", row.excerpt)
            continue
        seen.add(query.query_id)
        if judged is not None and query.query_id not in judged:
            continue
        if not query.text.strip():
            # Kept, not rejected: the query is judged, so dropping it would
            # silently change the evaluation; search reports it instead.
            logger.warning(
                "%s:%d: query %r has empty text", policy.source, row.line, query.query_id
            )
        queries.append(query)
    return queries


# --------------------------------------------------------------------------- qrels


def load_qrels(spec: str, *, split: str = "test") -> list[Qrel]:
    """Load relevance judgements; any malformed line is an error.

    Parameters
    ----------
    spec : str
        BEIR folder or ``beir:<name>`` (reads ``qrels/<split>.tsv``),
        ``irds:<id>``, or a qrels file: TREC (``qid iter docid rel``,
        whitespace separated), BEIR TSV (``query-id<TAB>corpus-id<TAB>score``,
        header optional), ``.jsonl[.gz]`` or ``.parquet`` with BEIR or TREC-like
        column names.
    split : str, optional
        Qrels split for BEIR folders, default ``"test"``.

    Returns
    -------
    list of Qrel
        Judgements in file order, including non-relevant (``0``) ones.

    Raises
    ------
    BadRecordError
        At the first malformed line.
    DatasetNotFoundError
        If the spec or the BEIR split does not exist.
    """
    if spec.startswith(IRDS_PREFIX):
        dataset = _load_irds(spec[len(IRDS_PREFIX) :])
        qrels = [
            Qrel(str(q.query_id), str(q.doc_id), int(q.relevance)) for q in dataset.qrels_iter()
        ]
        logger.info("loaded %d qrels from %s", len(qrels), spec)
        return qrels
    path = _existing_path(resolve_source(spec))
    if path.is_dir():
        path = _beir_qrels_file(path, split)
    return _read_qrels_file(path)


def _read_qrels_file(path: Path) -> list[Qrel]:
    policy = _StrictPolicy(str(path))
    fmt = _qrels_format_of(path)
    if fmt == "tsv":
        qrels = list(_text_qrels(path, policy))
    else:
        wanted = _QREL_QID_KEYS + _QREL_DID_KEYS + _QREL_REL_KEYS
        qrels = [_qrel_from_fields(row, policy) for row in _rows(path, fmt, policy, wanted)]
    logger.info("loaded %d qrels from %s", len(qrels), path)
    return qrels


def _qrels_format_of(path: Path) -> _Format:
    try:
        return _format_of(path)
    except DataSourceError:
        # Qrels files are often named without a suffix (TREC "qrels.test",
        # MS MARCO "qrels.dev.small"); they are text.
        return "tsv"


def _parse_relevance(value: object, line: int, excerpt: str, policy: _StrictPolicy) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        policy.bad(line, f"relevance {value!r} is not an integer", excerpt)


def _text_qrels(path: Path, policy: _StrictPolicy) -> Iterator[Qrel]:
    layout: Literal["beir", "trec"] | None = None
    for line, raw in iter_binary_lines(path):
        text = _decode(raw, line, policy)
        if text is None or not text.strip():
            continue
        tab_fields = text.split("\t")
        if layout is None:
            if tab_fields[0].strip().lower() in _TSV_HEADER_IDS:
                layout = "beir"
                continue
            # BEIR qrels are tab separated with three fields; TREC qrels have four
            # whitespace-separated fields (and doc ids never contain spaces there).
            layout = "beir" if len(tab_fields) == 3 else "trec"
        if layout == "beir":
            if len(tab_fields) != 3:
                policy.bad(
                    line,
                    "expected 3 tab-separated columns (query-id, corpus-id, score), "
                    f"got {len(tab_fields)}",
                    text,
                )
            qid, did, rel = (f.strip() for f in tab_fields)
        else:
            parts = text.split()
            if len(parts) != 4:
                policy.bad(
                    line,
                    "expected 4 whitespace-separated TREC fields "
                    f"(query-id, iteration, doc-id, relevance), got {len(parts)}",
                    text,
                )
            qid, _, did, rel = parts
        if not qid or not did:
            policy.bad(line, "empty query id or document id", text)
        yield Qrel(qid, did, _parse_relevance(rel, line, text, policy))


def _qrel_from_fields(row: _Row, policy: _StrictPolicy) -> Qrel:
    fields = row.fields or {}
    values: list[Any] = []
    for keys, what in (
        (_QREL_QID_KEYS, "query id"),
        (_QREL_DID_KEYS, "document id"),
        (_QREL_REL_KEYS, "relevance"),
    ):
        key, value = _pick(fields, keys)
        if key is None:
            policy.bad(row.line, f"missing {what} (expected one of {', '.join(keys)})", row.excerpt)
        values.append(value)
    qid, did, rel = values
    return Qrel(str(qid), str(did), _parse_relevance(rel, row.line, row.excerpt, policy))
