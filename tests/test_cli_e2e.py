"""End to end through the real CLI: encode -> search --exact -> evaluate on real SciFact data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import encode_argv

from colbert_core.embeddings.shards import read_shard
from jobs.cli import main


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def encoded(scifact_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("enc") / "root"
    rc = main(encode_argv(scifact_subset, root, shard_size=64, doc_maxlen=128))
    assert rc == 0
    return root


def _n_docs(folder: Path) -> int:
    return sum(1 for line in (folder / "corpus.jsonl").open() if line.strip())


def test_encode_writes_complete_manifest(encoded: Path, scifact_subset: Path) -> None:
    manifest = json.loads((encoded / "manifest.json").read_text())
    n = _n_docs(scifact_subset)
    assert manifest["complete"] is True
    assert manifest["totals"]["docs"] == n
    assert manifest["totals"]["shards"] == -(-n // 64)
    assert manifest["dim"] == 384
    assert manifest["encoder"]["settings"]["doc_maxlen"] == 128
    doc_ids: list[str] = []
    tokens = 0
    for info in manifest["shards"]:
        path = encoded / "embeddings" / info["name"]
        assert path.stat().st_size == info["bytes"]
        assert _sha(path) == info["sha256"]
        shard = read_shard(path, dim=384)
        assert shard.doc_index.tolist() == list(
            range(info["first_doc"], info["first_doc"] + info["n_docs"])
        )
        assert shard.tokens.dtype == np.float16
        assert int(shard.offsets[-1]) == info["n_tokens"]
        assert max(np.diff(shard.offsets)) <= 128
        doc_ids += shard.doc_ids
        tokens += shard.n_tokens
    expected_ids = [json.loads(x)["_id"] for x in (scifact_subset / "corpus.jsonl").open()]
    assert doc_ids == expected_ids  # every document once, in corpus order
    assert tokens == manifest["totals"]["tokens"]


def test_rerun_skips_complete_shards(encoded: Path, scifact_subset: Path) -> None:
    before = {p.name: (p.stat().st_mtime_ns, _sha(p)) for p in (encoded / "embeddings").iterdir()}
    rc = main(encode_argv(scifact_subset, encoded, shard_size=64, doc_maxlen=128))
    assert rc == 0
    after = {p.name: (p.stat().st_mtime_ns, _sha(p)) for p in (encoded / "embeddings").iterdir()}
    assert before == after
    summary = json.loads((encoded / "manifest.json").read_text())["summary"]
    assert summary["shards_written"] == 0
    assert summary["shards_skipped"] == len(before)


def test_lost_shard_is_reencoded_identically(
    encoded: Path, scifact_subset: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "root"
    copy.mkdir()
    (copy / "embeddings").mkdir()
    for p in (encoded / "embeddings").iterdir():
        (copy / "embeddings" / p.name).write_bytes(p.read_bytes())
    (copy / "manifest.json").write_text((encoded / "manifest.json").read_text())
    lost = copy / "embeddings" / "shard-00001.parquet"
    original = _sha(lost)
    lost.unlink()
    rc = main(encode_argv(scifact_subset, copy, shard_size=64, doc_maxlen=128))
    assert rc == 0
    assert _sha(lost) == original
    summary = json.loads((copy / "manifest.json").read_text())["summary"]
    assert summary["shards_written"] == 1


def test_different_config_is_refused_unless_overwrite(
    encoded: Path, scifact_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    assert main(encode_argv(scifact_subset, root, shard_size=500, doc_maxlen=16)) == 0
    capsys.readouterr()
    assert main(encode_argv(scifact_subset, root, shard_size=500, doc_maxlen=24)) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "different model or encoder settings" in err
    again = encode_argv(scifact_subset, root, shard_size=500, doc_maxlen=24, extra=["--overwrite"])
    assert main(again) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["encoder"]["settings"]["doc_maxlen"] == 24


def test_search_and_evaluate(encoded: Path, scifact_subset: Path, tmp_path: Path) -> None:
    rundir = tmp_path / "run"
    rc = main(
        [
            "search",
            "--exact",
            "--embeddings",
            str(encoded),
            "--queries",
            str(scifact_subset),
            "--out",
            str(rundir),
            "--k",
            "20",
            "--memory-budget-mb",
            "1",
            "--measures",
            "P@5",
        ]
    )
    assert rc == 0
    metrics = json.loads((rundir / "metrics.json").read_text())
    assert set(metrics["measures"]) == {"nDCG@10", "R@10", "R@100", "RR@10", "P@5"}
    assert metrics["queries"] == 30 and metrics["missing_from_run"] == []
    # Every relevant document is in this small corpus: MiniLM late interaction finds most.
    assert metrics["measures"]["nDCG@10"] > 0.6
    lines = (rundir / "run.trec").read_text().splitlines()
    assert len(lines) == 30 * 20
    first = lines[0].split()
    assert first[1] == "Q0" and first[3] == "1" and first[5] == "colbert-exact"
    per_query = pq.read_table(rundir / "per_query.parquet")
    assert per_query.num_rows == 30
    assert np.isclose(np.mean(per_query["nDCG@10"].to_numpy()), metrics["measures"]["nDCG@10"])

    evaldir = tmp_path / "eval"
    rc = main(
        [
            "evaluate",
            "--run",
            str(rundir / "run.trec"),
            "--qrels",
            str(scifact_subset),
            "--out",
            str(evaldir),
            "--measures",
            "P@5",
        ]
    )
    assert rc == 0
    again = json.loads((evaldir / "metrics.json").read_text())
    assert again["measures"] == pytest.approx(metrics["measures"], abs=1e-9)


def test_search_is_independent_of_memory_budget(
    encoded: Path, scifact_subset: Path, tmp_path: Path
) -> None:
    runs = []
    for budget in ("1", "512"):
        out = tmp_path / budget
        assert (
            main(
                [
                    "search",
                    "--exact",
                    "--embeddings",
                    str(encoded),
                    "--queries",
                    str(scifact_subset),
                    "--out",
                    str(out),
                    "--k",
                    "10",
                    "--memory-budget-mb",
                    budget,
                ]
            )
            == 0
        )
        runs.append([line.split() for line in (out / "run.trec").read_text().splitlines()])
    # Same documents in the same order; scores may differ in the last float32 bit because
    # BLAS sums blocks of different shapes in different orders.
    assert [r[:4] for r in runs[0]] == [r[:4] for r in runs[1]]
    np.testing.assert_allclose(
        [float(r[4]) for r in runs[0]], [float(r[4]) for r in runs[1]], atol=1e-5
    )


def test_bad_records_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        '{"_id": "a", "title": "T", "text": "first document"}\n'
        '{"_id": "b", "text": "second"\n'  # malformed JSON on line 2
        '{"_id": "c", "text": ""}\n'  # empty text: a valid, empty document
        '{"_id": "a", "text": "duplicate id"}\n'
        '{"text": "no id"}\n'
        '{"_id": "d", "text": "last"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "root"
    assert main(["encode", "--corpus", str(corpus), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{corpus}:2" in err and "--on-bad-record skip" in err
    assert not (out / "embeddings").exists() or not list((out / "embeddings").iterdir())

    assert (
        main(["encode", "--corpus", str(corpus), "--out", str(out), "--on-bad-record", "skip"]) == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["line"] for r in rejects) == [2, 4, 5]
    assert manifest["rejects"] == 3 and manifest["totals"]["docs"] == 3
    shard = read_shard(out / "embeddings" / "shard-00000.parquet")
    assert shard.doc_ids == ["a", "c", "d"]
    assert np.diff(shard.offsets)[1] == 2  # the empty document keeps [CLS] and [SEP]


def test_unknown_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text('{"_id": "a", "text": "x"}\n', encoding="utf-8")
    assert (
        main(
            [
                "encode",
                "--corpus",
                str(corpus),
                "--out",
                str(tmp_path / "o"),
                "--model",
                str(tmp_path / "nope"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "not a local directory" in err and "Stanford ColBERT" in err


@pytest.mark.parametrize(
    ("content", "extra", "reason"),
    [
        ("", [], "holds no document to encode"),
        ("\n\n", [], "holds no document to encode"),
        ('{"text": "no id"}\n{"_id": "x"}\n', ["--on-bad-record", "skip"], "2 bad records"),
    ],
)
def test_empty_corpus_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    extra: list[str],
    reason: str,
) -> None:
    """A corpus with nothing to encode never becomes a 'complete' output of 0 documents
    (whose exact search then reported nDCG@10 0.0000 with exit 0)."""
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(content, encoding="utf-8")
    out = tmp_path / "root"
    assert main(["encode", "--corpus", str(corpus), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert f"the corpus {corpus} holds no document to encode" in err and reason in err
    assert not (out / "manifest.json").exists()  # refused before any worker started
    if extra:
        assert len((out / "rejects.jsonl").read_text().splitlines()) == 2


def test_ids_that_cannot_be_written_fail_at_read_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id with whitespace is a bad record when the corpus is read (file:line), not a
    RunFormatError after a whole search."""
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        '{"_id": "ok", "text": "fine"}\n{"_id": "foldoc:peano arithmetic:0", "text": "x"}\n',
        encoding="utf-8",
    )
    out = tmp_path / "root"
    assert main(["encode", "--corpus", str(corpus), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{corpus}:2: document id 'foldoc:peano arithmetic:0'" in err
    assert (
        main(["encode", "--corpus", str(corpus), "--out", str(out), "--on-bad-record", "skip"]) == 0
    )
    rejects = (out / "rejects.jsonl").read_text()
    assert "foldoc:peano arithmetic:0" in rejects
    queries = tmp_path / "queries.tsv"
    queries.write_text("q 1\tfine\n")
    argv = ["search", "--exact", "--embeddings", str(out), "--queries", str(queries)]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert f"{queries}:1: query id 'q 1' in column 1 contains whitespace" in capsys.readouterr().err


def test_encode_progress_shows_total_rate_and_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CI", raising=False)  # bars are off under CI without a terminal
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": f"document {i}"}) + "\n" for i in range(7)),
        encoding="utf-8",
    )
    argv = ["encode", "--corpus", str(corpus), "--out", str(tmp_path / "root")]
    assert main([*argv, "--shard-size", "3"]) == 0
    err = capsys.readouterr().err
    assert "7/7" in err and "doc/s" in err and "tok_s=" in err and "tokens=" in err
