"""Shard files and the encode output folder (ROOT), on real files."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
from conftest import write_test_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import colbert_core.embeddings.shards as shards_module
from colbert_core.embeddings import (
    MANIFEST,
    SHARD_DIR,
    Embeddings,
    Manifest,
    ManifestError,
    ShardData,
    ShardError,
    ShardInfo,
    build_shard,
    read_shard,
    shard_name,
    write_shard,
)
from colbert_core.storage import write_bytes_atomic, write_json_atomic

FIXTURES = Path(__file__).parent / "fixtures"
IDS = ["plain", "with#hash", "ünïcödé", "日本語-文書", "emoji-🙂", "", "a/b\\c", "#"]


# ---------------------------------------------------------------------------- helpers


def random_docs(rng: np.random.Generator, lengths: list[int], dim: int) -> list[np.ndarray]:
    return [rng.standard_normal((n, dim)).astype(np.float32) for n in lengths]


def make_root(
    root: Path,
    shards: list[list[np.ndarray]],
    dim: int,
    *,
    doc_ids: list[str] | None = None,
    complete: bool = True,
    fingerprint: str = "test-fingerprint",
) -> dict[str, Any]:
    """Write shards through build_shard/write_shard and a manifest shaped like
    ``colbert_core.encode._manifest``; returns the manifest."""
    n_total = sum(len(s) for s in shards)
    ids = doc_ids if doc_ids is not None else [f"doc-{i}" for i in range(n_total)]
    infos: list[ShardInfo] = []
    first = 0
    for shard_id, vectors in enumerate(shards):
        data = build_shard(
            ids[first : first + len(vectors)],
            range(first, first + len(vectors)),
            vectors,
            dim,
            fingerprint,
        )
        n_tokens = sum(v.shape[0] for v in vectors)
        infos.append(write_shard(root, shard_id, first, data, len(vectors), n_tokens))
        first += len(vectors)
    return write_test_manifest(
        root,
        infos,
        dim=dim,
        fingerprint=fingerprint,
        complete=complete,
        config={"corpus": "hand-made", "model": "none", "shard_size": 0, "batch_size": 1},
    )


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- shards


def test_round_trip_with_odd_ids_and_empty_docs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dim = 6
    lengths = [3, 0, 5, 1, 0, 7, 2, 0]
    vectors = random_docs(rng, lengths, dim)
    data = build_shard(IDS, range(100, 108), vectors, dim, "fp")
    info = write_shard(tmp_path, 3, 100, data, len(vectors), sum(lengths))
    path = tmp_path / SHARD_DIR / "shard-00003.parquet"
    assert info == ShardInfo(
        shard_id=3,
        name="shard-00003.parquet",
        first_doc=100,
        n_docs=8,
        n_tokens=sum(lengths),
        bytes=path.stat().st_size,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
    assert path.read_bytes() == data
    shard = read_shard(path, dim=dim)
    assert shard.doc_ids == IDS
    assert shard.doc_index.tolist() == list(range(100, 108))
    assert shard.offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert shard.n_docs == 8 and shard.n_tokens == sum(lengths)
    assert shard.tokens.dtype == np.float16 and shard.tokens.shape == (sum(lengths), dim)
    for k, v in enumerate(vectors):
        got = shard.tokens[shard.offsets[k] : shard.offsets[k + 1]]
        assert got.shape == v.shape
        # Stored as float16: exactly the float16 rounding of the input ...
        np.testing.assert_array_equal(got, v.astype(np.float16))
        # ... which is within float16 precision of the float32 input.
        np.testing.assert_allclose(got.astype(np.float32), v, rtol=1e-3, atol=1e-4)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ids=st.lists(st.text(max_size=12), max_size=8),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(ids: list[str], dim: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 5, len(ids)).tolist()
    vectors = [v.astype(np.float16) for v in random_docs(rng, lengths, dim)]
    shard = read_shard(io.BytesIO(build_shard(ids, range(len(ids)), vectors, dim, "fp")), dim=dim)
    assert shard.doc_ids == ids
    assert shard.doc_index.tolist() == list(range(len(ids)))
    assert shard.tokens.shape == (sum(lengths), dim)
    for k, v in enumerate(vectors):
        np.testing.assert_array_equal(shard.tokens[shard.offsets[k] : shard.offsets[k + 1]], v)


def test_empty_shard_and_shard_of_only_empty_documents() -> None:
    empty = read_shard(io.BytesIO(build_shard([], [], [], 4, "fp")), dim=4)
    assert empty.n_docs == 0 and empty.tokens.shape == (0, 4) and empty.offsets.tolist() == [0]
    vectors = [np.zeros((0, 4), np.float32)] * 2
    only_empty = read_shard(io.BytesIO(build_shard(["a", "b"], [0, 1], vectors, 4, "fp")))
    assert only_empty.doc_ids == ["a", "b"]
    assert only_empty.offsets.tolist() == [0, 0, 0] and only_empty.tokens.shape == (0, 4)


def _docstring_recipe() -> str:
    doc = shards_module.__doc__
    assert doc is not None
    block = doc.split("Plain pyarrow and numpy read it::", 1)[1].split("\n\n", 2)[1]
    return textwrap.dedent(block)


def test_module_docstring_recipe_reads_a_shard_literally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = _docstring_recipe()
    assert 'read_table("shard-00000.parquet")' in recipe
    rng = np.random.default_rng(1)
    dim = 5
    vectors = random_docs(rng, [2, 0, 4, 1], dim)
    make_root(tmp_path, [vectors], dim)
    monkeypatch.chdir(tmp_path / SHARD_DIR)
    namespace: dict[str, Any] = {"pyarrow": pyarrow, "np": np}
    exec(recipe, namespace)  # the documented recipe, character for character
    assert namespace["dim"] == dim
    expected = np.concatenate([v.astype(np.float16) for v in vectors])
    np.testing.assert_array_equal(namespace["tokens"], expected)
    table = namespace["t"]
    assert table.column_names == ["doc_id", "doc_index", "n_tokens", "embeddings"]
    assert table["n_tokens"].to_pylist() == [2, 0, 4, 1]
    assert table.schema.metadata[b"colbert_batch.dtype"] == b"float16"
    assert table.schema.metadata[b"colbert_batch.model_fingerprint"] == b"test-fingerprint"


def test_dim_mismatch_raises(tmp_path: Path) -> None:
    vectors = random_docs(np.random.default_rng(2), [3, 1], 8)
    data = build_shard(["a", "b"], [0, 1], vectors, 8, "fp")
    write_shard(tmp_path, 0, 0, data, 2, 4)
    path = tmp_path / SHARD_DIR / shard_name(0)
    assert read_shard(path, dim=8).n_docs == 2
    with pytest.raises(ShardError, match="dim 8 differs from the expected 16"):
        read_shard(path, dim=16)
    with pytest.raises(ShardError, match=r"expected \(n_tokens, 4\)"):
        build_shard(["a", "b"], [0, 1], vectors, 4, "fp")
    with pytest.raises(ShardError):
        build_shard(["a"], [0], [np.zeros(8, np.float32)], 8, "fp")  # 1-D, not (n, dim)


def test_missing_shard_raises(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="missing shard"):
        read_shard(tmp_path / "nope.parquet")


def test_not_a_shard_raises(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"x": [1, 2]}), path)
    with pytest.raises(ShardError, match="not a colbert-batch shard"):
        read_shard(path)
    path.write_text("just text\n")
    with pytest.raises(ShardError, match="corrupt or truncated"):
        read_shard(path)


@pytest.fixture(scope="module")
def shard_bytes() -> bytes:
    vectors = random_docs(np.random.default_rng(3), [3, 0, 5, 2], 4)
    return build_shard(["a#1", "é", "c", "日本"], [0, 1, 2, 3], vectors, 4, "fp")


def test_truncated_file_raises_shard_error(tmp_path: Path, shard_bytes: bytes) -> None:
    path = tmp_path / "shard.parquet"
    n = len(shard_bytes)
    # Every 3rd prefix length, plus every cut within the footer region at the end.
    for cut in sorted(set(range(0, n, 3)) | set(range(max(0, n - 64), n))):
        path.write_bytes(shard_bytes[:cut])
        with pytest.raises(ShardError):
            read_shard(path)


def _same_shard(a: ShardData, b: ShardData) -> bool:
    return (
        a.doc_ids == b.doc_ids
        and np.array_equal(a.doc_index, b.doc_index)
        and np.array_equal(a.offsets, b.offsets)
        and np.array_equal(a.tokens, b.tokens)
    )


def test_bytes_cut_out_of_the_middle_are_an_error_or_harmless(
    tmp_path: Path, shard_bytes: bytes
) -> None:
    """16 bytes cut out anywhere: a ShardError, or (cut from padding Parquet never reads)
    exactly the original content - never a silently different shard."""
    original = read_shard(io.BytesIO(shard_bytes))
    path = tmp_path / "shard.parquet"
    outcomes = {"error": 0, "original": 0}
    for start in range(0, len(shard_bytes) - 16, 5):
        path.write_bytes(shard_bytes[:start] + shard_bytes[start + 16 :])
        try:
            data = read_shard(path)
        except ShardError:
            outcomes["error"] += 1
            continue
        assert _same_shard(data, original), f"cut at byte {start} read a different shard"
        outcomes["original"] += 1
    assert outcomes["error"] > 0


def test_flipped_bytes_raise_shard_error_or_read(shard_bytes: bytes) -> None:
    """Parquet has no checksum here, so a flipped data byte may read back fine (the store's
    sha256 catches that); what must never happen is an exception other than ShardError."""
    errors = 0
    for pos in range(len(shard_bytes)):
        damaged = bytearray(shard_bytes)
        damaged[pos] ^= 0xFF
        try:
            read_shard(io.BytesIO(bytes(damaged)), dim=4)
        except ShardError:
            errors += 1
    assert errors > 0


# ---------------------------------------------------------------------------- store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    shards = [random_docs(rng, [3, 0, 2], 8), random_docs(rng, [1, 4], 8), random_docs(rng, [5], 8)]
    make_root(tmp_path / "root", shards, 8, doc_ids=["a", "b#2", "ç", "d", "e", "f"])
    return tmp_path / "root"


def test_store_reads_every_shard(root: Path) -> None:
    store = Embeddings(root)
    assert (store.dim, store.n_docs, store.n_tokens) == (8, 6, 15)
    assert [s.name for s in store.shards] == [shard_name(i) for i in range(3)]
    assert store.encoder.fingerprint == "test-fingerprint"
    read = list(store)
    assert [d.doc_ids for d in read] == [["a", "b#2", "ç"], ["d", "e"], ["f"]]
    assert np.concatenate([d.doc_index for d in read]).tolist() == list(range(6))
    assert [d.n_tokens for d in read] == [5, 5, 5]
    rng = np.random.default_rng(4)
    expected = [random_docs(rng, [3, 0, 2], 8), random_docs(rng, [1, 4], 8)]
    expected.append(random_docs(rng, [5], 8))
    for data, vectors in zip(read, expected, strict=True):
        np.testing.assert_array_equal(data.tokens, np.concatenate(vectors).astype(np.float16))


def _original_tokens(root: Path, shard_id: int) -> np.ndarray:
    """The tokens ``root``'s fixture wrote into shard ``shard_id`` (same seed)."""
    rng = np.random.default_rng(4)
    shards = [random_docs(rng, [3, 0, 2], 8), random_docs(rng, [1, 4], 8)]
    shards.append(random_docs(rng, [5], 8))
    return np.concatenate(shards[shard_id]).astype(np.float16)


