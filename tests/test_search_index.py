"""`colbert-batch search --index`: Ray search actors, candidate generation, exact MaxSim."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import encode_argv, wait_parked

from colbert_core.evaluation import latency_percentiles
from jobs.cli import main


@pytest.fixture(scope="module")
def indexed(scifact_subset: Path, ray_address: str, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("search-index")
    root = base / "emb"
    argv = encode_argv(
        scifact_subset, root, shard_size=64, doc_maxlen=128, ray_address=ray_address, workers=1
    )
    assert main(argv) == 0
    out = {"emb": root}
    for name, kind, extra in (
        ("flat", "flat", []),
        ("ivfpq", "ivfpq", ["--nlist", "64"]),
        ("hnsw", "hnsw", []),
    ):
        out[name] = base / name
        assert (
            main(
                [
                    "index",
                    "--embeddings",
                    str(root),
                    "--out",
                    str(out[name]),
                    "--type",
                    kind,
                    *extra,
                ]
            )
            == 0
        )
    return out


def _search(indexed, subset, out: Path, ray_address: str, *extra: str) -> dict:
    assert (
        main(
            [
                "search",
                "--queries",
                str(subset),
                "--out",
                str(out),
                "--ray-address",
                ray_address,
                *extra,
            ]
        )
        == 0
    )
    return json.loads((out / "metrics.json").read_text())


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_flat_index_with_every_candidate_equals_exact_search(
    indexed, scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    exact = tmp_path / "exact"
    assert (
        main(
            [
                "search",
                "--exact",
                "--embeddings",
                str(indexed["emb"]),
                "--queries",
                str(scifact_subset),
                "--out",
                str(exact),
                "--k",
                "20",
            ]
        )
        == 0
    )
    ann = tmp_path / "ann"
    metrics = _search(
        indexed,
        scifact_subset,
        ann,
        ray_address,
        "--index",
        str(indexed["flat"]),
        "--k",
        "20",
        "--k-prime",
        "100000",
        "--max-candidates",
        "100000",
        "--workers",
        "1",
    )
    a, b = _lines(exact / "run.trec"), _lines(ann / "run.trec")
    assert [r[:4] for r in a] == [r[:4] for r in b]
    assert all(abs(float(x[4]) - float(y[4])) < 1e-4 for x, y in zip(a, b, strict=True))
    assert metrics["candidate_recall"] == 1.0
    assert metrics["params"]["type"] == "flat"


def test_ivfpq_search_reports_quality_latency_and_parameters(
    indexed, scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    m = _search(
        indexed,
        scifact_subset,
        tmp_path / "run",
        ray_address,
        "--index",
        str(indexed["ivfpq"]),
        "--workers",
        "2",
    )
    assert set(m["measures"]) >= {"nDCG@10", "R@10", "R@100", "RR@10"}
    assert m["queries"] == 30 and m["missing_from_run"] == []
    assert m["measures"]["nDCG@10"] > 0.6
    # Pinned when written: on this subset the candidate stage finds every relevant document.
    assert m["candidate_recall"] == pytest.approx(IVFPQ_CANDIDATE_RECALL, abs=0.01)
    p = m["params"]
    # README: k' = 64, 256 candidates, nprobe = nlist / 512 (at least 1; nlist 64 here).
    assert (p["k_prime"], p["max_candidates"], p["nprobe"], p["ef_search"]) == (64, 256, 1, None)
    assert m["workers"]["actors"] == 2
    assert {"query_encoding_s", "ann_s", "maxsim_s", "qps"} <= set(m["timings"])
    # The latency profile is the percentiles of the per-query latencies it summarises.
    latency = pq.read_table(tmp_path / "run" / "per_query.parquet").column("latency_ms")
    assert len(latency) == 30 and min(latency.to_pylist()) > 0
    assert m["latency_ms"] == latency_percentiles(latency.to_pylist())


IVFPQ_CANDIDATE_RECALL = 1.0


@pytest.mark.parametrize(
    ("kind", "extra", "expected"),
    [
        ("hnsw", [], {"ef_search": 128, "nprobe": None}),  # max(64, 2 x 64)
        ("hnsw", ["--k-prime", "100"], {"ef_search": 200, "k_prime": 100}),
        ("hnsw", ["--ef-search", "40"], {"ef_search": 40}),
        ("ivfpq", ["--nprobe", "4"], {"nprobe": 4, "ef_search": None}),
    ],
)
def test_search_settings_per_index_type(
    indexed,
    scifact_subset: Path,
    ray_address: str,
    tmp_path: Path,
    kind: str,
    extra: list[str],
    expected: dict,
) -> None:
    m = _search(
        indexed, scifact_subset, tmp_path / "run", ray_address,
        "--index", str(indexed[kind]), "--workers", "1", *extra,
    )  # fmt: skip
    assert {k: m["params"][k] for k in expected} == expected
    assert m["params"]["type"] == kind and m["measures"]["nDCG@10"] > 0.5


def test_search_applies_nprobe_and_ef_search_to_faiss(indexed) -> None:
    """The settings reach the FAISS index, not just metrics.json."""
    import faiss
    import numpy as np

    from colbert_core.index import load_index
    from colbert_core.search import SearchParams, search

    query = [np.eye(384, dtype=np.float32)[:3]]
    hnsw = load_index(indexed["hnsw"])
    search(hnsw, query, SearchParams(ef_search=77))
    assert faiss.downcast_index(hnsw.index).hnsw.efSearch == 77
    ivf = load_index(indexed["ivfpq"])
    search(ivf, query, SearchParams(nprobe=5))
    assert faiss.extract_index_ivf(ivf.index).nprobe == 5


def test_one_and_two_actors_give_identical_runs(
    indexed, scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    """30 queries in batches of 4: eight batches, so two actors really share the work."""
    runs = []
    for w in ("1", "2"):
        m = _search(
            indexed,
            scifact_subset,
            tmp_path / w,
            ray_address,
            "--index",
            str(indexed["ivfpq"]),
            "--workers",
            w,
            "--query-batch-size",
            "4",
        )
        runs.append((tmp_path / w / "run.trec").read_text())
        per_actor = m["workers"]["queries_per_actor"]
        assert len(per_actor) == int(w) and all(n > 0 for n in per_actor.values())
        assert sum(per_actor.values()) == 30
    assert runs[0] == runs[1]


def test_killed_search_actor_is_replaced_and_every_query_answered_once(
    indexed, scifact_subset: Path, ray_address: str, hooks: Path, tmp_path: Path
) -> None:
    """An actor killed while it holds a batch: the batch is retried on a new actor and
    every query is answered exactly once. Deterministic: both actors park on their first
    batch until the test has killed one of them."""
    argv = ["--index", str(indexed["ivfpq"]), "--query-batch-size", "4"]
    clean = tmp_path / "clean"
    _search(indexed, scifact_subset, clean, ray_address, *argv, "--workers", "1")
    out = tmp_path / "killed"
    (hooks / "park-search-batch").write_text("")
    result: dict[str, dict] = {}
    job = threading.Thread(
        target=lambda: result.setdefault(
            "m", _search(indexed, scifact_subset, out, ray_address, *argv, "--workers", "2")
        )
    )
    job.start()
    try:
        os.kill(wait_parked(hooks, "search-batch"), signal.SIGKILL)
    finally:
        (hooks / "park-search-batch").unlink()
        job.join(timeout=300)
    workers = result["m"]["workers"]
    assert workers["replaced_actors"] == 1
    assert workers["retried_batches"] >= 1  # the parked batch, and one queued behind it
    assert sum(workers["queries_per_actor"].values()) == 30
    assert (out / "run.trec").read_text() == (clean / "run.trec").read_text()
    qids = [line.split()[0] for line in (out / "run.trec").read_text().splitlines()]
    assert len(set(qids)) == 30


@pytest.fixture(scope="module")
def residual_pair(datasets_dir: Path, ray_address: str, tmp_path_factory) -> dict[str, Path]:
    """150 SciFact queries over their relevant documents and 100 others (~270 documents):
    30 queries would make one swapped pair of documents a 0.012 nDCG@10 change."""
    from conftest import scifact_slice

    base = tmp_path_factory.mktemp("residual-pair")
    subset = scifact_slice(datasets_dir / "scifact", base / "beir", 100, 150)
    root = base / "emb"
    argv = encode_argv(subset, root, shard_size=64, doc_maxlen=128, ray_address=ray_address,
                       workers=1)  # fmt: skip
    assert main(argv) == 0
    out = {"beir": subset, "emb": root}
    # The same FAISS index twice (same options and seed), with each token store.
    for store in ("float16", "residual:2", "pq:48"):
        out[store] = base / store.replace(":", "")
        argv = ["index", "--embeddings", str(root), "--out", str(out[store]), "--type",
                "ivfpq", "--store", store]  # fmt: skip
        assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def float16_run(residual_pair, ray_address: str, tmp_path_factory) -> Path:
    """The float16 index searched through two actors: the run each store is compared with
    (its ``metrics.json`` and ``run.trec``)."""
    out = tmp_path_factory.mktemp("float16-run")
    _search(
        None, residual_pair["beir"], out, ray_address,
        "--index", str(residual_pair["float16"]), "--workers", "2",
    )  # fmt: skip
    return out


def test_residual_store_searches_like_float16_through_actors_and_rerank(
    residual_pair, float16_run: Path, ray_address: str, tmp_path: Path
) -> None:
    from colbert_core.index import load_index

    subset = residual_pair["beir"]
    f16_idx, res_idx = load_index(residual_pair["float16"]), load_index(residual_pair["residual:2"])
    assert res_idx.store_kind == "residual" and f16_idx.store_kind == "float16"
    assert res_idx.meta.files["index.faiss"] == f16_idx.meta.files["index.faiss"]
    f16_bytes = f16_idx.meta.bytes_per_token["token_store"]
    assert res_idx.meta.bytes_per_token["token_store"] == 384 // 4 + 4 < f16_bytes / 7
    f16 = json.loads((float16_run / "metrics.json").read_text())
    res = _search(
        None, subset, tmp_path / "residual:2", ray_address,
        "--index", str(residual_pair["residual:2"]), "--workers", "2",
    )  # fmt: skip
    assert (f16["params"]["store"], res["params"]["store"]) == ("float16", "residual:2")
    assert res["workers"]["actors"] == 2 and res["queries"] == 150
    # Same FAISS index, same candidates; exact MaxSim over 2-bit residuals ranks them
    # almost as the float16 vectors do.
    assert res["candidate_recall"] == f16["candidate_recall"]
    assert abs(res["measures"]["nDCG@10"] - f16["measures"]["nDCG@10"]) <= 0.01
    _rerank_reads_the_store(residual_pair, "residual:2", tmp_path, float16_run)
    # --full-scores: the actors score exactly only the best 100 of the 256 candidates by
    # centroid MaxSim; quality holds and every returned score is still the exact one.
    pruned = _search(
        None, subset, tmp_path / "pruned", ray_address,
        "--index", str(residual_pair["residual:2"]), "--workers", "2", "--full-scores", "100",
    )  # fmt: skip
    assert pruned["params"]["full_scores"] == 100 and pruned["queries"] == 150
    assert pruned["candidate_recall"] == res["candidate_recall"]
    assert abs(pruned["measures"]["nDCG@10"] - f16["measures"]["nDCG@10"]) <= 0.01
    kept = {(q, d): float(s) for q, _, d, _, s, _ in _lines(tmp_path / "pruned" / "run.trec")}
    searched = {
        (q, d): float(s) for q, _, d, _, s, _ in _lines(tmp_path / "residual:2" / "run.trec")
    }
    both = kept.keys() & searched.keys()
    assert len(both) > len(kept) // 2  # 86% here: most of the top 100 survive
    assert max(abs(searched[k] - kept[k]) for k in both) < 1e-6


def test_pq_store_searches_like_float16_through_actors_and_rerank(
    residual_pair, float16_run: Path, ray_address: str, tmp_path: Path
) -> None:
    from colbert_core.index import load_index

    subset = residual_pair["beir"]
    pq_idx = load_index(residual_pair["pq:48"])
    assert pq_idx.store_kind == "pq" and pq_idx.meta.store["m"] == 48
    assert (
        pq_idx.meta.files["index.faiss"]
        == load_index(residual_pair["float16"]).meta.files["index.faiss"]
    )
    f16 = json.loads((float16_run / "metrics.json").read_text())
    pq = _search(
        None, subset, tmp_path / "pq:48", ray_address,
        "--index", str(residual_pair["pq:48"]), "--workers", "2", "--full-scores", "100",
    )  # fmt: skip
    assert pq["params"]["store"] == "pq:48" and pq["queries"] == 150
    assert pq["candidate_recall"] == f16["candidate_recall"]
    assert abs(pq["measures"]["nDCG@10"] - f16["measures"]["nDCG@10"]) <= 0.01
    _rerank_reads_the_store(residual_pair, "pq:48", tmp_path, float16_run)


def test_search_actor_collects_the_document_centroids_before_its_first_batch(
    residual_pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actor's first batch is timed: ``--full-scores`` setup belongs in ``start``."""
    import colbert_core.tokenstore.residual as residual
    from colbert_core.data import Query
    from colbert_core.search import SearchParams
    from jobs.cluster.search_actors import QueryBatch, SearchWorker

    worker = SearchWorker(
        str(residual_pair["residual:2"]), None, SearchParams(full_scores=100), None
    )
    worker.start()

    def on_the_clock(*_: object) -> None:
        raise AssertionError("the document centroids were collected in a timed batch")

    monkeypatch.setattr(residual, "distinct_per_segment", on_the_clock)
    batch = QueryBatch(0, (Query("q1", "vitamin D deficiency"),))
    (answer,) = worker.search(batch)
    assert answer.query_id == "q1" and len(answer.ranked) == 100


