"""`--out s3://bucket/prefix` against a real S3 server (SeaweedFS on 127.0.0.1).

The endpoint and credentials reach the job (driver and Ray actors) only through the
standard AWS variables that the `_s3_environment` fixture sets; the tests read the bucket
back with their own boto3 client.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import wait_parked

from colbert_core.embeddings import Embeddings
from colbert_core.index import read_index_mapping
from colbert_core.storage import S3Storage, StorageError, open_storage
from jobs.cli import main

BUCKET = "colbert-s3-tests"
#: The same job everywhere: local reference, S3 runs, resumes.
JOB = ("--shard-size", "20", "--doc-maxlen", "64", "--workers", "1")


def _encode(corpus: Path, out: str, ray_address: str, *extra: str) -> int:
    argv = ["encode", "--corpus", str(corpus), "--out", out, "--ray-address", ray_address]
    return main([*argv, *JOB, *extra])


def _search(embeddings: str, queries: Path, out: Path) -> int:
    argv = ["search", "--exact", "--embeddings", embeddings, "--queries", str(queries)]
    return main([*argv, "--out", str(out)])


def _captured(fn: Any) -> tuple[Any, str]:
    """Run ``fn()`` with stdout and stderr captured; returns its result and the text."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = fn()
    return result, out.getvalue() + err.getvalue()


def _get(client: Any, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _manifest(client: Any, prefix: str) -> dict:
    return json.loads(_get(client, f"{prefix}/manifest.json"))


def _objects(client: Any, prefix: str) -> dict[str, tuple[str, Any, int]]:
    """key under ``prefix/`` -> (ETag, LastModified, size)."""
    resp = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    assert not resp.get("IsTruncated")
    return {
        o["Key"][len(prefix) + 1 :]: (o["ETag"], o["LastModified"], o["Size"])
        for o in resp.get("Contents", [])
    }


def _local_shards(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "embeddings").glob("*.parquet"))}


def _s3_shards(client: Any, prefix: str) -> dict[str, bytes]:
    return {
        key.split("/")[-1]: _get(client, f"{prefix}/{key}")
        for key in _objects(client, prefix)
        if key.startswith("embeddings/")
    }


def _ray_logs() -> list[Path]:
    """Every log file of this session's Ray cluster (actor output goes there, not here)."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return [p for p in (session / "logs").rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def local_run(scifact_subset: Path, ray_address: str, tmp_path_factory) -> Path:
    """The same job into a local folder: the reference for every S3 output."""
    root = tmp_path_factory.mktemp("s3-local") / "root"
    assert _encode(scifact_subset, str(root), ray_address) == 0
    return root


@pytest.fixture(scope="module")
def s3(s3_server: Any) -> Any:
    """A test-side client; the bucket exists."""
    client = s3_server.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def s3_run(s3: Any, scifact_subset: Path, ray_address: str) -> tuple[str, str]:
    """``s3://BUCKET/run1`` encoded by the real CLI; returns its prefix and the job output."""
    rc, output = _captured(lambda: _encode(scifact_subset, f"s3://{BUCKET}/run1", ray_address))
    assert rc == 0, output
    return "run1", output


def test_encode_into_bucket_matches_local_run(
    s3_run: tuple[str, str], s3: Any, local_run: Path
) -> None:
    prefix, _ = s3_run
    manifest = _manifest(s3, prefix)
    assert manifest["complete"] is True
    objects = _objects(s3, prefix)
    shards = manifest["shards"]
    assert len(shards) > 5
    assert set(objects) == {"manifest.json"} | {f"embeddings/{s['name']}" for s in shards}
    for info in shards:
        data = _get(s3, f"{prefix}/embeddings/{info['name']}")
        assert objects[f"embeddings/{info['name']}"][2] == info["bytes"] == len(data)
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
    assert _s3_shards(s3, prefix) == _local_shards(local_run)
    local_manifest = json.loads((local_run / "manifest.json").read_text())
    assert manifest["shards"] == local_manifest["shards"]
    assert manifest["totals"] == local_manifest["totals"]

    store = Embeddings(f"s3://{BUCKET}/{prefix}")
    local = Embeddings(local_run)
    assert store.root == f"s3://{BUCKET}/{prefix}"
    assert (store.n_docs, store.n_tokens, store.dim) == (local.n_docs, local.n_tokens, local.dim)
    docs = 0
    for remote_shard, local_shard in zip(store, local, strict=True):
        assert remote_shard.doc_ids == local_shard.doc_ids
        np.testing.assert_array_equal(remote_shard.doc_index, local_shard.doc_index)
        np.testing.assert_array_equal(remote_shard.tokens, local_shard.tokens)
        docs += remote_shard.n_docs
    assert docs == store.n_docs


