"""`colbert-batch index` through the real CLI, over a real (Ray) encode of SciFact."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import encode_argv

from colbert_core.embeddings import Embeddings, Manifest
from colbert_core.embeddings.shards import build_shard, write_shard
from colbert_core.index import INDEX_FILE, META, load_index
from colbert_core.tokenstore import DOC_IDS, OFFSETS, TOKENS, token_to_doc
from jobs.cli import main

FILES = sorted([META, INDEX_FILE, TOKENS, OFFSETS, DOC_IDS])


def _index(embeddings: Path, out: Path, *extra: str) -> int:
    return main(["index", "--embeddings", str(embeddings), "--out", str(out), *extra])


def _summary(stdout: str) -> dict:
    """The JSON summary `index` prints before its last line."""
    body = stdout[stdout.index("{") : stdout.rindex("}") + 1]
    return json.loads(body)


def _search(folder: Path, queries: np.ndarray, k: int = 20, nprobe: int = 8):
    loaded = load_index(folder)
    ivf = faiss.try_extract_index_ivf(loaded.index)
    if ivf is not None:
        ivf.nprobe = nprobe
    return loaded.index.search(queries, k)


@pytest.fixture(scope="module")
def encoded(scifact_subset: Path, ray_address: str, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("index-cli") / "root"
    # One worker, one model load: the encode job itself is tested in test_ray_encode.py.
    rc = main(
        encode_argv(
            scifact_subset, root, shard_size=50, doc_maxlen=64, ray_address=ray_address, workers=1
        )
    )
    assert rc == 0
    return root


@pytest.fixture(scope="module")
def ivfpq_index(encoded: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ivfpq") / "idx"
    assert _index(encoded, out, "--type", "ivfpq", "--nlist", "32") == 0
    return out


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    """Two shards of random unit vectors (dim 16): enough to reach the spec checks."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tiny"
    infos, first = [], 0
    for shard_id, lengths in enumerate([[5, 0, 7], [9, 3]]):
        vectors = [rng.standard_normal((n, 16)).astype(np.float32) for n in lengths]
        vectors = [v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6) for v in vectors]
        ids = [f"t{first + i}" for i in range(len(lengths))]
        data = build_shard(ids, range(first, first + len(lengths)), vectors, 16, "tiny-fp")
        infos.append(write_shard(root, shard_id, first, data, len(lengths), sum(lengths)))
        first += len(lengths)
    Manifest.for_shards(infos, dim=16, fingerprint="tiny-fp").save(str(root))
    return root


def test_ivfpq_over_a_real_encode(encoded: Path, ivfpq_index: Path) -> None:
    out = ivfpq_index
    assert sorted(p.name for p in out.iterdir()) == FILES
    store = Embeddings(encoded)
    meta = json.loads((out / META).read_text())
    assert (meta["type"], meta["factory"]) == ("ivfpq", "IVF32,PQ24x8")  # 384 / 16 = 24
    assert (meta["dim"], meta["n_tokens"], meta["n_docs"]) == (
        384,
        store.n_tokens,
        store.n_docs,
    )
    assert meta["model_fingerprint"] == store.encoder.fingerprint
    manifest_sha = hashlib.sha256((encoded / "manifest.json").read_bytes()).hexdigest()
    assert meta["source"]["manifest_sha256"] == manifest_sha
    assert meta["bytes_per_token"]["token_store"] == 768

    loaded = load_index(out)
    assert loaded.encoder == store.encoder
    assert loaded.index.ntotal == store.n_tokens
    shards = list(store)
    assert loaded.doc_ids == [d for s in shards for d in s.doc_ids]
    tokens = np.concatenate([s.tokens for s in shards])
    assert np.array_equal(np.asarray(loaded.store).view(np.uint16), tokens.view(np.uint16))

    # A real token vector finds tokens of its own document.
    faiss.extract_index_ivf(loaded.index).nprobe = 32
    picks = np.random.default_rng(0).choice(store.n_tokens, 30, replace=False)
    _, hits = loaded.index.search(np.asarray(loaded.store[picks], dtype=np.float32), 10)
    own_doc = token_to_doc(loaded.doc_offsets, picks)
    found = token_to_doc(loaded.doc_offsets, hits)
    assert np.mean([d in row for d, row in zip(own_doc, found, strict=True)]) > 0.9