def _rerank_reads_the_store(pair: dict[str, Path], store: str, runs: Path, f16: Path) -> None:
    """rerank over the ``store`` index reorders the float16 run's top 100 (in ``f16``) with
    the scores the search over that index gave (``runs / store``)."""
    f16_ndcg = json.loads((f16 / "metrics.json").read_text())["measures"]["nDCG@10"]
    out = runs / "rerank"
    argv = ["rerank", "--run", str(f16 / "run.trec"), "--index", str(pair[store]),
            "--queries", str(pair["beir"]), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["params"]["store"] == store
    assert abs(m["measures"]["nDCG@10"] - f16_ndcg) <= 0.01
    searched = {(q, d): float(s) for q, _, d, _, s, _ in _lines(runs / store / "run.trec")}
    reranked = {(q, d): float(s) for q, _, d, _, s, _ in _lines(out / "run.trec")}
    common = searched.keys() & reranked.keys()
    assert len(common) > 5000  # the searched documents are in the rerank pool
    assert max(abs(searched[k] - reranked[k]) for k in common) < 1e-4  # the same scores


def test_search_needs_exactly_one_mode(
    indexed, scifact_subset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["search", "--queries", str(scifact_subset), "--out", str(tmp_path)]) == 2
    assert "either --exact --embeddings ROOT or --index IDX" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["exact", "index"])
