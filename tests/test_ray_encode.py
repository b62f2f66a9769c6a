"""The Ray encode job under faults: worker counts, killed actors, killed drivers."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import encode_argv, wait_parked

from colbert_core.embeddings import read_shard
from jobs.cli import main
from jobs.cluster.hooks import ENV as HOOKS_ENV

SHARD = "20"


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shas(root: Path) -> dict[str, str]:
    return {s["name"]: s["sha256"] for s in _manifest(root)["shards"]}


def _encode(corpus: Path, root: Path, ray_address: str, *extra: str) -> int:
    return main(
        encode_argv(
            corpus, root, shard_size=SHARD, doc_maxlen=64, ray_address=ray_address, extra=extra
        )
    )


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
    hooks: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An actor killed while it holds a shard: the shard is retried on a new actor and the
    output is byte-identical. The kill is deterministic: the actor parks at its second
    shard (after storing one) until the test has killed it."""
    root = tmp_path / "killed-actor"
    (hooks / "park-encode-shard").write_text("2")
    result: dict[str, int] = {}
    job = threading.Thread(
        target=lambda: result.setdefault(
            "rc", _encode(scifact_subset, root, ray_address, "--workers", "2")
        )
    )
    job.start()
    try:
        os.kill(wait_parked(hooks, "encode-shard"), signal.SIGKILL)
    finally:
        (hooks / "park-encode-shard").unlink()
        job.join(timeout=300)
    assert result.get("rc") == 0
    assert _shas(root) == _shas(clean_run)
    summary = _manifest(root)["summary"]
    assert summary["replaced_workers"] == 1
    assert summary["retries"] >= 1  # the parked shard (and one queued behind it, if any)
    assert "retrying on a new worker" in capsys.readouterr().err


def test_killed_driver_leaves_no_partial_shard_and_resumes(
    clean_run: Path, scifact_subset: Path, ray_address: str, hooks: Path, tmp_path: Path
) -> None:
    """The driver is killed right after it recorded its second shard, while the actor is
    parked before its third: every shard file on disk is then recorded with its sha256,
    and the rerun keeps exactly those and writes the rest identically."""
    root = tmp_path / "killed-driver"
    argv = encode_argv(
        scifact_subset, root, shard_size=SHARD, doc_maxlen=64, ray_address=ray_address, workers=1
    )
    (hooks / "park-encode-recorded").write_text("2")
    (hooks / "park-encode-shard").write_text("3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ | {HOOKS_ENV: str(hooks)},
    )
    try:
        wait_parked(hooks, "encode-recorded")
        wait_parked(hooks, "encode-shard")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for gate in hooks.glob("park-*"):
            gate.unlink()
    manifest = _manifest(root)
    assert manifest["complete"] is False
    recorded = {s["name"]: s["sha256"] for s in manifest["shards"]}
    assert len(recorded) == 2
    on_disk = {p.name: _sha(p) for p in (root / "embeddings").glob("*.parquet")}
    assert on_disk == recorded  # nothing unrecorded, nothing partial
    mtimes = {name: (root / "embeddings" / name).stat().st_mtime_ns for name in recorded}
    assert _encode(scifact_subset, root, ray_address, "--workers", "1") == 0
    assert _shas(root) == _shas(clean_run)
    for name, mtime in mtimes.items():
        assert (root / "embeddings" / name).stat().st_mtime_ns == mtime  # not rewritten
    assert not [p for p in (root / "embeddings").iterdir() if p.name.endswith(".tmp")]
    summary = _manifest(root)["summary"]
    assert summary["shards_skipped"] == 2
    assert summary["shards_written"] == len(_shas(clean_run)) - 2


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


