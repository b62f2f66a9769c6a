"""Round trips through every supported input format, on real files."""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
import os
import pickle
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from colbert_core.data import (
    BadRecord,
    BadRecordError,
    CorpusReader,
    DataSourceError,
    Document,
    MissingDependencyError,
    OnBadRecord,
    Qrel,
    Query,
    load_qrels,
    load_queries,
    open_corpus,
    resolve_source,
)


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _beir_folder(root: Path) -> Path:
    folder = root / "mini"
    _write_jsonl(
        folder / "corpus.jsonl",
        [
            {"_id": "d1", "title": "Alpha", "text": "first doc"},
            {"_id": 2, "title": "", "text": "numeric id"},
            {"_id": "2653#14", "text": "miracl style id, no title"},
            {"_id": "d4", "title": "Only title", "text": ""},
        ],
    )
    _write_jsonl(
        folder / "queries.jsonl",
        [
            {"_id": "q3", "text": "third"},
            {"_id": "q1", "text": "first"},
            {"_id": 2, "text": "second"},
            {"_id": "q4", "text": "unjudged"},
        ],
    )
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\n2\t2\t2\nq3\t2653#14\t0\nq1\td4\t1\n",
        encoding="utf-8",
    )
    (folder / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq4\td1\t1\n", encoding="utf-8"
    )
    return folder


def test_document_contents_follows_beir_convention() -> None:
    assert Document("a", "body", "Title").contents == "Title body"
    assert Document("a", "body").contents == "body"
    assert Document("a", "", "Title").contents == "Title "


def test_beir_folder_round_trip(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path)
    reader = open_corpus(str(folder))
    assert isinstance(reader, CorpusReader)
    assert reader.description == str(folder / "corpus.jsonl")
    docs = list(reader)
    assert docs == [
        Document("d1", "first doc", "Alpha"),
        Document("2", "numeric id", ""),
        Document("2653#14", "miracl style id, no title", ""),
        Document("d4", "", "Only title"),
    ]
    # Re-iterable: a second pass re-reads the file and restarts duplicate detection.
    assert list(reader) == docs

    queries = load_queries(str(folder))
    # Only judged queries, in queries.jsonl order (not qrels order).
    assert queries == [Query("q3", "third"), Query("q1", "first"), Query("2", "second")]
    assert load_queries(str(folder), split="dev") == [Query("q4", "unjudged")]

    assert load_qrels(str(folder)) == [
        Qrel("q1", "d1", 1),
        Qrel("2", "2", 2),
        Qrel("q3", "2653#14", 0),
        Qrel("q1", "d4", 1),
    ]


def test_beir_missing_split_lists_available(tmp_path: Path) -> None:
    folder = _beir_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'train'.*available splits: dev, test"):
        load_qrels(str(folder), split="train")
    with pytest.raises(FileNotFoundError, match="available splits: dev, test"):
        load_queries(str(folder), split="train")


def test_folder_without_corpus_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match=r"no corpus\.jsonl"):
        open_corpus(str(tmp_path))


def test_jsonl_field_name_variants(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "docs.jsonl",
        [
            {"doc_id": "a", "text": "via doc_id"},
            {"id": 7, "contents": "via id + contents"},
            {"docno": "c", "text": "via docno", "title": None, "extra": [1, 2]},
        ],
    )
    assert list(open_corpus(str(path))) == [
        Document("a", "via doc_id"),
        Document("7", "via id + contents"),
        Document("c", "via docno"),
    ]
    qpath = _write_jsonl(
        tmp_path / "queries.jsonl",
        [{"query_id": "x", "query": "one"}, {"qid": 5, "text": "two"}, {"id": "z", "text": "3"}],
    )
    # A plain file has no split: every query is returned.
    assert load_queries(str(qpath), split="ignored") == [
        Query("x", "one"),
        Query("5", "two"),
        Query("z", "3"),
    ]