def test_rerun_rewrites_nothing(
    s3_run: tuple[str, str],
    s3: Any,
    scifact_subset: Path,
    ray_address: str,
) -> None:
    prefix, _ = s3_run
    before = {k: v for k, v in _objects(s3, prefix).items() if k.startswith("embeddings/")}
    assert _encode(scifact_subset, f"s3://{BUCKET}/{prefix}", ray_address) == 0
    after = {k: v for k, v in _objects(s3, prefix).items() if k.startswith("embeddings/")}
    assert after == before  # same ETag, same LastModified: not one PUT
    manifest = _manifest(s3, prefix)
    assert manifest["complete"] is True
    assert manifest["summary"]["shards_skipped"] == len(manifest["shards"])
    assert manifest["summary"]["shards_written"] == 0


def test_lost_shard_is_rewritten_with_identical_bytes(
    s3_run: tuple[str, str], s3: Any, local_run: Path, scifact_subset: Path, ray_address: str
) -> None:
    src, _ = s3_run
    prefix = "run-lost"
    for key in _objects(s3, src):
        s3.copy_object(
            Bucket=BUCKET,
            Key=f"{prefix}/{key}",
            CopySource={"Bucket": BUCKET, "Key": f"{src}/{key}"},
        )
    manifest = _manifest(s3, prefix)
    manifest["complete"] = False
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/manifest.json", Body=json.dumps(manifest).encode())
    lost = "embeddings/shard-00003.parquet"
    s3.delete_object(Bucket=BUCKET, Key=f"{prefix}/{lost}")
    before = _objects(s3, prefix)
    assert lost not in before
    time.sleep(1.1)  # LastModified has a one-second resolution

    assert _encode(scifact_subset, f"s3://{BUCKET}/{prefix}", ray_address) == 0
    after = _objects(s3, prefix)
    assert set(after) == set(before) | {lost}
    for key, meta in before.items():
        if key.startswith("embeddings/"):
            assert after[key] == meta, key  # kept, not rewritten
    assert _get(s3, f"{prefix}/{lost}") == (local_run / lost).read_bytes()
    manifest = _manifest(s3, prefix)
    assert manifest["complete"] is True
    assert manifest["summary"]["shards_written"] == 1
    assert manifest["summary"]["shards_skipped"] == len(manifest["shards"]) - 1
    assert _s3_shards(s3, prefix) == _local_shards(local_run)


