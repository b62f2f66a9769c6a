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
