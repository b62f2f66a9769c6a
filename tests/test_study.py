"""`colbert-batch study`: a tiny real study end to end, resume after a kill, skips, bad YAML.

Real parts throughout: SciFact documents and judged queries, the real distractor passages
from ../shared/datasets/distractors-en, the packaged MiniLM, the Ray test cluster, FAISS.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import scifact_slice, wait_parked

from colbert_core.embeddings import Manifest
from jobs.cli import main
from jobs.commands import study as study_command

SHARD = 100
PNGS = ("ndcg_vs_qps", "latency_vs_docs", "build_vs_tokens", "rss_vs_tokens", "bytes_vs_ndcg")


def count_docs(corpus: Path) -> int:
    return sum(1 for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip())


@pytest.fixture(scope="module")
def target(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 SciFact documents plus the relevant ones of 12 judged queries."""
    return scifact_slice(datasets_dir / "scifact", tmp_path_factory.mktemp("target"), 120, 12)


def study_yaml(path: Path, target: Path, datasets_dir: Path, out: Path, **overrides: Any) -> Path:
    """2 sizes (one cut inside a distractor shard) x 2 index types x 2 settings."""
    n = count_docs(target / "corpus.jsonl")
    config: dict[str, Any] = {
        "name": "tiny",
        "dataset": str(target),
        "distractors": str(datasets_dir / "distractors-en" / "corpus.jsonl.gz"),
        "sizes": [n + 150, n + 350],
        "out": str(out),
        "encode": {"shard_size": SHARD, "doc_maxlen": 64},
        "latency_queries": 4,
        "indexes": [
            {"name": "flat", "type": "flat", "search": [{"k_prime": 8}, {"k_prime": 32}]},
            {
                "name": "ivfpq",
                "type": "ivfpq",
                "nlist": 32,
                "pq_m": 8,
                "search": [{"nprobe": 2}, {"nprobe": 8}],
            },
        ],
    }
    config.update(overrides)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_study(
    target: Path, datasets_dir: Path, ray_address: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, study_command.StudyOutcome]:
    """The tiny study, run once through the library command (the outcome says what ran)."""
    folder = tmp_path_factory.mktemp("study")
    yml = study_yaml(folder / "study.yaml", target, datasets_dir, folder / "out")
    outcome = study_command.run(study_command.Config(str(yml), ray_address=ray_address))
    return yml, folder / "out", outcome


def copy_study(done: Path, out: Path, *, exact: bool = True) -> None:
    """A new study folder holding ``done``'s embeddings (and exact references): what the
    other tests measure does not depend on re-encoding."""
    shutil.copytree(done / "embeddings", out / "embeddings")
    if exact:
        shutil.copytree(done / "exact", out / "exact")


def rows(out: Path) -> list[dict[str, Any]]:
    return pq.read_table(out / "results.parquet").to_pylist()


def test_a_tiny_study_runs_end_to_end(tiny_study: tuple[Path, Path, Any], target: Path) -> None:
    from matplotlib import image

    _, out, _ = tiny_study
    table = rows(out)
    assert len(table) == 2 * 2 * 2  # one row per (size, index config, setting)
    assert {r["status"] for r in table} == {"ok"}
    assert len({r["point_key"] for r in table}) == 8
    sizes = sorted({r["size_docs"] for r in table})
    n_target = count_docs(target / "corpus.jsonl")
    assert sizes == [n_target + 150, n_target + 350]
    for r in table:
        for col in ("ndcg10", "r10", "r100", "candidate_recall", "overlap10", "exact_ndcg10"):
            assert r[col] is not None and 0 <= r[col] <= 1, (col, r)
        for col in ("qps", "p50_ms", "p95_ms", "p99_ms", "peak_rss_mb", "total_bytes_per_token"):
            assert r[col] is not None and r[col] > 0, (col, r)
        assert json.loads(r["versions"])["faiss"]
    # Flat finds every exact top-10 document at k'=32 on a few hundred documents.
    flat = [r for r in table if r["index_name"] == "flat" and r["k_prime"] == 32]
    assert all(r["overlap10"] > 0.9 for r in flat)
    report = (out / "report.md").read_text(encoding="utf-8")
    for size in sizes:
        assert str(size) in report
    assert "projected" in report
    for name in PNGS:
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        pixels = image.imread(png)
        assert float(np.std(pixels)) > 0.01, f"{name} is blank"
    assert (out / "study.json").exists()
    assert len(list((out / "exact").glob("size-*.parquet"))) == 2
    assert not list((out / "indexes").rglob("meta.json"))  # indexes removed after their point