def test_progress_that_never_answers_does_not_fail_the_job(
    ray_address: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress is reporting: a tracker that does not answer (a stalled machine) is logged
    and the job carries on, its last poll included (it used to raise GetTimeoutError after
    every shard was written, and the CLI exited 2)."""
    from colbert_core.embeddings import EncodeConfig, iter_shards, open_job_corpus
    from jobs.cluster.encode_actors import run_pool
    from jobs.cluster.runtime import Placement

    class DeafTracker:
        def add(self, docs: int, tokens: int) -> None:
            pass

        def get(self) -> tuple[int, int]:
            time.sleep(60)
            return 0, 0

    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": "x y"}) + "\n" for i in range(6)))
    config = EncodeConfig(corpus=str(corpus), out=str(tmp_path / "root"), shard_size=3)
    docs, _ = open_job_corpus(config)
    done: list[int] = []
    with caplog.at_level("WARNING", logger="jobs.cluster.encode_actors"):
        run_pool(
            config,
            Placement(workers=1, num_cpus=0.5, num_gpus=0, torch_threads=1, device="cpu"),
            iter_shards(docs, 3),
            max_retries=0,
            on_done=lambda info: done.append(info.shard_id),
            on_progress=lambda docs, tokens: None,
            tracker_cls=DeafTracker,
            progress_timeout_s=0.2,
        )
    assert sorted(done) == [0, 1]
    assert "progress not updated" in caplog.text


def test_pool_holds_at_most_depth_items_per_actor(ray_address: str) -> None:
    """The driver pulls a new item (a shard of text) only when an actor has room: at most
    ``depth`` (2) per actor are ever out of the corpus stream and not yet done."""
    import ray

    from jobs.cluster.actor_pool import run_items

    @ray.remote(num_cpus=0.1)
    class Slow:
        def start(self) -> None:
            return None

        def work(self, item: int) -> int:
            time.sleep(0.05)
            return item

    counts = {"pulled": 0, "done": 0, "ahead": 0}

    def items():
        for i in range(24):
            counts["pulled"] += 1
            counts["ahead"] = max(counts["ahead"], counts["pulled"] - counts["done"])
            yield i

    def on_result(item: int, result: int) -> None:
        counts["done"] += 1

    stats = run_items(Slow.remote, 2, "work", items(), describe=str, on_result=on_result)
    assert counts["done"] == 24 and stats.retries == 0
    assert counts["ahead"] == 2 * 2


def test_an_actor_that_cannot_be_placed_holds_no_items(
    ray_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One of two actors asks for more CPUs than any node has (as after a node loss): the
    job neither waits for it nor queues items on it; the placed actor does every item, and
    with no placeable actor at all the job fails after ``start_timeout_s``, saying why."""
    import ray

    from jobs.cluster import actor_pool
    from jobs.cluster.actor_pool import WorkerStartError, run_items

    monkeypatch.setattr(actor_pool, "START_GRACE_S", 1.0)

    class Echo:
        def start(self) -> str:
            return "ok"

        def work(self, item: int) -> int:
            return item

    placeable = ray.remote(num_cpus=0.1)(Echo)
    too_big = ray.remote(num_cpus=64)(Echo)
    made = iter([placeable, too_big])
    done: list[int] = []
    run_items(
        lambda: next(made).remote(),
        2,
        "work",
        range(10),
        describe=str,
        on_result=lambda item, result: done.append(result),
        on_started=lambda description: None,
    )
    assert sorted(done) == list(range(10))
    with pytest.raises(WorkerStartError, match="no echo worker has been running for 2 s"):
        run_items(
            too_big.remote,
            1,
            "work",
            range(3),
            describe=str,
            on_result=lambda item, result: None,
            on_started=lambda description: None,
            what="echo",
            start_timeout_s=2.0,
        )


def test_batch_size_changes_batching_only(
    clean_run: Path, scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    root = tmp_path / "batch7"
    assert _encode(scifact_subset, root, ray_address, "--workers", "1", "--batch-size", "7") == 0
    assert _manifest(root)["config"]["batch_size"] == 7
    for name in _shas(clean_run):
        a = read_shard(root / "embeddings" / name)
        b = read_shard(clean_run / "embeddings" / name)
        assert a.doc_ids == b.doc_ids and np.array_equal(a.offsets, b.offsets)
        np.testing.assert_allclose(a.tokens.astype(np.float32), b.tokens, atol=2e-3)


def test_shards_are_identical_for_any_worker_count_at_two_threads(
    scifact_subset: Path, ray_address: str, tmp_path: Path
) -> None:
    shas = []
    for workers in ("1", "2"):
        root = tmp_path / f"w{workers}"
        argv = ["--workers", workers, "--threads-per-worker", "2"]
        assert _encode(scifact_subset, root, ray_address, *argv) == 0
        shas.append(_shas(root))
    assert shas[0] == shas[1] and len(shas[0]) > 5
