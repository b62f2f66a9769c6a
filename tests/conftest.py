"""Shared fixtures: real datasets from ../shared/datasets and small real subsets of them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path | None:
    env = os.environ.get("COLBERT_BATCH_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "datasets"]:
        if (candidate / "scifact" / "corpus.jsonl").is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    found = shared_datasets()
    if found is None:
        pytest.skip("real datasets not found (set COLBERT_BATCH_DATA or put ../shared/datasets)")
    return found


@pytest.fixture(scope="session")
def scifact_subset(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real BEIR folder: the first 30 SciFact test queries, their relevant
    documents and the first 150 corpus documents, in the original corpus order."""
    src = datasets_dir / "scifact"
    out = tmp_path_factory.mktemp("scifact-subset")
    qrel_lines = (src / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = qrel_lines[0], [r.split("\t") for r in qrel_lines[1:] if r.strip()]
    queries: list[str] = []
    for qid, _, _ in rows:
        if qid not in queries:
            queries.append(qid)
    keep_q = set(queries[:30])
    kept_rows = [r for r in rows if r[0] in keep_q]
    relevant = {r[1] for r in kept_rows}
    corpus_lines = []
    with (src / "corpus.jsonl").open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < 150 or json.loads(line)["_id"] in relevant:
                corpus_lines.append(line)
    (out / "corpus.jsonl").write_text("".join(corpus_lines), encoding="utf-8")
    (out / "queries.jsonl").write_text(
        (src / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (out / "qrels").mkdir()
    (out / "qrels" / "test.tsv").write_text(
        "\n".join([header, *("\t".join(r) for r in kept_rows)]) + "\n", encoding="utf-8"
    )
    return out


@pytest.fixture(scope="session")
def ray_address() -> str:
    """One local Ray cluster for the whole session (dashboard off).

    Four logical CPUs on small machines: encoder actors take fractional CPUs, and Ray's own
    tasks must never be starved of a slot.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    return ray.get_runtime_context().gcs_address
