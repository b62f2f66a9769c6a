"""The node-local cache (`colbert_core/storage/cache.py`): indexes and models read from S3
are downloaded once per node, verified, shared by the processes there, and a damaged
cached file is fetched again rather than read."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ensure_bucket, upload_folder

from colbert_core.encoder import CheckpointError, load_encoder, resolve_model_path
from colbert_core.storage import (
    CacheError,
    Expected,
    S3Storage,
    fetch_prefix,
    fetch_verified,
    locked,
    sha256_bytes,
)

BUCKET = "node-cache"


def _source(files: dict[str, bytes], delay: float = 0.0) -> tuple[Any, list[str]]:
    calls: list[str] = []

    def download(name: str, path: Path) -> None:
        calls.append(name)
        time.sleep(delay)
        path.write_bytes(files[name])

    return download, calls


def _expected(files: dict[str, bytes]) -> dict[str, Expected]:
    return {n: Expected(len(b), sha256_bytes(b)) for n, b in files.items()}


def test_fetch_downloads_once_and_refetches_a_damaged_file(tmp_path: Path) -> None:
    files = {"index.faiss": b"x" * 1000, "tokens.f16": b"y" * 500}
    read, calls = _source(files)
    folder = tmp_path / "entry"
    first = fetch_verified(folder, _expected(files), read, str)
    assert sorted(first.downloaded) == sorted(files) and first.reused == []
    second = fetch_verified(folder, _expected(files), read, str)
    assert second.downloaded == [] and sorted(second.reused) == sorted(files)
    (folder / "tokens.f16").write_bytes(b"y" * 499 + b"z")  # same size, other bytes
    third = fetch_verified(folder, _expected(files), read, str)
    assert third.downloaded == ["tokens.f16"]
    assert (folder / "tokens.f16").read_bytes() == files["tokens.f16"]
    assert len(calls) == 3


def test_a_source_that_differs_from_its_record_is_refused(tmp_path: Path) -> None:
    files = {"index.faiss": b"x" * 1000}
    expected = _expected(files)
    read, _ = _source({"index.faiss": b"x" * 999})  # truncated at the source
    with pytest.raises(CacheError, match=r"s3://b/idx/index.faiss: downloaded 999 bytes"):
        fetch_verified(tmp_path / "e", expected, read, lambda n: f"s3://b/idx/{n}")
    assert list((tmp_path / "e").iterdir()) == []  # nothing half-trusted is left


def test_processes_sharing_a_node_download_once(tmp_path: Path) -> None:
    """Two fetchers of one entry at once: the second waits on the lock, then reuses."""
    files = {f"f{i}": bytes([i]) * 100 for i in range(3)}
    read, calls = _source(files, delay=0.1)
    folder = tmp_path / "entry"
    reports: list[Any] = []

    def fetch() -> None:
        with locked(folder):
            reports.append(fetch_verified(folder, _expected(files), read, str))

    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 3  # each file once
    assert sorted(len(r.downloaded) for r in reports) == [0, 3]


@pytest.fixture(scope="module")
def model_on_s3(s3_server: Any) -> str:
    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    upload_folder(client, resolve_model_path("minilm"), BUCKET, "models/minilm")
    return f"s3://{BUCKET}/models/minilm/"


def test_a_model_from_s3_is_the_same_model_and_is_recorded_by_its_uri(
    model_on_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLBERT_BATCH_CACHE", str(tmp_path / "cache"))
    encoder = load_encoder(model_on_s3, device="cpu")
    assert encoder.fingerprint == load_encoder("minilm", device="cpu").fingerprint
    assert encoder.describe().model_path == model_on_s3  # other nodes can load it too
    storage = S3Storage(model_on_s3)
    again = fetch_prefix(storage)
    assert again.downloaded == [] and again.reused  # once per node
    weights = next(again.folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10])  # damaged in the cache
    repaired = fetch_prefix(storage)
    assert repaired.downloaded == [weights.name]
    assert load_encoder(model_on_s3, device="cpu").fingerprint == encoder.fingerprint


def test_an_empty_model_prefix_is_a_clear_error(
    model_on_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLBERT_BATCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match=r"s3://node-cache/models/nothing-here.*aws s3 sync"):
        load_encoder(f"s3://{BUCKET}/models/nothing-here/")


def test_an_s3_index_is_opened_under_its_cache_entry_lock(
    s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process fetching a rebuilt index at the same URI replaces the entry's files
    under the lock; opening them under it too means one load never pairs two versions."""
    import fcntl

    from test_index import make_clustered_root

    from colbert_core.index import IndexConfig, build_index, load_index, loader

    corpus = make_clustered_root(tmp_path / "root", shard_docs=(40, 30))
    spec = IndexConfig(nlist=16, pq_m=8, pq_nbits=6).resolve(n_tokens=corpus.n_tokens, dim=32)
    build_index(str(corpus.root), str(tmp_path / "idx"), spec)
    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    upload_folder(client, tmp_path / "idx", BUCKET, "indexes/locked")
    monkeypatch.setenv("COLBERT_BATCH_CACHE", str(tmp_path / "cache"))
    held: list[bool] = []
    open_folder = loader._open_folder

    def probing(folder: Path, *args: Any) -> Any:
        with (folder.parent / f"{folder.name}.lock").open("a") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(True)  # the loader holds it
            else:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                held.append(False)
        return open_folder(folder, *args)

    monkeypatch.setattr(loader, "_open_folder", probing)
    loaded = load_index(f"s3://{BUCKET}/indexes/locked")
    assert loaded.meta.n_tokens == corpus.n_tokens and held == [True]
