"""Bad input records: exact file:line errors by default, rejects.jsonl under skip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from colbert_core.data import (
    BadRecordError,
    DataSourceError,
    Document,
    OnBadRecord,
    Query,
    RejectLog,
    load_qrels,
    load_queries,
    open_corpus,
)

GOOD = b'{"_id": "ok1", "text": "fine"}\n'

# Each case: file name, raw content, the 1-based line that is bad, a reason fragment.
CASES = {
    "malformed_json": (
        "corpus.jsonl",
        GOOD + b'{"_id": "x", "text": \n' + b'{"_id": "ok2", "text": "fine"}\n',
        2,
        "malformed JSON",
    ),
    "missing_id": (
        "corpus.jsonl",
        GOOD + b"\n" + b'{"text": "no id"}\n' + b'{"_id": "ok2", "text": "x"}\n',
        3,
        "missing document id",
    ),
    "missing_text": (
        "corpus.jsonl",
        GOOD + b'{"_id": "ok2", "text": "x"}\n' + b'{"_id": "t", "title": "only"}\n',
        3,
        "missing document text",
    ),
    "invalid_utf8": (
        "corpus.jsonl",
        GOOD + b'{"_id": "ok2", "text": "x"}\n' + b'{"_id": "u", "text": "caf\xe9"}\n' + GOOD[:0],
        3,
        "invalid UTF-8",
    ),
    "duplicate_id": (
        "corpus.jsonl",
        GOOD + b'{"_id": "ok2", "text": "x"}\n\n' + b'{"_id": "ok1", "text": "again"}\n',
        4,
        "duplicate document id 'ok1'",
    ),
    "not_an_object": (
        "corpus.jsonl",
        GOOD + b'["ok2", "x"]\n',
        2,
        "expected a JSON object",
    ),
    "tsv_column_count": (
        "collection.tsv",
        b"1\tone\n2\ttwo\n3\tthree\textra\n4\tfour\n",
        3,
        "expected 2 tab-separated columns, got 3",
    ),
    "tsv_single_column": (
        "collection.tsv",
        b"1\tone\n2\n",
        2,
        "got 1",
    ),
    "gzip_jsonl": ("corpus.jsonl.gz", GOOD + b"{oops\n", 2, "malformed JSON"),
    # Ids are written to whitespace-separated runs: refused when read, not after the work.
    "id_with_space": (
        "corpus.jsonl",
        GOOD + b'{"_id": "foldoc:peano arithmetic:0", "text": "x"}\n',
        2,
        "document id 'foldoc:peano arithmetic:0' in field '_id' contains whitespace",
    ),
    "id_with_tab_in_json": (
        "corpus.jsonl",
        GOOD + b'{"_id": "a\\tb", "text": "x"}\n',
        2,
        "contains whitespace",
    ),
    "tsv_id_with_space": (
        "collection.tsv",
        b"1\tone\nd 2\ttwo\n",
        2,
        "document id 'd 2' in column 1 contains whitespace",
    ),
}


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    if name.endswith(".gz"):
        import gzip

        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def _non_blank_lines(content: bytes) -> int:
    return sum(1 for line in content.splitlines() if line.strip())


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_raises_with_file_and_line(tmp_path: Path, case: str) -> None:
    name, content, line, reason = CASES[case]
    path = _write(tmp_path, name, content)
    with pytest.raises(BadRecordError) as info:
        list(open_corpus(str(path)))
    message = str(info.value)
    assert f"{name}:{line}: " in message
    assert reason in message
    assert "--on-bad-record skip" in message
    assert info.value.record.line == line
    assert info.value.record.source == str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_mode_writes_rejects_and_counts_add_up(tmp_path: Path, case: str) -> None:
    name, content, line, reason = CASES[case]
    path = _write(tmp_path, name, content)
    rejects = RejectLog()
    reader = open_corpus(str(path), on_bad_record=OnBadRecord.SKIP, rejects=rejects)
    docs = list(reader)
    assert reader.rejects is rejects
    assert len(docs) + len(rejects) == _non_blank_lines(content)
    assert [r.line for r in rejects.records] == [line]

    written = [json.loads(x) for x in rejects.to_jsonl().splitlines()]
    assert len(written) == 1
    assert set(written[0]) == {"source", "line", "reason", "excerpt"}
    assert written[0]["line"] == line
    assert reason in written[0]["reason"]
    assert written[0]["source"] == str(path)
    assert len(written[0]["excerpt"]) <= 200


def test_reiterating_does_not_double_count_rejects(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.jsonl", GOOD + b"{bad\n" + GOOD)
    reader = open_corpus(str(path), on_bad_record="skip")
    first = list(reader)
    second = list(reader)
    assert first == second == [Document("ok1", "fine")]
    assert [r.line for r in reader.rejects.records] == [2, 3]


def test_empty_text_is_not_bad(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.jsonl", b'{"_id": "e", "text": ""}\n\n   \n' + GOOD)
    assert list(open_corpus(str(path))) == [Document("e", ""), Document("ok1", "fine")]


def test_long_line_excerpt_is_truncated(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.jsonl", b'{"text": "' + b"x" * 1000 + b'"}\n')
    reader = open_corpus(str(path), on_bad_record="skip")
    assert list(reader) == []
    assert len(reader.rejects.records[0].excerpt) == 200


def test_query_bad_records(tmp_path: Path) -> None:
    content = (
        b'{"_id": "q1", "text": "one"}\n'
        b'{"_id": "q2"}\n'
        b'{"_id": "q1", "text": "dup"}\n'
        b'{"_id": "q3", "text": "\xff"}\n'
        b'{"_id": "q4", "text": "four"}\n'
    )
    path = _write(tmp_path, "queries.jsonl", content)
    with pytest.raises(BadRecordError, match=r"queries\.jsonl:2: missing query text"):
        load_queries(str(path))
    rejects = RejectLog()
    queries = load_queries(str(path), on_bad_record="skip", rejects=rejects)
    assert queries == [Query("q1", "one"), Query("q4", "four")]
    assert [(r.line, r.reason.split(" ")[0]) for r in rejects.records] == [
        (2, "missing"),
        (3, "duplicate"),
        (4, "invalid"),
    ]
    tsv = _write(tmp_path, "queries.tsv", b"1\tone\n2\ttwo\tthree\n")
    with pytest.raises(BadRecordError, match=r"queries\.tsv:2: expected 2 tab-separated"):
        load_queries(str(tsv))


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\n", 3, "expected 3 tab-separated"),
        (b"query-id\tcorpus-id\tscore\nq1\td1\tyes\n", 2, "'yes' is not an integer"),
        (b"1 0 d1 1\n1 0 d2\n", 2, "expected 4 whitespace-separated"),
        (b"1 0 d1 1\n\n1 0 d\xff 1\n", 3, "invalid UTF-8"),
    ],
)
def test_qrels_are_always_strict(tmp_path: Path, content: bytes, line: int, reason: str) -> None:
    path = _write(tmp_path, "qrels.txt", content)
    with pytest.raises(BadRecordError) as info:
        load_qrels(str(path))
    assert f"qrels.txt:{line}: " in str(info.value)
    assert reason in str(info.value)
    assert "strictly" in str(info.value)


def test_beir_folder_bad_qrels_line_names_split_file(tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_bytes(GOOD)
    (folder / "queries.jsonl").write_bytes(b'{"_id": "q", "text": "t"}\n')
    (folder / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\nq\tok1\n")
    with pytest.raises(BadRecordError, match=r"qrels/test\.tsv:2: "):
        load_queries(str(folder))


def test_query_ids_with_whitespace_are_bad_records(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "queries.jsonl", b'{"_id": "q 1", "text": "one"}\n{"_id": "q2", "text": "x"}\n'
    )
    with pytest.raises(BadRecordError, match=r"queries\.jsonl:1: query id 'q 1' .* whitespace"):
        load_queries(str(path))
    rejects = RejectLog()
    assert load_queries(str(path), on_bad_record="skip", rejects=rejects) == [Query("q2", "x")]
    assert [r.line for r in rejects.records] == [1]
    tsv = _write(tmp_path, "queries.tsv", "q\u00a01\tone\n".encode())  # no-break space
    with pytest.raises(BadRecordError, match="contains whitespace"):
        load_queries(str(tsv))


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_truncated_gzip_is_an_error_naming_the_file_under_any_policy(
    tmp_path: Path, policy: str
) -> None:
    from test_cli_errors import truncated_gzip_corpus

    path = tmp_path / "corpus.jsonl.gz"
    path.write_bytes(truncated_gzip_corpus())
    with pytest.raises(DataSourceError) as info:
        list(open_corpus(str(path), on_bad_record=policy))
    assert str(info.value).startswith(f"{path}: the compressed file is truncated or corrupt")
    assert "download or copy it again" in str(info.value)
    with pytest.raises(DataSourceError):
        open_corpus(str(path)).estimate_count()


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("c.jsonl", GOOD * 3, 3),
        ("c.jsonl", GOOD * 2 + GOOD[:-1], 3),  # no newline at the end
        ("c.jsonl.gz", GOOD * 5, 5),
        ("c.tsv", b"1\tone\n2\ttwo\n", 2),
        ("empty.jsonl", b"", 0),
    ],
)
def test_corpus_size_estimate(tmp_path: Path, name: str, content: bytes, expected: int) -> None:
    assert open_corpus(str(_write(tmp_path, name, content))).estimate_count() == expected


def test_parquet_corpus_size_comes_from_the_footer(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"_id": ["a", "b"], "text": ["x", "y"]}), path)
    assert open_corpus(str(path)).estimate_count() == 2