def test_job_survives_a_restart_of_the_s3_server(
    s3_server: Any,
    s3: Any,
    local_run: Path,
    scifact_subset: Path,
    ray_address: str,
    hooks: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The server goes down while an actor is about to store a shard: the PUT is retried
    until the server is back, and the output equals the local run. Deterministic: the
    actor parks before its second shard until the server is down."""
    prefix = "run-restart"
    result: dict[str, int] = {}
    (hooks / "park-encode-shard").write_text("2")
    job = threading.Thread(
        target=lambda: result.setdefault(
            "rc", _encode(scifact_subset, f"s3://{BUCKET}/{prefix}", ray_address)
        )
    )
    job.start()
    try:
        wait_parked(hooks, "encode-shard")
        s3_server.kill()
        (hooks / "park-encode-shard").unlink()  # the actor encodes, then PUTs into the outage
        time.sleep(3.0)
    finally:
        (hooks / "park-encode-shard").unlink(missing_ok=True)
        if s3_server.proc is None:
            s3_server.start(wait=False)
        job.join(timeout=300)
    assert not job.is_alive()
    err = capsys.readouterr().err
    assert result.get("rc") == 0, err
    manifest = _manifest(s3, prefix)
    assert manifest["complete"] is True
    assert _s3_shards(s3, prefix) == _local_shards(local_run)
    assert [s["sha256"] for s in manifest["shards"]] == [
        s["sha256"] for s in json.loads((local_run / "manifest.json").read_text())["shards"]
    ]
    assert s3_server.secret_key not in err
    # The outage was ridden out by retries, not dodged: the actor storing its shard (or
    # the driver recording one) logged a retry of an object in ROOT.
    retried = f"s3://{BUCKET}/{prefix}/"
    logs = [err] + [p.read_text(errors="replace") for p in _ray_logs() if p.suffix == ".err"]
    assert any(
        retried in line and "retrying" in line for text in logs for line in text.splitlines()
    )


def test_search_reads_from_s3_like_local(
    s3_run: tuple[str, str], local_run: Path, scifact_subset: Path, tmp_path: Path
) -> None:
    prefix, _ = s3_run
    for name, embeddings in (("s3", f"s3://{BUCKET}/{prefix}"), ("local", str(local_run))):
        assert _search(embeddings, scifact_subset, tmp_path / name) == 0
    remote = (tmp_path / "s3" / "run.trec").read_text()
    assert remote.strip()
    assert remote == (tmp_path / "local" / "run.trec").read_text()


def test_secrets_appear_nowhere(
    s3_server: Any,
    s3_run: tuple[str, str],
    s3: Any,
    scifact_subset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = s3_server.secret_key
    prefix, job_output = s3_run
    assert secret not in job_output
    assert secret.encode() not in _get(s3, f"{prefix}/manifest.json")
    assert "s3://" in job_output  # the output names where it wrote, without credentials

    # A bucket that does not exist: a clear error naming the s3:// object, and no secret.
    capsys.readouterr()
    assert _search("s3://colbert-no-such-bucket/run", scifact_subset, tmp_path / "none") == 2
    out, err = capsys.readouterr()
    assert "s3://colbert-no-such-bucket/run/manifest.json" in err
    assert "NoSuchBucket" in err
    assert secret not in out + err

    # Wrong credentials: refused at once (not retried for a minute), named, no secrets.
    wrong = "wrong-" + secret[::-1]
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    start = time.monotonic()
    assert _search(f"s3://{BUCKET}/{prefix}", scifact_subset, tmp_path / "run") == 2
    assert time.monotonic() - start < 30
    out, err = capsys.readouterr()
    assert f"s3://{BUCKET}/{prefix}/manifest.json" in err
    assert "SignatureDoesNotMatch" in err or "403" in err
    assert secret not in out + err and wrong not in out + err

    # Nor in any log Ray wrote for this session (raylet, GCS, runtime env agent, workers).
    logs = _ray_logs()
    assert logs
    for path in logs:
        assert secret.encode() not in path.read_bytes(), path


def test_storage_primitives_on_a_real_bucket(s3: Any) -> None:
    storage = open_storage(f"s3://{BUCKET}/prims/")
    assert isinstance(storage, S3Storage)
    assert storage.uri == f"s3://{BUCKET}/prims"
    storage.put("embeddings/shard-00000.parquet", b"a")
    storage.put("embeddings2/shard-00000.parquet", b"bb")  # a sibling, not inside
    storage.put("manifest.json", b"{}")
    assert storage.list("embeddings") == ["embeddings/shard-00000.parquet"]
    assert storage.get("embeddings2/shard-00000.parquet") == b"bb"
    assert storage.size("manifest.json") == 2
    assert storage.size("missing.json") is None
    with pytest.raises(FileNotFoundError, match=re.escape(f"s3://{BUCKET}/prims/missing.json")):
        storage.get("missing.json")
    storage.delete("embeddings/shard-00000.parquet")
    storage.delete("embeddings/shard-00000.parquet")  # already gone: fine
    assert storage.list("embeddings") == []
    # A bucket that does not exist: an OSError naming the object (what the CLI reports),
    # at once: it is not retried.
    missing = open_storage("s3://colbert-no-such-bucket/run")
    with pytest.raises(StorageError) as info:
        missing.put("manifest.json", b"{}")
    assert str(info.value).startswith("PUT s3://colbert-no-such-bucket/run/manifest.json failed: ")
    assert "NoSuchBucket" in str(info.value)


def test_unreachable_endpoint_fails_fast_naming_it(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint that never answered is a wrong AWS_ENDPOINT_URL or a server that is not
    running: seconds, not the minute and a half a restart mid-job gets."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    storage = S3Storage(f"s3://{BUCKET}/nowhere")
    assert storage.retry_window_s >= 60  # the restart window stays long
    start = time.monotonic()
    with pytest.raises(StorageError) as info:
        storage.put("manifest.json", b"{}")
    assert time.monotonic() - start < 15
    message = str(info.value)
    assert message.startswith(f"PUT s3://{BUCKET}/nowhere/manifest.json failed ")
    assert "EndpointConnectionError" in message
    assert f"http://127.0.0.1:{port}" in message and "AWS_ENDPOINT_URL" in message
    assert s3_server.secret_key not in message


def test_unreachable_endpoint_fails_the_job_fast(
    s3_server: Any,
    scifact_subset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    assert _search(f"s3://{BUCKET}/run1", scifact_subset, tmp_path / "run") == 2
    assert time.monotonic() - start < 20
    err = capsys.readouterr().err
    assert "never answered" in err and f"127.0.0.1:{port}" in err
    assert s3_server.secret_key not in err


def test_pipeline_with_every_stage_on_s3(
    s3: Any, scifact_subset: Path, ray_address: str, tmp_path: Path, capsys: Any
) -> None:
    """`out: s3://...`: embeddings, index and run folder all go to the bucket; a rerun
    finds each stage complete there."""
    cfg = tmp_path / "s3.yaml"
    cfg.write_text(
        f"dataset: {scifact_subset}\nout: s3://{BUCKET}/pipe\n"
        "encode: {shard_size: 64, doc_maxlen: 64, workers: 1}\n"
        "index: {type: ivfpq, nlist: 32}\nsearch: {k: 20, workers: 1}\n",
        encoding="utf-8",
    )
    assert main(["pipeline", str(cfg), "--ray-address", ray_address]) == 0
    keys = set(_objects(s3, "pipe"))
    assert {
        "embeddings/manifest.json",
        "index-ivfpq/meta.json",
        "index-ivfpq/index.faiss",
        "index-ivfpq/tokens.f16",
        "run-ivfpq/run.trec",
        "run-ivfpq/metrics.json",
        "run-ivfpq/per_query.parquet",
    } <= keys
    metrics = json.loads(_get(s3, "pipe/run-ivfpq/metrics.json"))
    assert metrics["queries"] == 30 and metrics["measures"]["nDCG@10"] > 0.5
    assert not list(tmp_path.glob("**/run.trec"))  # nothing landed on local disk
    out = capsys.readouterr().out
    assert f"s3://{BUCKET}/pipe/run-ivfpq/metrics.json" in out
    assert main(["pipeline", str(cfg), "--ray-address", ray_address]) == 0
    assert capsys.readouterr().err.count("is complete, skipping") == 3
    # The search driver's id check reads the mapping files alone, not the whole index.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COLBERT_BATCH_CACHE", str(tmp_path / "cache"))
        mapping = read_index_mapping(f"s3://{BUCKET}/pipe/index-ivfpq")
    assert len(mapping.doc_ids) == len(set(mapping.doc_ids)) > 0
    cached = {p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert {"doc_offsets.npy", "doc_ids.parquet"} <= cached
    assert not cached & {"index.faiss", "tokens.f16", "meta.json"}, cached