def test_jsonl_gz_corpus(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write('{"_id": "g1", "text": "zipped \\u00e9"}\n\n{"_id": "g2", "text": "two"}\n')
    assert list(open_corpus(str(path))) == [Document("g1", "zipped é"), Document("g2", "two")]


def test_tsv_two_and_three_columns(tmp_path: Path) -> None:
    two = tmp_path / "collection.tsv"
    two.write_bytes(b"0\tThe presence of communication\r\n1\tsecond passage\n\n2\t\n")
    assert list(open_corpus(str(two))) == [
        Document("0", "The presence of communication"),
        Document("1", "second passage"),
        Document("2", ""),
    ]
    three = tmp_path / "titled.tsv"
    three.write_text("id\ttitle\ttext\nd1\tT1\tbody one\nd2\t\tbody two\n", encoding="utf-8")
    assert list(open_corpus(str(three))) == [
        Document("d1", "body one", "T1"),
        Document("d2", "body two", ""),
    ]
    queries = tmp_path / "queries.dev.tsv"
    queries.write_text("1048585\twhat is paula deen's brother\n2\tsecond\n", encoding="utf-8")
    assert load_queries(str(queries)) == [
        Query("1048585", "what is paula deen's brother"),
        Query("2", "second"),
    ]


def test_parquet_corpus_queries_qrels(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.parquet"
    table = pa.table(
        {
            "doc_id": pa.array([10, 11, 12], pa.int64()),
            "title": ["t0", None, "t2"],
            "text": ["zero", "one", "two"],
            "embedding": [[0.0, 1.0]] * 3,
        }
    )
    # Small row groups make the reader cross batch boundaries.
    pq.write_table(table, corpus, row_group_size=2)
    assert list(open_corpus(str(corpus))) == [
        Document("10", "zero", "t0"),
        Document("11", "one", ""),
        Document("12", "two", "t2"),
    ]
    queries = tmp_path / "queries.parquet"
    pq.write_table(pa.table({"query_id": ["a", "b"], "text": ["qa", "qb"]}), queries)
    assert load_queries(str(queries)) == [Query("a", "qa"), Query("b", "qb")]
    qrels = tmp_path / "qrels.parquet"
    pq.write_table(
        pa.table({"query-id": ["a", "b"], "corpus-id": ["10", "12"], "score": [1, 0]}), qrels
    )
    assert load_qrels(str(qrels)) == [Qrel("a", "10", 1), Qrel("b", "12", 0)]


def test_parquet_bad_row_reports_row_number(tmp_path: Path) -> None:
    path = tmp_path / "corpus.parquet"
    pq.write_table(
        pa.table({"_id": ["a", "b", "c"], "text": ["x", None, "z"]}), path, row_group_size=2
    )
    with pytest.raises(BadRecordError, match=r"corpus\.parquet:2: missing document text"):
        list(open_corpus(str(path)))
    reader = open_corpus(str(path), on_bad_record="skip")
    assert [d.doc_id for d in reader] == ["a", "c"]
    assert [r.line for r in reader.rejects.records] == [2]


def test_trec_qrels(tmp_path: Path) -> None:
    path = tmp_path / "qrels.dev.small"
    path.write_text("1102432 0 2026790 1\n1102431\t0\t7066866\t1\n\n1090282 Q0 7066900 2\n")
    assert load_qrels(str(path)) == [
        Qrel("1102432", "2026790", 1),
        Qrel("1102431", "7066866", 1),
        Qrel("1090282", "7066900", 2),
    ]


def test_beir_qrels_file_with_and_without_header(tmp_path: Path) -> None:
    with_header = tmp_path / "test.tsv"
    with_header.write_text("query-id\tcorpus-id\tscore\nq1\td 1\t1\nq2\td2\t0\n")
    # A doc id with a space must not make a BEIR file look like TREC.
    assert load_qrels(str(with_header)) == [Qrel("q1", "d 1", 1), Qrel("q2", "d2", 0)]
    bare = tmp_path / "bare.tsv"
    bare.write_text("q1\td1\t3\n")
    assert load_qrels(str(bare)) == [Qrel("q1", "d1", 3)]


def test_empty_query_text_is_kept_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _write_jsonl(
        tmp_path / "q.jsonl", [{"_id": "q1", "text": ""}, {"_id": "q2", "text": "x"}]
    )
    with caplog.at_level(logging.WARNING, logger="colbert_core.data"):
        queries = load_queries(str(path))
    assert queries == [Query("q1", ""), Query("q2", "x")]
    assert "q.jsonl:1" in caplog.text and "empty text" in caplog.text


def test_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="beir:<name>"):
        open_corpus(str(tmp_path / "nope.jsonl"))
    odd = tmp_path / "corpus.csv"
    odd.write_text("a,b\n")
    with pytest.raises(DataSourceError, match=r"\.jsonl\[\.gz\]"):
        open_corpus(str(odd))
    with pytest.raises(ValueError, match="use one of 'error', 'skip'"):
        open_corpus(str(_beir_folder(tmp_path)), on_bad_record="ignore")
    assert OnBadRecord.coerce("SKIP") is OnBadRecord.SKIP


def test_non_beir_specs_resolve_unchanged(tmp_path: Path) -> None:
    assert resolve_source("irds:msmarco-passage/dev/small") == "irds:msmarco-passage/dev/small"
    assert resolve_source(str(tmp_path)) == str(tmp_path)


@pytest.mark.skipif(
    importlib.util.find_spec("ir_datasets") is not None, reason="ir_datasets is installed"
)
def test_irds_without_package_says_how_to_install() -> None:
    fix = r"pip install 'colbert-batch\[irds\]'"
    with pytest.raises(MissingDependencyError, match=fix):
        open_corpus("irds:beir/scifact")
    with pytest.raises(ImportError, match=fix):
        load_queries("irds:beir/scifact/test")
    with pytest.raises(ImportError, match=fix):
        load_qrels("irds:beir/scifact/test")


def test_bad_record_error_pickles() -> None:
    err = BadRecordError(BadRecord("f.jsonl", 3, "malformed JSON", "{"))
    again = pickle.loads(pickle.dumps(err))
    assert again.record == err.record and str(again) == str(err)
    assert "--on-bad-record skip" in str(err)


def _shared_datasets() -> Path:
    configured = os.environ.get("COLBERT_BATCH_DATA")
    if configured and (Path(configured) / "scifact").is_dir():
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "shared" / "datasets"


def test_real_scifact_counts() -> None:
    folder = _shared_datasets() / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"real SciFact data not found at {folder}")
    assert sum(1 for _ in open_corpus(str(folder))) == 5183
    queries = load_queries(str(folder))
    assert len(queries) == 300
    qrels = load_qrels(str(folder))
    assert len(qrels) == 339
    assert {q.query_id for q in queries} == {q.query_id for q in qrels}