@pytest.mark.parametrize("verify", [True, False])
def test_store_modified_shard_byte(root: Path, verify: bool) -> None:
    path = root / SHARD_DIR / shard_name(1)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size, different content
    path.write_bytes(bytes(raw))
    store = Embeddings(root, verify=verify)
    if verify:
        with pytest.raises(ShardError, match="sha256") as info:
            list(store)
        assert shard_name(1) in str(info.value) and "re-run encode" in str(info.value)
    else:
        # Without verification the flip may go unnoticed, but only as what it is: one
        # float16 value changed in place, nothing shifted, every id and count intact.
        clean = Embeddings(root)  # reads the manifest only; shards are read below
        try:
            read = list(store)
        except ShardError:
            return
        assert [d.doc_ids for d in read] == [["a", "b#2", "ç"], ["d", "e"], ["f"]]
        expected = [clean.read(info) for info in clean.shards if info.shard_id != 1]
        assert all(_same_shard(a, b) for a, b in zip([read[0], read[2]], expected, strict=True))
        changed = read[1].tokens.view(np.uint16) != _original_tokens(root, 1).view(np.uint16)
        assert int(changed.sum()) <= 1


def test_store_truncated_shard_mentions_sha256(root: Path) -> None:
    path = root / SHARD_DIR / shard_name(0)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ShardError, match="sha256"):
        list(Embeddings(root))
    with pytest.raises(ShardError, match="truncated"):
        list(Embeddings(root, verify=False))


