"""`colbert-batch search --index`: Ray search actors, candidate generation, exact MaxSim."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import encode_argv, ray_worker_pids

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
    for kind, extra in (("flat", []), ("ivfpq", ["--nlist", "64"])):
        out[kind] = base / kind
        assert (
            main(
                [
                    "index",
                    "--embeddings",
                    str(root),
                    "--out",
                    str(out[kind]),
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
    assert 0 < m["candidate_recall"] <= 1
    assert m["latency_ms"]["p50"] <= m["latency_ms"]["p95"] <= m["latency_ms"]["p99"]
    p = m["params"]
    assert p["k_prime"] == 64 and p["max_candidates"] == 256 and p["nprobe"] >= 1
    assert m["workers"]["actors"] == 2
    assert {"query_encoding_s", "ann_s", "maxsim_s", "qps"} <= set(m["timings"])


def test_one_and_two_actors_give_identical_runs(
    indexed, scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    runs = []
    for w in ("1", "2"):
        _search(
            indexed,
            scifact_subset,
            tmp_path / w,
            ray_address,
            "--index",
            str(indexed["ivfpq"]),
            "--workers",
            w,
        )
        runs.append((tmp_path / w / "run.trec").read_text())
    assert runs[0] == runs[1]


def test_killed_search_actor_is_replaced_and_every_query_answered_once(
    indexed,
    scifact_subset: Path,
    ray_address: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean = tmp_path / "clean"
    _search(
        indexed,
        scifact_subset,
        clean,
        ray_address,
        "--index",
        str(indexed["ivfpq"]),
        "--workers",
        "1",
    )
    before = set(ray_worker_pids(b"ray::SearchWorker"))
    out = tmp_path / "killed"
    result: dict[str, int] = {}

    def run() -> None:
        result["rc"] = main(
            [
                "search",
                "--queries",
                str(scifact_subset),
                "--out",
                str(out),
                "--ray-address",
                ray_address,
                "--index",
                str(indexed["ivfpq"]),
                "--workers",
                "2",
            ]
        )

    job = threading.Thread(target=run)
    job.start()
    deadline = time.monotonic() + 120
    busy = b"ray::SearchWorker.search"  # Ray's process title while a batch runs
    while not (set(ray_worker_pids(busy)) - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    victims = sorted(set(ray_worker_pids(busy)) - before)
    assert victims, "no search actor appeared"
    os.kill(victims[0], signal.SIGKILL)
    job.join(timeout=300)
    assert result.get("rc") == 0
    assert (out / "run.trec").read_text() == (clean / "run.trec").read_text()
    qids = [line.split()[0] for line in (out / "run.trec").read_text().splitlines()]
    assert len(set(qids)) == 30


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
