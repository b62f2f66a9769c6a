"""Evaluation against hand-computed values, and TREC run files on disk."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ir_measures import ScoredDoc

from colbert_core.data import Qrel
from colbert_core.evaluation import (
    DEFAULT_MEASURES,
    MeasureError,
    RunMetrics,
    evaluate,
    format_table,
    parse_measures,
    save_evaluation,
)
from colbert_core.evaluation.runs import RunFormatError, group_run, read_trec_run, write_trec_run

# q1: relevant d1 (grade 1) and d3 (grade 2), d2 judged non-relevant; retrieved at 2, 4, 3.
# q2: relevant d9, not retrieved.
RUN = [
    ScoredDoc("q1", "d0", 4.0),
    ScoredDoc("q1", "d1", 3.0),
    ScoredDoc("q1", "d2", 2.0),
    ScoredDoc("q1", "d3", 1.0),
    ScoredDoc("q2", "d5", 2.0),
    ScoredDoc("q2", "d6", 1.0),
]
QRELS = [Qrel("q1", "d1", 1), Qrel("q1", "d3", 2), Qrel("q1", "d2", 0), Qrel("q2", "d9", 1)]

# Hand-computed for q1 (trec_eval conventions: gain = relevance grade, discount log2(1+rank)).
Q1_RR = 1 / 2  # first relevant document at rank 2
Q1_RECALL = 2 / 2
Q1_NDCG = (1 / math.log2(3) + 2 / math.log2(5)) / (2 / math.log2(2) + 1 / math.log2(3))
Q1_P5 = 2 / 5
Q1_AP = (1 / 2 + 2 / 4) / 2  # precision at the relevant ranks 2 and 4, over 2 relevant


def test_hand_computed_values() -> None:
    ev = evaluate(RUN, QRELS)
    assert list(ev.measures) == list(DEFAULT_MEASURES)
    assert ev.per_query["q1"] == pytest.approx(
        {"RR@10": Q1_RR, "R@10": Q1_RECALL, "R@100": Q1_RECALL, "nDCG@10": Q1_NDCG}, abs=1e-9
    )
    assert ev.per_query["q2"] == {"RR@10": 0.0, "R@10": 0.0, "R@100": 0.0, "nDCG@10": 0.0}
    # Means over the two evaluated queries (q2 contributes zeros).
    assert ev.measures == pytest.approx(
        {"RR@10": Q1_RR / 2, "R@10": 0.5, "R@100": 0.5, "nDCG@10": Q1_NDCG / 2}, abs=1e-9
    )
    assert (ev.judged_queries, ev.evaluated_queries) == (2, 2)
    assert ev.missing_from_run == [] and ev.unjudged_in_run == []


def test_perfect_single_query() -> None:
    ev = evaluate([ScoredDoc("q", "a", 1.0), ScoredDoc("q", "b", 0.5)], [Qrel("q", "a", 1)])
    assert ev.measures == {"nDCG@10": 1.0, "R@10": 1.0, "R@100": 1.0, "RR@10": 1.0}


def test_rank_follows_score_not_list_order() -> None:
    shuffled = [RUN[3], RUN[0], RUN[2], RUN[1]]
    assert evaluate(shuffled, QRELS[:3]).measures == evaluate(RUN[:4], QRELS[:3]).measures


def test_missing_query_is_reported_excluded_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    qrels = [*QRELS, Qrel("q3", "d4", 1)]
    with caplog.at_level(logging.WARNING, logger="colbert_core.evaluation.measures"):
        ev = evaluate(RUN, qrels)
    assert ev.missing_from_run == ["q3"]
    assert (ev.judged_queries, ev.evaluated_queries) == (3, 2)
    assert "q3" not in ev.per_query
    # Left out of the averages, not scored 0: the same means as without q3.
    assert ev.measures == pytest.approx(evaluate(RUN, QRELS).measures, abs=1e-12)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "colbert_core.evaluation.measures"
    assert "1 judged queries have no results" in warnings[0].getMessage()
    assert "q3" in warnings[0].getMessage()
    assert ev.to_json()["missing_from_run"] == ["q3"]
    assert ev.to_json()["judged_queries"] == 3 and ev.to_json()["queries"] == 2


def test_no_warning_when_every_judged_query_is_in_the_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="colbert_core.evaluation.measures"):
        evaluate(RUN, QRELS)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unjudged_queries_are_counted_not_scored() -> None:
    run = [*RUN, ScoredDoc("q4", "d1", 1.0), ScoredDoc("q5", "d3", 1.0)]
    ev = evaluate(run, QRELS)
    assert ev.unjudged_in_run == ["q4", "q5"]
    assert ev.to_json()["unjudged_in_run"] == 2
    assert set(ev.per_query) == {"q1", "q2"}
    assert ev.measures == pytest.approx(evaluate(RUN, QRELS).measures, abs=1e-12)


def test_extra_measures() -> None:
    ev = evaluate(RUN, QRELS, ["P@5", "AP", "nDCG@10"])
    assert list(ev.measures) == [*DEFAULT_MEASURES, "P@5", "AP"]
    assert ev.per_query["q1"]["P@5"] == pytest.approx(Q1_P5)
    assert ev.per_query["q1"]["AP"] == pytest.approx(Q1_AP)
    assert ev.measures["P@5"] == pytest.approx(Q1_P5 / 2)
    assert ev.measures["AP"] == pytest.approx(Q1_AP / 2)
    assert [str(m) for m in parse_measures()] == list(DEFAULT_MEASURES)


@pytest.mark.parametrize("name", ["Foo@3", "nDCG@x", "P@", "", "RR@10)"])
def test_unknown_measure(name: str) -> None:
    with pytest.raises(MeasureError, match="unknown measure"):
        parse_measures([name])
    with pytest.raises(MeasureError):
        evaluate(RUN, QRELS, [name])
    assert issubclass(MeasureError, ValueError)


def test_save_evaluation(tmp_path: Path) -> None:
    ev = evaluate(RUN, [*QRELS, Qrel("q3", "d4", 1)], ["P@5"])
    rundir = tmp_path / "runs" / "r1"
    save_evaluation(str(rundir), RunMetrics(params={"run": "r1", "k": 100}), ev)
    assert sorted(p.name for p in rundir.iterdir()) == ["metrics.json", "per_query.parquet"]
    metrics = json.loads((rundir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["measures"] == pytest.approx(ev.measures)
    assert (metrics["queries"], metrics["judged_queries"]) == (2, 3)
    assert metrics["missing_from_run"] == ["q3"] and metrics["unjudged_in_run"] == 0
    assert metrics["params"] == {"run": "r1", "k": 100}
    assert RunMetrics.load(str(rundir)).measures == pytest.approx(ev.measures)
    assert metrics["measures"]["P@5"] == pytest.approx(Q1_P5 / 2)
    table = pq.read_table(rundir / "per_query.parquet")
    assert table.column_names == ["query_id", *DEFAULT_MEASURES, "P@5"]
    rows = {r.pop("query_id"): r for r in table.to_pylist()}
    assert set(rows) == {"q1", "q2"}
    assert rows["q1"] == pytest.approx(ev.per_query["q1"])
    assert rows["q1"]["nDCG@10"] == pytest.approx(Q1_NDCG)
    assert rows["q2"] == {m: 0.0 for m in [*DEFAULT_MEASURES, "P@5"]}


def test_format_table() -> None:
    text = format_table({"nDCG@10": 0.123456, "AP": 1.0})
    assert text.splitlines() == [
        "measure  value",
        "-------  ------",
        "nDCG@10  0.1235",
        "AP       1.0000",
    ]


# ---------------------------------------------------------------------------- TREC runs

ids = st.text(min_size=1, max_size=10).filter(lambda s: not any(c.isspace() for c in s))
scores = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=50, deadline=None)
@given(
    results=st.dictionaries(
        ids, st.lists(st.tuples(ids, scores), max_size=5, unique_by=lambda t: t[0]), max_size=5
    )
)
def test_trec_run_round_trip(
    tmp_path_factory: pytest.TempPathFactory, results: dict[str, list[tuple[str, float]]]
) -> None:
    path = tmp_path_factory.mktemp("run") / "run.trec"
    n = write_trec_run(path, results, tag="my-tag")
    expected = [
        ScoredDoc(qid, doc_id, float(f"{score:.6f}"))
        for qid, ranked in results.items()
        for doc_id, score in ranked
    ]
    assert n == len(expected)
    assert read_trec_run(path) == expected
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == n
    ranks = [int(line.split()[3]) for line in lines]
    assert ranks == [r for ranked in results.values() for r in range(1, len(ranked) + 1)]
    assert all(line.split()[1] == "Q0" and line.split()[5] == "my-tag" for line in lines)
    assert {q: len(v) for q, v in group_run(expected).items()} == {
        q: len(v) for q, v in results.items() if v
    }


def test_trec_run_file_format(tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    write_trec_run(path, {"q#1": [("dé", 1.5), ("d2", 0.25)], "q0": [("x", -1.0)]})
    assert path.read_text(encoding="utf-8") == (
        "q#1 Q0 dé 1 1.500000 colbert\nq#1 Q0 d2 2 0.250000 colbert\nq0 Q0 x 1 -1.000000 colbert\n"
    )


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bad.trec"
    path.write_bytes(data)
    return path


def test_read_trec_run_five_columns_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, b"q1 Q0 d1 1 2.0 tag\n\nq1 Q0 d2 2 1.5\n")
    with pytest.raises(RunFormatError) as info:
        read_trec_run(path)
    assert str(info.value).startswith(f"{path}:3: expected 6 columns")
    assert "got 5" in str(info.value)


def test_read_trec_run_non_numeric_score(tmp_path: Path) -> None:
    path = _write(tmp_path, b"q1 Q0 d1 1 2.0 tag\nq1 Q0 d2 2 abc tag\n")
    with pytest.raises(RunFormatError, match="score 'abc' is not a number") as info:
        read_trec_run(path)
    assert str(info.value).startswith(f"{path}:2:")


def test_read_trec_run_invalid_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path, b"q1 Q0 d1 1 2.0 tag\nq1 Q0 d\xff 2 1.0 tag\n")
    with pytest.raises(RunFormatError) as info:
        read_trec_run(path)
    assert str(info.value).startswith(f"{path}:2: invalid UTF-8")


def test_read_trec_run_skips_blank_lines_and_accepts_tabs(tmp_path: Path) -> None:
    path = _write(tmp_path, b"\nq1\tQ0\td1\t1\t2.5\ttag\r\n   \nq1 Q0 d2 2 1e-3 tag")
    assert read_trec_run(path) == [ScoredDoc("q1", "d1", 2.5), ScoredDoc("q1", "d2", 0.001)]


@pytest.mark.parametrize(
    ("results", "tag"),
    [
        ({"q 1": [("d1", 1.0)]}, "t"),
        ({"q1": [("d\t1", 1.0)]}, "t"),
        ({"q1": [("d1\n", 1.0)]}, "t"),
        ({"q1": [("d1", 1.0)], "q2": [("d\u00a02", 1.0)]}, "t"),  # no-break space
        ({"q1": [("", 1.0)]}, "t"),  # empty ids would shift the columns too
        ({"": [("d1", 1.0)]}, "t"),
        ({"q1": [("d1", 1.0)]}, "my tag"),
        ({"q1": [("d1", 1.0)]}, ""),
    ],
)
def test_write_trec_run_rejects_bad_ids(
    tmp_path: Path, results: dict[str, list[tuple[str, float]]], tag: str
) -> None:
    path = tmp_path / "run.trec"
    path.write_text("old\n")
    with pytest.raises(RunFormatError):
        write_trec_run(path, results, tag=tag)
    assert path.read_text() == "old\n"  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["run.trec"]