def test_empty_and_overlong_queries_are_reported(
    indexed, ray_address: str, tmp_path: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    queries = tmp_path / "queries.jsonl"
    long_text = " ".join(["cholesterol"] + ["protein"] * 100)
    rows = [
        {"_id": "q-ok", "text": "vitamin D deficiency"},
        {"_id": "q-empty", "text": "   "},
        {"_id": "q-long", "text": long_text},
    ]
    queries.write_text("".join(json.dumps(r) + "\n" for r in rows))
    where = ["--exact", "--embeddings", str(indexed["emb"])]
    if mode == "index":
        where = ["--index", str(indexed["flat"]), "--workers", "1"]
    m = _search(indexed, queries, tmp_path / "run", ray_address, *where)
    assert m["empty_queries"] == ["q-empty"]
    # MiniLM: query_maxlen 64; cho ##les ##terol + 100 x protein + [CLS] [SEP] = 105.
    assert m["truncated_queries"] == {"q-long": 41}
    assert "1 queries are longer than query_maxlen" in capsys.readouterr().err
    # Both are still answered (an empty query has only [CLS]/[SEP] vectors).
    answered = {
        line.split()[0] for line in (tmp_path / "run" / "run.trec").read_text().splitlines()
    }
    assert answered == {"q-ok", "q-empty", "q-long"}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MiniLM's files with one config entry added: it loads and has the same dimension,
    but it is not the model that encoded the documents (another fingerprint)."""
    from colbert_core.encoder import resolve_model_path

    dst = tmp_path_factory.mktemp("other-model") / "minilm-other"
    shutil.copytree(resolve_model_path("minilm"), dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps(config | {"colbert_batch_test": "other"}))
    return dst


@pytest.mark.parametrize("mode", ["index", "exact", "rerank"])
def test_query_encoder_of_another_model_is_refused(
    indexed,
    other_model: Path,
    scifact_subset: Path,
    ray_address: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mode: str,
) -> None:
    """Every search path checks the query encoder against the artifact's model (index
    search used to search silently with the other model's queries)."""
    common = ["--queries", str(scifact_subset), "--out", str(tmp_path / "run")]
    common += ["--model", str(other_model)]
    run = tmp_path / "given.trec"
    run.write_text("1 Q0 31715818 1 1.0 x\n")
    argv = {
        "index": ["search", "--index", str(indexed["flat"]), "--workers", "1"],
        "exact": ["search", "--exact", "--embeddings", str(indexed["emb"])],
        "rerank": ["rerank", "--index", str(indexed["flat"]), "--run", str(run)],
    }[mode]
    if mode == "index":
        argv += ["--ray-address", ray_address]
    assert main([*argv, *common]) == 2
    err = capsys.readouterr().err
    assert "is not the model that encoded the documents" in err
    assert str(other_model) in err and "--model" in err
    assert not (tmp_path / "run" / "run.trec").exists()
