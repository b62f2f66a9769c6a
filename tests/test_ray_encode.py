"""The Ray encode job under faults: worker counts, killed actors, killed drivers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import encode_argv, ray_worker_pids

from jobs.cli import main

SHARD = "20"


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _shas(root: Path) -> dict[str, str]:
    return {s["name"]: s["sha256"] for s in _manifest(root)["shards"]}


def _encode(corpus: Path, root: Path, ray_address: str, *extra: str) -> int:
    return main(
        encode_argv(
            corpus, root, shard_size=SHARD, doc_maxlen=64, ray_address=ray_address, extra=extra
        )
    )


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError("condition not reached")


def _recorded(root: Path) -> int:
    try:
        return len(_manifest(root)["shards"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


@pytest.fixture(scope="module")
def clean_run(scifact_subset: Path, ray_address: str, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "root"
    assert _encode(scifact_subset, root, ray_address, "--workers", "1") == 0
    return root


def test_one_and_two_workers_write_identical_shards(
    clean_run: Path, scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    root = tmp_path / "two"
    assert _encode(scifact_subset, root, ray_address, "--workers", "2") == 0
    assert _shas(root) == _shas(clean_run)
    assert len(_shas(root)) > 5
    for name in _shas(root):
        assert (root / "embeddings" / name).read_bytes() == (
            clean_run / "embeddings" / name
        ).read_bytes()
    workers = _manifest(root)["summary"]["workers"]
    assert len(workers) == 2
    assert sum(w["docs"] for w in workers.values()) == _manifest(root)["totals"]["docs"]


def test_killed_actor_is_replaced_and_output_matches(
    clean_run: Path,
    scifact_subset: Path,
    ray_address: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "killed-actor"
    before = set(ray_worker_pids(b"ray::EncoderWorker"))
    result: dict[str, int] = {}
    job = threading.Thread(
        target=lambda: result.setdefault(
            "rc", _encode(scifact_subset, root, ray_address, "--workers", "2")
        )
    )
    job.start()
    _wait_for(lambda: _recorded(root) >= 1 and set(ray_worker_pids(b"ray::EncoderWorker")) - before)
    victim = sorted(set(ray_worker_pids(b"ray::EncoderWorker")) - before)[0]
    os.kill(victim, signal.SIGKILL)
    job.join(timeout=300)
    assert result.get("rc") == 0
    assert _shas(root) == _shas(clean_run)
    assert "retrying on a new worker" in capsys.readouterr().err


def test_killed_driver_leaves_no_partial_shard_and_resumes(
    clean_run: Path, scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    root = tmp_path / "killed-driver"
    cmd = [
        sys.executable,
        "-m",
        "jobs.cli",
        *encode_argv(
            scifact_subset,
            root,
            shard_size=SHARD,
            doc_maxlen=64,
            ray_address=ray_address,
            workers=1,
        ),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_for(lambda: _recorded(root) >= 2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    manifest = _manifest(root)
    assert manifest["complete"] is False
    finished = {
        s["name"]: (root / "embeddings" / s["name"]).stat().st_mtime_ns for s in manifest["shards"]
    }
    for path in (root / "embeddings").iterdir():
        if path.suffix == ".parquet" and path.name not in finished:
            # Written after the last manifest update: complete, or it would not exist.
            assert path.stat().st_size > 0
    assert _encode(scifact_subset, root, ray_address, "--workers", "1") == 0
    assert _shas(root) == _shas(clean_run)
    for name, mtime in finished.items():
        assert (root / "embeddings" / name).stat().st_mtime_ns == mtime  # not rewritten
    assert not [p for p in (root / "embeddings").iterdir() if p.name.endswith(".tmp")]
    summary = _manifest(root)["summary"]
    assert summary["shards_skipped"] >= len(finished)


def test_shard_failing_every_retry_names_the_shard(
    scifact_subset: Path, ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "blocked"
    # A directory where shard 1 must go: every atomic rename of that shard fails.
    (root / "embeddings" / "shard-00001.parquet").mkdir(parents=True)
    assert _encode(scifact_subset, root, ray_address, "--workers", "1", "--max-retries", "1") == 2
    err = capsys.readouterr().err
    assert "shard 1 (shard-00001.parquet, documents 20..39) failed 2 times" in err
    assert _manifest(root)["complete"] is False