@pytest.fixture(scope="module")
def ivfflat_index(encoded: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ivfflat") / "idx"
    assert _index(encoded, out, "--factory", "IVF32,Flat") == 0
    return out


def test_workers_with_ray_match_one_process(
    encoded: Path,
    ivfflat_index: Path,
    ray_address: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "par"
    args = ["--factory", "IVF32,Flat", "--workers", "2", "--ray-address", ray_address]
    assert _index(encoded, out, *args) == 0
    assert _summary(capsys.readouterr().out)["factory"] == "IVF32,Flat"
    assert json.loads((out / META).read_text())["parallel_groups"] == 2
    assert json.loads((ivfflat_index / META).read_text())["parallel_groups"] == 1
    queries = np.random.default_rng(1).standard_normal((100, 384)).astype(np.float32)
    d1, i1 = _search(ivfflat_index, queries)
    d2, i2 = _search(out, queries)
    assert np.array_equal(i1, i2) and np.array_equal(d1, d2)
    for name in (TOKENS, OFFSETS, DOC_IDS):
        assert (out / name).read_bytes() == (ivfflat_index / name).read_bytes()


@pytest.mark.parametrize(
    ("args", "factory", "cls"),
    [
        (
            ["--type", "hnsw", "--hnsw-m", "8", "--ef-construction", "20"],
            "HNSW8,Flat",
            faiss.IndexHNSWFlat,
        ),
        (["--factory", "IVF32,Flat"], "IVF32,Flat", faiss.IndexIVFFlat),
        (["--type", "flat"], "Flat", faiss.IndexFlatIP),
    ],
)
def test_other_types(
    encoded: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    factory: str,
    cls: type,
) -> None:
    out = tmp_path / "idx"
    assert _index(encoded, out, *args) == 0
    captured = capsys.readouterr()
    summary = _summary(captured.out)
    assert summary["factory"] == factory
    assert f"index written to {out}" in captured.out
    assert sorted(p.name for p in out.iterdir()) == FILES
    loaded = load_index(out)
    assert isinstance(faiss.downcast_index(loaded.index), cls)
    assert loaded.index.ntotal == summary["n_tokens"] == Embeddings(encoded).n_tokens


def test_rebuild_replaces_existing_index(
    encoded: Path, ivfpq_index: Path, ivfflat_index: Path, tmp_path: Path
) -> None:
    out = tmp_path / "idx"
    shutil.copytree(ivfflat_index, out)
    first = {name: (out / name).read_bytes() for name in FILES}
    assert _index(encoded, out, "--type", "flat") == 0
    assert sorted(p.name for p in out.iterdir()) == FILES  # no leftovers, no temp files
    loaded = load_index(out)
    assert (loaded.meta.type, loaded.meta.factory) == ("flat", "Flat")
    assert isinstance(faiss.downcast_index(loaded.index), faiss.IndexFlatIP)
    assert (out / INDEX_FILE).read_bytes() != first[INDEX_FILE]
    assert (out / TOKENS).read_bytes() == first[TOKENS]  # same embeddings, same store
    assert (out / TOKENS).read_bytes() == (ivfpq_index / TOKENS).read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--factory", "IVF8,Nope"], "FAISS rejects the factory string 'IVF8,Nope'"),
        (["--factory", "IVF64,Flat"], "64 IVF lists for 24 tokens"),
        (["--type", "ivfpq", "--pq-m", "5"], "--pq-m 5 must divide the dimension 16"),
        (["--type", "ivfpq", "--nlist", "4"], "only 24 training vectors"),
    ],
)
def test_bad_spec_exits_2_with_message(
    tiny_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "never"
    assert _index(tiny_root, out, *args) == 2
    err = capsys.readouterr().err
    assert "IndexSpecError" in err and message in err
    assert "Traceback" not in err
    assert not out.exists()  # rejected before anything is written


def test_tiny_root_builds_and_missing_embeddings_fail(
    tiny_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "flat"
    assert _index(tiny_root, out, "--type", "flat") == 0
    loaded = load_index(out)
    assert loaded.doc_ids == ["t0", "t1", "t2", "t3", "t4"]
    assert loaded.doc_offsets.tolist() == [0, 5, 5, 12, 21, 24]
    capsys.readouterr()
    assert _index(tmp_path / "nothing-here", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "not an encode output" in err
    assert not (tmp_path / "x").exists()