def test_sizes_reuse_the_same_shards(tiny_study: tuple[Path, Path, Any], target: Path) -> None:
    """Each corpus is encoded once; the distractors only as far as the largest size needs
    (rounded up to whole shards), and every size reads a prefix of those shards."""
    _, out, outcome = tiny_study
    distractors = Manifest.load(str(out / "embeddings" / "distractors"))
    assert distractors.n_docs == 400  # 350 needed, rounded up to whole shards of 100
    assert outcome.encoded[str(out / "embeddings" / "distractors")] == 4
    n_target = count_docs(target / "corpus.jsonl")
    assert outcome.encoded[str(out / "embeddings" / "target")] == -(-n_target // SHARD)
    table = rows(out)
    small, large = sorted({r["size_docs"] for r in table})
    tokens = {r["size_docs"]: r["n_tokens"] for r in table}
    assert tokens[small] < tokens[large]


def test_a_rerun_does_nothing_and_a_larger_size_encodes_only_the_new_shards(
    tiny_study: tuple[Path, Path, Any],
    target: Path,
    datasets_dir: Path,
    ray_address: str,
    tmp_path: Path,
) -> None:
    yml, out, _ = tiny_study
    before = {r["point_key"]: r["created"] for r in rows(out)}
    again = study_command.run(study_command.Config(str(yml), ray_address=ray_address))
    assert again.ran == [] and set(again.encoded.values()) == {0}
    assert {r["point_key"]: r["created"] for r in rows(out)} == before
    # Grow the largest size by 80 documents into a copy of the study: one new shard.
    grown = tmp_path / "grown"
    shutil.copytree(out / "embeddings", grown / "embeddings")
    n = count_docs(target / "corpus.jsonl")
    bigger = study_yaml(
        tmp_path / "bigger.yaml",
        target,
        datasets_dir,
        grown,
        sizes=[n + 430],
        indexes=[{"name": "ivfpq", "type": "ivfpq", "nlist": 16, "pq_m": 8}],
    )
    outcome = study_command.run(study_command.Config(str(bigger), ray_address=ray_address))
    assert outcome.encoded[str(grown / "embeddings" / "distractors")] == 1
    assert outcome.encoded[str(grown / "embeddings" / "target")] == 0
    assert Manifest.load(str(grown / "embeddings" / "distractors")).n_docs == 500


def test_a_killed_study_reruns_only_the_missing_points(
    tiny_study: tuple[Path, Path, Any],
    target: Path,
    datasets_dir: Path,
    ray_address: str,
    hooks: Path,
    tmp_path: Path,
) -> None:
    _, done, _ = tiny_study
    out = tmp_path / "out"
    copy_study(done, out, exact=False)  # encoding is tested above
    yml = study_yaml(tmp_path / "study.yaml", target, datasets_dir, out)
    (hooks / "park-study-point").write_text("3")  # the driver parks before its 3rd point
    argv = [sys.executable, "-m", "jobs.cli", "study", str(yml), "--ray-address", ray_address]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = wait_parked(hooks, "study-point", timeout=300)
        assert pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        (hooks / "park-study-point").unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
    first = rows(out)
    assert len(first) == 4 and {r["status"] for r in first} == {"ok"}  # 2 points x 2 settings
    created = {r["point_key"]: r["created"] for r in first}
    outcome = study_command.run(study_command.Config(str(yml), ray_address=ray_address))
    assert len(outcome.ran) == 2  # only the two points the kill left out
    final = rows(out)
    assert len(final) == 8 and {r["status"] for r in final} == {"ok"}
    assert {k: v for k, v in ((r["point_key"], r["created"]) for r in final) if k in created} == (
        created
    )


def test_a_point_predicted_not_to_fit_is_skipped_with_its_reason(
    tiny_study: tuple[Path, Path, Any],
    target: Path,
    datasets_dir: Path,
    ray_address: str,
    tmp_path: Path,
) -> None:
    _, done, _ = tiny_study
    out = tmp_path / "out"
    copy_study(done, out)
    yml = study_yaml(
        tmp_path / "study.yaml",
        target,
        datasets_dir,
        out,
        max_point_memory_gb=0.1,  # below the base of any worker process: nothing fits
        indexes=[{"name": "flat", "type": "flat"}],
    )
    assert main(["study", str(yml), "--ray-address", ray_address]) == 0
    table = rows(out)
    assert len(table) == 2 and {r["status"] for r in table} == {"skipped"}
    for r in table:
        assert "exceeds max_point_memory_gb (0.1 GiB)" in r["reason"]
        assert r["predicted_memory_gb"] > 0.1 and r["ndcg10"] is None
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "exceeds max_point_memory_gb" in report


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"sise": [5]}, "unknown key(s) sise"),
        ({"sizes": [10]}, "sizes: [10] smaller than the target corpus"),
        ({"indexes": [{"type": "ivf"}]}, "indexes[0]: type must be one of flat, ivfpq, hnsw"),
        ({"indexes": [{"type": "ivfpq", "nlst": 4}]}, "indexes[0]: unknown key 'nlst'"),
        ({"indexes": [{"type": "ivfpq", "search": [{"nprob": 4}]}]}, "indexes[0].search[0]"),
        ({"indexes": [{"type": "ivfpq", "factory": "IVF{n},PQ8"}]}, "placeholder(s) ['n']"),
        ({"sizes": [10**7]}, "holds 298405"),
    ],
)
def test_a_bad_study_yaml_fails_before_any_work_naming_the_key(
    target: Path,
    datasets_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    override: dict[str, Any],
    message: str,
) -> None:
    out = tmp_path / "out"
    yml = study_yaml(tmp_path / "study.yaml", target, datasets_dir, out, **override)
    assert main(["study", str(yml)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(yml) in err and "Traceback" not in err
    assert not out.exists()


def test_synthetic_sizes_measure_build_and_latency_without_quality(
    tiny_study: tuple[Path, Path, Any],
    target: Path,
    datasets_dir: Path,
    ray_address: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from colbert_core.study.sizes import load_template, template_path

    caplog.set_level(logging.INFO, logger="jobs.commands.study")
    _, done, _ = tiny_study
    out = tmp_path / "out"
    copy_study(done, out)
    n = count_docs(target / "corpus.jsonl")
    yml = study_yaml(
        tmp_path / "study.yaml",
        target,
        datasets_dir,
        out,
        sizes=[n + 150],
        synthetic_sizes=[1500],
        indexes=[{"name": "ivfpq", "type": "ivfpq", "nlist": 16, "pq_m": 8}],
    )
    outcome = study_command.run(study_command.Config(str(yml), ray_address=ray_address))
    assert outcome.ran == ["size " + str(n + 150) + " ivfpq", "synthetic 1500 ivfpq"]
    synthetic = [r for r in rows(out) if r["synthetic"]]
    assert len(synthetic) == 1 and synthetic[0]["status"] == "ok"
    r = synthetic[0]
    assert r["size_docs"] == 1500 and r["qps"] > 0 and r["total_bytes_per_token"] > 0
    assert all(r[c] is None for c in ("ndcg10", "r10", "overlap10", "exact_ndcg10"))
    # Synthetic documents are as long as real ones on average.
    real = next(x for x in rows(out) if not x["synthetic"])
    per_doc = real["n_tokens"] / real["size_docs"]
    assert 0.5 * per_doc < r["n_tokens"] / 1500 < 2 * per_doc
    assert "synthetic" in (out / "report.md").read_text(encoding="utf-8")
    # The template is stored once, tied to the real corpus it was drawn from.
    assert template_path(out).exists()
    assert load_template(out, "another corpus") is None
    # The point tasks report their stages to the driver while it waits (a 1M-document
    # point builds for hours): one log line per stage, in order.
    stages = [
        m.split(": ", 1)[1] for m in caplog.messages if m.startswith("synthetic 1500 ivfpq: ")
    ]
    assert stages[:2] == ["train", "add"] and stages[2].startswith("search"), stages


def test_synthetic_shards_are_deterministic_unit_vectors() -> None:
    from colbert_core.study.sizes import SyntheticEmbeddings, SyntheticTemplate

    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    template = SyntheticTemplate(base.astype(np.float16), np.array([3, 5, 9]), None, "src")  # type: ignore[arg-type]
    a, b = SyntheticEmbeddings(template, 25, 10, seed=3), SyntheticEmbeddings(template, 25, 10, 3)
    assert [s.n_docs for s in a.shards] == [10, 10, 5]
    assert a.manifest_sha256 == b.manifest_sha256
    assert a.manifest_sha256 != SyntheticEmbeddings(template, 25, 10, seed=4).manifest_sha256
    for info in a.shards:
        x, y = a.read(info), b.read(info)
        np.testing.assert_array_equal(x.tokens, y.tokens)
        assert x.tokens.shape == (info.n_tokens, 16)
        assert set(np.diff(x.offsets).tolist()) <= {3, 5, 9}
        norms = np.linalg.norm(x.tokens.astype(np.float32), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    assert a.read(a.shards[2]).doc_index.tolist() == list(range(20, 25))
