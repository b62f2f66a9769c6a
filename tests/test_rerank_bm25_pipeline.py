"""BM25 baseline, exact MaxSim reranking of a run, and the one-file pipeline."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
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


@pytest.fixture
def tiny_beir(scifact_subset: Path, tmp_path: Path) -> Path:
    """The subset's queries and qrels over only its first 40 documents (fast to encode)."""
    out = tmp_path / "tiny-beir"
    shutil.copytree(scifact_subset, out)
    lines = (scifact_subset / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    (out / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def test_pipeline_reencodes_when_an_encode_setting_changes(
    tiny_beir: Path, ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Changing encode.dtype must not reuse fp32 shards (the old completeness rule missed
    dtype); the index and the run, built from the old embeddings, follow."""
    cfg = tmp_path / "p.yaml"
    out = tmp_path / "out"

    def write(dtype: str) -> None:
        cfg.write_text(
            f"dataset: {tiny_beir}\nout: {out}\n"
            f"encode: {{shard_size: 16, doc_maxlen: 32, workers: 1, dtype: {dtype}}}\n"
            "index: {type: flat}\nsearch: {k: 10, workers: 1}\n",
            encoding="utf-8",
        )

    write("fp32")
    assert main(["pipeline", str(cfg), "--ray-address", ray_address]) == 0
    capsys.readouterr()
    write("bf16")
    assert main(["pipeline", str(cfg), "--ray-address", ray_address]) == 0
    err = capsys.readouterr().err
    assert "settings changed {'dtype': ('fp32', 'bf16')}" in err
    assert "is complete, skipping" not in err  # index and search were rebuilt too
    manifest = json.loads((out / "embeddings" / "manifest.json").read_text())
    assert manifest["config"]["dtype"] == "bf16" and manifest["complete"] is True
    assert manifest["encoder"]["dtype"] == "bfloat16"
    index_meta = json.loads((out / "index-flat" / "meta.json").read_text())
    sha = hashlib.sha256((out / "embeddings" / "manifest.json").read_bytes()).hexdigest()
    assert index_meta["source"]["manifest_sha256"] == sha
    # The judged documents cut from the corpus are reported, not silently scored.
    metrics = json.loads((out / "run-flat" / "metrics.json").read_text())
    assert metrics["qrels_not_in_corpus"]["count"] > 0


def test_pipeline_unknown_key_in_a_section_names_file_section_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("dataset: x\nencode: {shard_sise: 100}\n", encoding="utf-8")
    assert main(["pipeline", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: unknown key(s) shard_sise in section `encode`; allowed: " in err
    assert "shard_size" in err.split("allowed:")[1]
    assert "--shard-sise" not in err


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("encode: {shard_size: ten}", "encode: shard_size must be an integer, got 'ten'"),
        ("search: {k: 0}", "search: k must be positive, got 0"),
        ("search: {memory_budget_mb: -1}", "search: memory_budget_mb must be positive, got -1"),
        ("index: {type: ivf}", "index: type must be one of flat, ivfpq, hnsw, got 'ivf'"),
        ("search: {index: elsewhere}", "unknown key(s) index in section `search`"),
    ],
)
def test_pipeline_invalid_values_name_file_section_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, message: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"dataset: x\n{section}\n", encoding="utf-8")
    assert main(["pipeline", str(cfg)]) == 2
    assert f"{cfg}: {message}" in capsys.readouterr().err


def test_demo_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The YAML `make demo` runs is valid and means what the README says."""
    from jobs.commands.pipeline import load_stages

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    stages = load_stages("jobs/configs/scifact-demo.yaml")
    assert stages.encode.encode.corpus == "beir:scifact"
    assert (stages.encode.encode.shard_size, stages.encode.encode.doc_maxlen) == (1000, 256)
    assert stages.index.index.type == "ivfpq"
    assert stages.search.index == stages.index.out == str(Path("out/demo/index-ivfpq"))
    assert (stages.search.params.k, stages.search.params.k_prime) == (100, 64)
    assert stages.search.params.max_candidates == 256
    assert stages.search.query_set.qrels_source == "beir:scifact"
