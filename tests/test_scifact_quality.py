"""Full SciFact through the CLI: the reference quality figure for plain encoders.

Exact late interaction over all-MiniLM-L6-v2 token vectors (title + " " + text,
doc_maxlen 256, plain query tokens) gives nDCG@10 = 0.707 on SciFact test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.cli import main


@pytest.mark.slow
def test_scifact_minilm_exact_ndcg(datasets_dir: Path, tmp_path: Path) -> None:
    scifact = str(datasets_dir / "scifact")
    root = tmp_path / "emb"
    assert main(["encode", "--corpus", scifact, "--model", "minilm", "--out", str(root)]) == 0
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["totals"]["docs"] == 5183
    assert (
        main(
            [
                "search",
                "--exact",
                "--embeddings",
                str(root),
                "--queries",
                scifact,
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["queries"] == 300
    assert metrics["measures"]["nDCG@10"] == pytest.approx(0.707, abs=0.01)


#: The fixed CI subset: every document judged relevant for a SciFact test query, then the
#: corpus in order up to this many documents; all 300 test queries.
SUBSET_DOCS = 1000


@pytest.fixture(scope="module")
def scifact_1000(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = datasets_dir / "scifact"
    out = tmp_path_factory.mktemp("scifact-1000")
    qrels = (src / "qrels" / "test.tsv").read_text(encoding="utf-8")
    relevant = {line.split("\t")[1] for line in qrels.splitlines()[1:] if line.strip()}
    lines = (src / "corpus.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    ids = [json.loads(line)["_id"] for line in lines]
    n_relevant = sum(i in relevant for i in ids)
    fill = {i for i in ids if i not in relevant}
    fill = set([i for i in ids if i in fill][: SUBSET_DOCS - n_relevant])
    kept = [line for line, i in zip(lines, ids, strict=True) if i in relevant or i in fill]
    assert len(kept) == SUBSET_DOCS
    (out / "corpus.jsonl").write_text("".join(kept), encoding="utf-8")
    (out / "queries.jsonl").write_text((src / "queries.jsonl").read_text(encoding="utf-8"))
    (out / "qrels").mkdir()
    (out / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return out


def test_scifact_subset_quality_is_pinned(
    scifact_1000: Path, ray_address: str, tmp_path: Path
) -> None:
    """A quality regression fails CI: exact and IVF-PQ (default settings) nDCG@10 on a fixed
    1,000-document SciFact subset with all 300 test queries (doc_maxlen 128 to keep it
    quick), pinned to the values measured when this test was written (tolerance 0.002:
    CPUs with other vector units move the fourth decimal)."""
    emb, idx = tmp_path / "emb", tmp_path / "idx"
    ray = ["--ray-address", ray_address]
    encode = ["encode", "--corpus", str(scifact_1000), "--out", str(emb), *ray]
    assert main([*encode, "--doc-maxlen", "128", "--shard-size", "250"]) == 0
    assert main(["index", "--embeddings", str(emb), "--out", str(idx)]) == 0
    results = {}
    for name, where in (
        ("exact", ["--exact", "--embeddings", str(emb)]),
        ("ivfpq", ["--index", str(idx), *ray]),
    ):
        argv = ["search", *where, "--queries", str(scifact_1000), "--out", str(tmp_path / name)]
        assert main(argv) == 0
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert results["exact"]["queries"] == results["ivfpq"]["queries"] == 300
    assert results["exact"]["measures"]["nDCG@10"] == pytest.approx(EXACT_NDCG, abs=0.002)
    assert results["ivfpq"]["measures"]["nDCG@10"] == pytest.approx(IVFPQ_NDCG, abs=0.002)
    assert results["ivfpq"]["candidate_recall"] == pytest.approx(IVFPQ_CANDIDATE_RECALL, abs=0.005)


EXACT_NDCG = 0.8049
IVFPQ_NDCG = 0.8061
IVFPQ_CANDIDATE_RECALL = 0.99
