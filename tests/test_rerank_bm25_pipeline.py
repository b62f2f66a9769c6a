"""BM25 baseline, exact MaxSim reranking of a run, and the one-file pipeline."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import encode_argv

from jobs.cli import main


def _run(path: Path) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        out.setdefault(q, []).append((d, float(s)))
    return out


@pytest.fixture(scope="module")
def bm25_run(scifact_subset: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bm25")
    assert (
        main(
            [
                "bm25",
                "--corpus",
                str(scifact_subset),
                "--queries",
                str(scifact_subset),
                "--out",
                str(out),
                "--k",
                "20",
            ]
        )
        == 0
    )
    return out


def test_bm25_run_and_metrics(bm25_run: Path) -> None:
    m = json.loads((bm25_run / "metrics.json").read_text())
    assert m["queries"] == 30
    assert m["measures"]["nDCG@10"] > 0.5
    assert m["params"]["bm25"]["stemmer"] == "english"
    run = _run(bm25_run / "run.trec")
    assert all(len(v) <= 20 for v in run.values())
    assert all(a[1] >= b[1] for v in run.values() for a, b in itertools.pairwise(v))


def test_rerank_from_index_and_from_shards_agree_with_exact_maxsim(
    bm25_run: Path, scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    argv = encode_argv(
        scifact_subset, emb, shard_size=64, doc_maxlen=64, ray_address=ray_address, workers=1
    )
    assert main(argv) == 0
    assert main(["index", "--embeddings", str(emb), "--out", str(idx), "--type", "flat"]) == 0
    runs = {}
    for src in (["--index", str(idx)], ["--embeddings", str(emb)]):
        out = tmp_path / src[0].strip("-")
        assert (
            main(
                [
                    "rerank",
                    "--run",
                    str(bm25_run / "run.trec"),
                    *src,
                    "--queries",
                    str(scifact_subset),
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        runs[src[0]] = _run(out / "run.trec")
        m = json.loads((out / "metrics.json").read_text())
        assert m["params"]["mode"] == "rerank" and m["unknown_documents"] == 0
    a, b = runs["--index"], runs["--embeddings"]
    assert a.keys() == b.keys()
    for q in a:
        assert [d for d, _ in a[q]] == [d for d, _ in b[q]]
    bm25 = _run(bm25_run / "run.trec")
    for q in a:  # same documents as the BM25 run, reordered
        assert {d for d, _ in a[q]} == {d for d, _ in bm25[q]}
    # Scores are exact MaxSim: a flat index with every candidate gives the same numbers.
    exact = tmp_path / "exact"
    assert (
        main(
            [
                "search",
                "--exact",
                "--embeddings",
                str(emb),
                "--queries",
                str(scifact_subset),
                "--out",
                str(exact),
                "--k",
                "200",
            ]
        )
        == 0
    )
    full = {q: dict(v) for q, v in _run(exact / "run.trec").items()}
    for q, ranked in a.items():
        for d, s in ranked:
            assert abs(full[q][d] - s) < 1e-4


def test_pipeline_runs_every_stage_then_skips_complete_ones(
    scifact_subset: Path, ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"dataset: {scifact_subset}\nmodel: minilm\nout: {tmp_path / 'out'}\n"
        "encode: {shard_size: 64, doc_maxlen: 64, workers: 1}\n"
        "index: {type: ivfpq, nlist: 32}\n"
        "search: {k: 20, workers: 1}\n",
        encoding="utf-8",
    )
    assert main(["pipeline", str(cfg), "--ray-address", ray_address]) == 0
    first = capsys.readouterr()
    metrics = json.loads((tmp_path / "out" / "run-ivfpq" / "metrics.json").read_text())
    assert metrics["queries"] == 30 and metrics["measures"]["nDCG@10"] > 0.5
    assert "skipping" not in first.err
    assert main(["pipeline", str(cfg), "--ray-address", ray_address]) == 0
    second = capsys.readouterr()
    assert second.err.count("is complete, skipping") == 3
    assert "nDCG@10" in second.out


def test_pipeline_config_errors_name_the_file(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("dataset: x\nsearh: {}\n", encoding="utf-8")
    assert main(["pipeline", str(cfg)]) == 2
    assert f"{cfg}: unknown keys ['searh']" in capsys.readouterr().err