@pytest.mark.parametrize("verify", [True, False])
def test_store_missing_shard(root: Path, verify: bool) -> None:
    (root / SHARD_DIR / shard_name(2)).unlink()
    store = Embeddings(root, verify=verify)
    it = iter(store)
    next(it), next(it)  # the first two shards are fine
    with pytest.raises(ShardError, match="missing shard") as info:
        next(it)
    assert shard_name(2) in str(info.value)


def test_store_counts_disagreeing_with_manifest(root: Path) -> None:
    manifest = Manifest.load(str(root))
    shards = (dataclasses.replace(manifest.shards[0], n_docs=4), *manifest.shards[1:])
    manifest.replace(shards=shards).save(str(root))
    with pytest.raises(ShardError, match="manifest says 4 / 5"):
        list(Embeddings(root))


def test_store_dim_disagreeing_with_manifest(root: Path) -> None:
    Manifest.load(str(root)).replace(dim=16).save(str(root))
    with pytest.raises(ShardError, match="dim 8 differs from the expected 16"):
        list(Embeddings(root))


def test_incomplete_manifest_tells_to_rerun(tmp_path: Path) -> None:
    make_root(tmp_path, [random_docs(np.random.default_rng(5), [2], 4)], 4, complete=False)
    with pytest.raises(ManifestError, match="re-run") as info:
        Embeddings(tmp_path)
    assert "incomplete" in str(info.value)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found") as info:
        Embeddings(tmp_path)
    assert "colbert-batch encode" in str(info.value)


