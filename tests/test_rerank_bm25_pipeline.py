"""BM25 baseline, exact MaxSim reranking of a run, and the one-file pipeline."""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import time
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
    # Pinned when written (bm25s is deterministic); a change of tokenizer, stemmer or
    # stopwords moves it.
    assert m["measures"]["nDCG@10"] == pytest.approx(BM25_SUBSET_NDCG, abs=1e-4)
    assert m["params"]["bm25"] == {
        "language": "en", "k1": 0.9, "b": 0.4, "method": "lucene",
        "stemmer": "english", "stopwords": "en",
    }  # fmt: skip
    run = _run(bm25_run / "run.trec")
    assert all(len(v) <= 20 for v in run.values())
    assert all(a[1] >= b[1] for v in run.values() for a, b in itertools.pairwise(v))


BM25_SUBSET_NDCG = 0.9225
BM25_MIRACL_DE_NDCG = 0.5220


def test_bm25_stems_and_drops_stopwords() -> None:
    """What the settings claim, on texts where it shows: 'runs' finds 'running' only through
    the stemmer; a query of stopwords finds nothing."""
    from colbert_core.data import Document, Query
    from colbert_core.search.bm25 import BM25Settings, bm25_search

    docs = [Document("d1", "running shoes for the marathon"), Document("d2", "a red apple")]
    queries = [Query("q1", "runs"), Query("q2", "the of and"), Query("q3", "apples")]
    ranked, ids = bm25_search(docs, queries, k=10, settings=BM25Settings(language="en"))
    assert ids == ["d1", "d2"]
    assert [d for d, _ in ranked["q1"]] == ["d1"]
    assert ranked["q2"] == []
    assert [d for d, _ in ranked["q3"]] == ["d2"]


def test_bm25_german_on_miracl(datasets_dir: Path, tmp_path: Path) -> None:
    miracl = str(datasets_dir / "miracl-de-dev")
    runs = {}
    for name, extra in (("de", []), ("de-k1-b", ["--k1", "1.5", "--b", "0.9"])):
        argv = ["bm25", "--corpus", miracl, "--queries", miracl, "--language", "de"]
        assert main([*argv, "--out", str(tmp_path / name), *extra]) == 0
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    de = runs["de"]
    assert de["queries"] == 305 and de["params"]["bm25"]["stemmer"] == "german"
    assert de["measures"]["nDCG@10"] == pytest.approx(BM25_MIRACL_DE_NDCG, abs=1e-4)
    tuned = runs["de-k1-b"]
    assert (tuned["params"]["bm25"]["k1"], tuned["params"]["bm25"]["b"]) == (1.5, 0.9)
    assert tuned["measures"] != de["measures"]  # --k1 and --b reach the scorer


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


def test_pipeline_skips_complete_stages_reruns_changed_ones_and_all_with_force(
    scifact_subset: Path, ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "p.yaml"
    out = tmp_path / "out"

    def run(k: int, *extra: str) -> tuple[str, str]:
        cfg.write_text(
            f"dataset: {scifact_subset}\nmodel: minilm\nout: {out}\n"
            "encode: {shard_size: 64, doc_maxlen: 64, workers: 1}\n"
            f"index: {{type: ivfpq, nlist: 32}}\nsearch: {{k: {k}, workers: 1}}\n",
            encoding="utf-8",
        )
        capsys.readouterr()
        assert main(["pipeline", str(cfg), "--ray-address", ray_address, *extra]) == 0
        captured = capsys.readouterr()
        return captured.out, captured.err

    _, err = run(20)
    metrics = json.loads((out / "run-ivfpq" / "metrics.json").read_text())
    assert metrics["queries"] == 30 and metrics["measures"]["nDCG@10"] > 0.5
    assert "skipping" not in err
    stdout, err = run(20)
    assert err.count("is complete, skipping") == 3 and "nDCG@10" in stdout
    # A changed search setting re-runs the search stage only.
    _, err = run(5)
    assert err.count("is complete, skipping") == 2 and "stage search + evaluate ->" in err
    lines = (out / "run-ivfpq" / "run.trec").read_text().splitlines()
    assert max(int(line.split()[3]) for line in lines) == 5
    # --force re-runs every stage; encode as a resume: every shard verified, none rewritten.
    built = json.loads((out / "index-ivfpq" / "meta.json").read_text())["created"]
    time.sleep(1.1)  # `created` has a one-second resolution
    _, err = run(5, "--force")
    assert "skipping" not in err
    assert all(f"stage {s}" in err for s in ("encode ->", "index ->", "search + evaluate ->"))
    assert json.loads((out / "index-ivfpq" / "meta.json").read_text())["created"] != built
    summary = json.loads((out / "embeddings" / "manifest.json").read_text())["summary"]
    assert (summary["shards_written"], summary["shards_skipped"]) == (0, 3)


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