def test_invalid_json_manifest_names_the_line(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text('{\n  "format_version": 1,\n  "complete": true,,\n}\n')
    with pytest.raises(ManifestError) as info:
        Embeddings(tmp_path)
    assert f"{tmp_path / MANIFEST}:3:" in str(info.value)
    assert "invalid JSON" in str(info.value)


def test_unsupported_format_version(root: Path) -> None:
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["format_version"] = 2
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="format_version 2 is not supported"):
        Embeddings(root)


def test_store_over_a_real_encode_output(tmp_path: Path) -> None:
    """ROOT produced by the real encode path (tiny PyLate checkpoint, CPU)."""
    from colbert_core import load_encoder
    from colbert_core.embeddings import EncodeConfig, run_encode

    corpus = tmp_path / "corpus.jsonl"
    docs = [("d#1", "hello world"), ("ü-2", "a b c d e f g"), ("3", "short"), ("4", "x y z")]
    docs.append(("日本", "the last document"))
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs))
    model = str(FIXTURES / "pylate_tiny")
    encoder = load_encoder(model, device="cpu")
    out = tmp_path / "root"
    config = EncodeConfig(corpus=str(corpus), model=model, out=str(out), shard_size=2)
    manifest = run_encode(config, encoder)

    assert manifest.complete is True and manifest.format_version == 1
    assert manifest.totals()["docs"] == 5 and manifest.totals()["shards"] == 3
    assert Manifest.load(str(out)) == manifest
    store = Embeddings(out)
    assert store.dim == encoder.dim
    read = list(store)
    assert [i for d in read for i in d.doc_ids] == [d[0] for d in docs]
    assert np.concatenate([d.doc_index for d in read]).tolist() == list(range(5))
    assert sum(d.n_tokens for d in read) == manifest.n_tokens
    assert [d.n_docs for d in read] == [2, 2, 1]
    # The same vectors as encoding the texts directly, to float16 precision.
    direct = encoder.encode_documents([t for _, t in docs], batch_size=8)
    for k, vec in enumerate(direct):
        shard, pos = read[k // 2], k % 2
        stored = shard.tokens[shard.offsets[pos] : shard.offsets[pos + 1]]
        np.testing.assert_allclose(stored.astype(np.float32), vec, atol=2e-3)

    path = out / SHARD_DIR / shard_name(1)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="sha256"):
        list(Embeddings(out))


# ---------------------------------------------------------------------------- atomic writes


def test_write_bytes_atomic_leaves_no_temp_files_and_respects_umask(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "file.bin"
    write_bytes_atomic(target, b"first")
    write_bytes_atomic(target, b"second version")
    write_json_atomic(tmp_path / "sub" / "dir" / "m.json", {"a": [1, 2]})
    assert target.read_bytes() == b"second version"
    assert json.loads((target.parent / "m.json").read_text()) == {"a": [1, 2]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin", "m.json"]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode == 0o666 & ~current_umask()
    if current_umask() & 0o066 != 0o066:
        assert mode != 0o600  # mkstemp's private mode did not leak through


def test_write_bytes_atomic_failure_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "child").write_text("x")  # os.replace cannot replace a non-empty directory
    with pytest.raises(OSError):
        write_bytes_atomic(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in target.iterdir()] == ["child"]


def test_a_corpus_path_spelled_differently_is_the_same_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest recorded with a relative corpus path is complete for the same file
    spelled absolute (a study run with an absolute path re-encoded, and so discarded, 30
    minutes of complete embeddings); another file, or another named dataset, differs."""
    from colbert_core.embeddings import EncodeConfig

    (tmp_path / "data").mkdir()
    for name in ("corpus.jsonl", "other.jsonl"):
        (tmp_path / "data" / name).write_text("{}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    recorded = EncodeConfig(corpus="data/corpus.jsonl", out="emb")
    manifest = Manifest.for_shards(
        [], dim=4, fingerprint="f", model_path="none", config=recorded.recorded()
    )
    same = EncodeConfig(corpus=str(tmp_path / "data" / ".." / "data" / "corpus.jsonl"), out="x")
    assert manifest.config_differences(same) == {}
    assert manifest.is_complete_for(same)
    other = EncodeConfig(corpus=str(tmp_path / "data" / "other.jsonl"), out="emb")
    assert set(manifest.config_differences(other)) == {"corpus"}
    named = EncodeConfig(corpus="beir:scifact", out="emb")
    assert set(manifest.config_differences(named)) == {"corpus"}
