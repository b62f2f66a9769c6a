"""FAISS index step: sizing rules, builds of every type, sharded == one-shot, validated loads.

Embeddings are synthetic but real files: clustered unit float16 token vectors written as
shards with ``build_shard``/``write_shard`` and a manifest shaped like the encode job's.
"""

from __future__ import annotations

import doctest
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_test_manifest

import colbert_core.index.build as build_module
import colbert_core.index.spec as spec_module
import colbert_core.tokenstore.mapping as tokenstore_module
from colbert_core.embeddings import MANIFEST, ShardInfo, build_shard, write_shard
from colbert_core.index import (
    INDEX_FILE,
    META,
    IndexLoadError,
    IndexSpec,
    IndexSpecError,
    build_index,
    load_index,
    resolve_spec,
    shard_groups,
)
from colbert_core.index.build import add_shards_to_copy
from colbert_core.index.spec import MAX_TRAIN, MIN_POINTS_PER_CENTROID
from colbert_core.tokenstore import DOC_IDS, OFFSETS, TOKENS, token_to_doc
from jobs.cluster.index_tasks import RayParallelAdd

DIM = 32
FINGERPRINT = "synthetic-fp-0123"


# ---------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Corpus:
    """What the synthetic ROOT holds, kept independently of the shard reader."""

    root: Path
    tokens: np.ndarray  # (n_tokens, DIM) float16, in corpus order
    lengths: np.ndarray  # tokens per document
    doc_ids: list[str]
    shard_tokens: list[int]

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_docs(self) -> int:
        return len(self.doc_ids)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)


def make_clustered_root(
    root: Path, *, shard_docs: tuple[int, ...] = (70, 45, 80, 50, 60), seed: int = 0
) -> Corpus:
    """~20k unit float16 tokens around 20 gaussian centres, several shards, varied doc
    lengths including empty documents (first doc of a shard and last of the corpus)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    infos: list[ShardInfo] = []
    all_tokens: list[np.ndarray] = []
    all_lengths: list[int] = []
    all_ids: list[str] = []
    first = 0
    for shard_id, n_docs in enumerate(shard_docs):
        lengths = rng.integers(1, 130, size=n_docs)
        if shard_id == 1:
            lengths[0] = 0
        if shard_id == 2:
            lengths[7] = 0
        if shard_id == len(shard_docs) - 1:
            lengths[-1] = 0
        vectors = []
        for n in lengths:
            v = centres[rng.integers(0, len(centres), size=n)]
            v = v + 0.35 * rng.standard_normal((n, DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            vectors.append(v.astype(np.float16))
        ids = [f"doc-{first + i}" for i in range(n_docs)]
        data = build_shard(ids, range(first, first + n_docs), vectors, DIM, FINGERPRINT)
        infos.append(write_shard(root, shard_id, first, data, n_docs, int(lengths.sum())))
        all_tokens.extend(vectors)
        all_lengths.extend(int(n) for n in lengths)
        all_ids.extend(ids)
        first += n_docs
    write_test_manifest(root, infos, dim=DIM, fingerprint=FINGERPRINT, model_path="synthetic")
    return Corpus(
        root=root,
        tokens=np.concatenate(all_tokens),
        lengths=np.asarray(all_lengths, dtype=np.int64),
        doc_ids=all_ids,
        shard_tokens=[i.n_tokens for i in infos],
    )


def unit_queries(n: int, seed: int) -> np.ndarray:
    q = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def search(folder: Path, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, ...]:
    loaded = load_index(folder)
    faiss.extract_index_ivf(loaded.index).nprobe = nprobe
    return loaded.index.search(queries, k)


def sequential_parallel_add(root: Path) -> Callable[[bytes, list[list[ShardInfo]]], Any]:
    """A ParallelAdd in plain Python: each group filled in turn by add_shards_to_copy."""
    calls: list[list[int]] = []

    def start(trained: bytes, groups: list[list[ShardInfo]]) -> Callable[[], Iterator[bytes]]:
        calls.append([len(g) for g in groups])

        def collect() -> Iterator[bytes]:
            first = 0
            for group in groups:
                yield add_shards_to_copy(trained, str(root), group, first)
                first += sum(i.n_tokens for i in group)

        return collect

    start.calls = calls  # type: ignore[attr-defined]
    return start


def spec_for(kind: str, n_tokens: int) -> IndexSpec:
    if kind == "ivfpq":
        # 6-bit codes: 64 PQ centroids train ~8x faster than 256 on a loaded 2-core box.
        return resolve_spec("ivfpq", n_tokens=n_tokens, dim=DIM, nlist=64, pq_m=8, pq_nbits=6)
    if kind == "factory":
        return resolve_spec("flat", n_tokens=n_tokens, dim=DIM, factory="IVF64,SQ8")
    if kind == "hnsw":
        return resolve_spec("hnsw", n_tokens=n_tokens, dim=DIM, hnsw_m=16, ef_construction=40)
    return resolve_spec("flat", n_tokens=n_tokens, dim=DIM)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_clustered_root(tmp_path_factory.mktemp("synthetic") / "root")


@pytest.fixture(scope="module")
def built(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Build each index type once per module (on first use) and return its folder."""
    base = tmp_path_factory.mktemp("indexes")
    folders: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in folders:
            build_index(str(corpus.root), str(base / kind), spec_for(kind, corpus.n_tokens))
            folders[kind] = base / kind
        return folders[kind]

    return get


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META).read_text())


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    (folder / META).write_text(json.dumps(meta, indent=2))


def flip_bytes(path: Path, offset: int, n: int = 8) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(offset, min(offset + n, len(raw))):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


# ---------------------------------------------------------------------------- spec rules


@pytest.mark.parametrize("module", [spec_module, tokenstore_module, build_module])
def test_sizing_rule_doctests_exist_and_pass(module: Any) -> None:
    for fn in (spec_module.default_nlist, spec_module.default_pq_m):
        assert ">>>" in (fn.__doc__ or ""), f"{fn.__name__} lost its doctest"
    result = doctest.testmod(module, verbose=False)
    assert result.attempted >= 1
    assert result.failed == 0


@pytest.mark.parametrize(
    ("n_tokens", "dim", "factory"),
    [
        (1_242_251, 128, "IVF4096,PQ8x8"),
        (10_000_000, 384, "IVF16384,PQ24x8"),
        (20_000, 32, "IVF512,PQ2x8"),
        (5_000, 96, "IVF128,PQ6x8"),
    ],
)
def test_resolve_ivfpq_defaults(n_tokens: int, dim: int, factory: str) -> None:
    spec = resolve_spec("ivfpq", n_tokens=n_tokens, dim=dim)
    assert spec.type == "ivfpq" and spec.factory == factory and spec.is_ivf
    assert spec.dim == dim and spec.pq_nbits == 8
    assert spec.nlist is not None and spec.nlist * MIN_POINTS_PER_CENTROID <= n_tokens
    assert spec.train_sample <= n_tokens
    assert spec.train_sample <= MAX_TRAIN
    # Enough points for the coarse k-means and for PQ's 256 centroids, or all tokens.
    wanted = max(MIN_POINTS_PER_CENTROID * spec.nlist, 256 * MIN_POINTS_PER_CENTROID)
    assert spec.train_sample >= min(wanted, n_tokens, MAX_TRAIN)


def test_resolve_sample_sizes_are_clamped() -> None:
    big = resolve_spec("ivfpq", n_tokens=10_000_000, dim=128)
    assert big.train_sample == 40 * 16384
    mid = resolve_spec("ivfpq", n_tokens=1_242_251, dim=128)
    assert mid.train_sample == 40 * 4096
    small = resolve_spec("ivfpq", n_tokens=5_000, dim=32)
    assert small.train_sample == 5_000  # never more than there are tokens


def test_resolve_explicit_arguments_win() -> None:
    spec = resolve_spec(
        "ivfpq",
        n_tokens=50_000,
        dim=32,
        nlist=64,
        pq_m=4,
        pq_nbits=6,
        train_sample=1234,
        seed=7,
    )
    assert spec.factory == "IVF64,PQ4x6"
    assert (spec.nlist, spec.pq_m, spec.pq_nbits, spec.train_sample, spec.seed) == (
        64,
        4,
        6,
        1234,
        7,
    )
    assert spec.to_dict()["factory"] == "IVF64,PQ4x6"


def test_resolve_flat_and_hnsw() -> None:
    flat = resolve_spec("flat", n_tokens=100, dim=32)
    assert (flat.type, flat.factory, flat.train_sample, flat.is_ivf) == ("flat", "Flat", 0, False)
    hnsw = resolve_spec("hnsw", n_tokens=100_000, dim=32)
    assert (hnsw.factory, hnsw.train_sample, hnsw.hnsw_m, hnsw.ef_construction) == (
        "HNSW32,Flat",
        0,
        32,
        80,
    )
    assert not hnsw.is_ivf
    sq8 = resolve_spec("hnsw", n_tokens=300_000, dim=32, hnsw_storage="SQ8", hnsw_m=16)
    assert (sq8.factory, sq8.train_sample) == ("HNSW16,SQ8", 200_000)
    assert resolve_spec("hnsw", n_tokens=5_000, dim=32, hnsw_storage="sq8").train_sample == 5_000


@pytest.mark.parametrize(
    ("factory", "sample", "is_ivf"),
    [
        ("IVF64,SQ8", 40 * 64, True),
        ("OPQ8,IVF64,PQ8", 40 * 64, True),
        ("HNSW16,Flat", 0, False),
        ("Flat", 0, False),
        ("PCA16,Flat", 20_000, False),  # trainable, not IVF: min(n_tokens, 200k)
    ],
)
def test_resolve_factory(factory: str, sample: int, is_ivf: bool) -> None:
    spec = resolve_spec("hnsw", n_tokens=20_000, dim=32, factory=factory)  # factory wins
    assert (spec.type, spec.factory, spec.train_sample, spec.is_ivf) == (
        "factory",
        factory,
        sample,
        is_ivf,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "ivfpq", "n_tokens": 20_000, "dim": 32, "pq_m": 7}, "--pq-m 7"),
        ({"type": "ivfpq", "n_tokens": 1_000, "dim": 32, "nlist": 2048}, "--nlist 2048"),
        ({"type": "ivfpq", "n_tokens": 1_000, "dim": 32, "nlist": -4}, "--nlist -4"),
        ({"type": "ivfpq", "n_tokens": 200, "dim": 32, "nlist": 4}, "training vectors"),
        ({"type": "flat", "n_tokens": 0, "dim": 32}, "no tokens"),
        ({"type": "ivfpq", "n_tokens": 0, "dim": 32}, "no tokens"),
        ({"type": "hnsw", "n_tokens": 100, "dim": 32, "hnsw_storage": "pq"}, "flat or sq8"),
        ({"type": "flat", "n_tokens": 100, "dim": 32, "factory": "IVF64,Bogus"}, "IVF64,Bogus"),
        ({"type": "flat", "n_tokens": 100, "dim": 32, "factory": "PQ7"}, "PQ7"),
        ({"type": "flat", "n_tokens": 100, "dim": 32, "factory": ""}, "index_factory"),
        ({"type": "flat", "n_tokens": 100, "dim": 32, "factory": "IVF0,Flat"}, "0 IVF lists"),
        ({"type": "flat", "n_tokens": 100, "dim": 32, "factory": "IVF256,Flat"}, "256 IVF"),
        ({"type": "lsh", "n_tokens": 100, "dim": 32}, "unknown index type"),
    ],
)
def test_resolve_rejects_bad_input(kwargs: dict[str, Any], message: str) -> None:
    kind = kwargs.pop("type")
    with pytest.raises(IndexSpecError, match=message.replace("(", r"\(")):
        resolve_spec(kind, **kwargs)


# ---------------------------------------------------------------------------- builds


@pytest.mark.parametrize("kind", ["flat", "ivfpq", "hnsw", "factory"])
def test_build_and_load_every_type(kind: str, corpus: Corpus, built: Callable[[str], Path]):
    folder = built(kind)
    spec = spec_for(kind, corpus.n_tokens)
    loaded = load_index(folder)
    meta = loaded.meta.to_dict()

    assert loaded.index.ntotal == corpus.n_tokens
    assert loaded.index.d == DIM
    assert loaded.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert meta["type"] == spec.type and meta["factory"] == spec.factory
    assert meta["params"] == spec.to_dict()
    assert (meta["dim"], meta["n_tokens"], meta["n_docs"]) == (
        DIM,
        corpus.n_tokens,
        corpus.n_docs,
    )
    assert (loaded.dim, loaded.n_tokens, loaded.n_docs) == (DIM, corpus.n_tokens, corpus.n_docs)
    assert meta["model_fingerprint"] == loaded.model_fingerprint == FINGERPRINT
    assert loaded.encoder.settings.dim == DIM
    manifest_raw = (corpus.root / MANIFEST).read_bytes()
    assert meta["source"]["manifest_sha256"] == hashlib.sha256(manifest_raw).hexdigest()
    assert meta["add_s"] > 0 and meta["peak_rss_mb"] > 0
    # Whether training ran is read off the index, not off a wall-clock threshold (a fast
    # machine trains IVF64 on 2560 vectors in under 10 ms).
    ivf = faiss.try_extract_index_ivf(loaded.index)
    if spec.train_sample == 0:
        assert ivf is None and loaded.index.is_trained  # nothing to train
    else:
        assert meta["train_s"] > 0 and loaded.index.is_trained
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        # k-means really ran: nlist distinct centroids, not a placeholder quantizer.
        assert len(np.unique(centroids, axis=0)) == ivf.nlist
    bpt = meta["bytes_per_token"]
    assert bpt["token_store"] == DIM * 2
    assert bpt["index"] == round((folder / INDEX_FILE).stat().st_size / corpus.n_tokens, 3)
    assert bpt["total"] > bpt["index"] + bpt["token_store"]
    for name, entry in meta["files"].items():
        raw = (folder / name).read_bytes()
        assert entry == {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}, name
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [META, INDEX_FILE, TOKENS, OFFSETS, DOC_IDS]
    )

    # Token store: exactly the shards' float16 tokens, concatenated in corpus order.
    assert loaded.store.dtype == np.float16 and loaded.store.shape == (corpus.n_tokens, DIM)
    assert np.array_equal(loaded.store.view(np.uint16), corpus.tokens.view(np.uint16))
    assert (folder / TOKENS).read_bytes() == corpus.tokens.astype("<f2").tobytes()
    assert loaded.doc_offsets.dtype == np.int64
    assert np.array_equal(loaded.doc_offsets, corpus.offsets)
    assert loaded.doc_ids == corpus.doc_ids

    # token -> document over every token (empty documents own none).
    owners = np.repeat(np.arange(corpus.n_docs), corpus.lengths)
    all_ids = np.arange(corpus.n_tokens)
    assert np.array_equal(token_to_doc(loaded.doc_offsets, all_ids), owners)
    assert token_to_doc(loaded.doc_offsets, np.array([-1]))[0] == -1


def test_ivfpq_skips_polysemous_training() -> None:
    """Polysemous training only serves Hamming filtering (never used) and cost seconds per
    sub-quantizer; explicit factory strings keep FAISS's own choice ("np" suffix)."""
    spec = resolve_spec("ivfpq", n_tokens=50_000, dim=DIM, nlist=16, pq_m=4)
    index = build_module.create_index(spec)
    assert not faiss.downcast_index(index).do_polysemous_training
    custom = resolve_spec("flat", n_tokens=50_000, dim=DIM, factory="IVF16,PQ4")
    assert faiss.downcast_index(build_module.create_index(custom)).do_polysemous_training


def test_index_types_are_what_was_asked(built: Callable[[str], Path]) -> None:
    # Keep each LoadedIndex referenced: downcast/extract views do not own the C++ index.
    loaded = {kind: load_index(built(kind)) for kind in ("flat", "ivfpq", "hnsw", "factory")}
    ivfpq = faiss.downcast_index(loaded["ivfpq"].index)
    assert isinstance(ivfpq, faiss.IndexIVFPQ)
    assert ivfpq.nlist == 64 and ivfpq.pq.M == 8 and ivfpq.pq.nbits == 6
    sizes = [ivfpq.invlists.list_size(i) for i in range(ivfpq.nlist)]
    assert sum(sizes) == ivfpq.ntotal
    assert sum(s > 0 for s in sizes) > 32  # trained on clustered data: lists are used
    hnsw = faiss.downcast_index(loaded["hnsw"].index)
    assert isinstance(hnsw, faiss.IndexHNSWFlat) and hnsw.hnsw.efConstruction == 40
    sq = faiss.downcast_index(loaded["factory"].index)
    assert isinstance(sq, faiss.IndexIVFScalarQuantizer) and sq.nlist == 64
    assert isinstance(faiss.downcast_index(loaded["flat"].index), faiss.IndexFlatIP)


def test_flat_search_finds_each_stored_token(corpus: Corpus, built: Callable[[str], Path]):
    loaded = load_index(built("flat"))
    rng = np.random.default_rng(3)
    ids = np.concatenate([[0, corpus.n_tokens - 1], rng.choice(corpus.n_tokens, 60)])
    queries = np.asarray(loaded.store[ids], dtype=np.float32)
    scores, hits = loaded.index.search(queries, 5)
    assert np.array_equal(hits[:, 0], ids)
    expected_self = np.einsum("ij,ij->i", queries, queries)
    np.testing.assert_allclose(scores[:, 0], expected_self, rtol=1e-5)
    docs = token_to_doc(loaded.doc_offsets, hits[:, 0])
    owners = np.repeat(np.arange(corpus.n_docs), corpus.lengths)
    assert np.array_equal(docs, owners[ids])
    assert [loaded.doc_ids[d] for d in docs] == [corpus.doc_ids[owners[i]] for i in ids]


@pytest.mark.parametrize("kind", ["ivfpq", "factory", "hnsw"])
def test_approximate_indices_search(kind: str, built: Callable[[str], Path]) -> None:
    flat = load_index(built("flat")).index
    loaded = load_index(built(kind))
    index = loaded.index
    if kind == "hnsw":
        faiss.downcast_index(index).hnsw.efSearch = 128
    else:
        faiss.extract_index_ivf(index).nprobe = 16
    queries = unit_queries(100, seed=11)
    _, truth = flat.search(queries, 100)
    _, got = index.search(queries, 100)
    recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(got, truth, strict=True)])
    assert recall > 0.5, f"{kind} recall@100 {recall:.3f}"
    assert (got >= 0).all()
    # Searching real data: a stored token finds itself (or an equal code) near the top.
    token = np.asarray(loaded.store[[123, 9876]], dtype=np.float32)
    _, hits = index.search(token, 10)
    assert all(t in row for t, row in zip([123, 9876], hits, strict=True))


def test_ivfpq_nprobe_matters(built: Callable[[str], Path]) -> None:
    """More probes visit more lists: the IVF structure is really used."""
    flat = load_index(built("flat")).index
    queries = unit_queries(100, seed=12)
    _, truth = flat.search(queries, 100)
    recalls = []
    for nprobe in (1, 64):
        _, got = search(built("ivfpq"), queries, 100, nprobe)
        recalls.append(np.mean([len(set(a) & set(b)) for a, b in zip(got, truth, strict=True)]))
    assert recalls[0] < recalls[1]


def test_loaded_index_is_in_memory_and_tokens_read_only(built: Callable[[str], Path]) -> None:
    folder = built("ivfpq")
    loaded = load_index(folder)
    assert isinstance(loaded.store, np.memmap)
    assert not loaded.store.flags.writeable
    with pytest.raises(ValueError):
        loaded.store[0, 0] = 1.0
    # read into memory: the search still works after the file is gone.
    moved = folder.parent / "moved-away.faiss"
    (folder / INDEX_FILE).rename(moved)
    try:
        faiss.extract_index_ivf(loaded.index).nprobe = 8
        scores, hits = loaded.index.search(unit_queries(3, seed=1), 10)
    finally:
        moved.rename(folder / INDEX_FILE)
    assert hits.shape == (3, 10) and (hits >= 0).all() and np.isfinite(scores).all()


# ---------------------------------------------------------------------------- sharded builds


def _infos(tokens: list[int]) -> list[ShardInfo]:
    return [ShardInfo(i, f"s{i}", 0, 1, n, 0, "") for i, n in enumerate(tokens)]


@pytest.mark.parametrize(
    ("tokens", "n_groups", "expected"),
    [
        ([10] * 6, 3, [2, 2, 2]),
        ([10] * 6, 2, [3, 3]),
        ([10] * 5, 3, [2, 1, 2]),
        ([5, 5, 5], 8, [1, 1, 1]),
        ([7, 3, 9], 1, [3]),
        ([100, 1, 1, 1], 2, [1, 3]),
        ([0, 10, 0, 10, 0], 2, [3, 2]),
        ([422, 779], 2, [1, 1]),  # every worker gets a group
        ([852, 543, 899], 3, [1, 1, 1]),
    ],
)
def test_shard_groups_fixed_cases(tokens: list[int], n_groups: int, expected: list[int]) -> None:
    groups = shard_groups(_infos(tokens), n_groups)
    assert [len(g) for g in groups] == expected


@pytest.mark.parametrize("seed", range(20))
def test_shard_groups_consecutive_covering_balanced(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, 1000, size=rng.integers(1, 40)).tolist()
    infos = _infos(tokens)
    n_groups = int(rng.integers(1, 9))
    groups = shard_groups(infos, n_groups)
    assert [i for g in groups for i in g] == infos  # consecutive, all covered, in order
    assert all(groups) and len(groups) == min(n_groups, len(infos))
    # Balanced: a group never exceeds the ideal share by more than one shard.
    ideal = sum(tokens) / len(groups)
    for g in groups:
        assert sum(i.n_tokens for i in g) <= ideal + max(tokens)


def test_sharded_build_equals_one_shot(
    corpus: Corpus, built: Callable[[str], Path], tmp_path: Path
) -> None:
    one_shot = built("ivfpq")
    parallel = sequential_parallel_add(corpus.root)
    meta = build_index(
        str(corpus.root),
        str(tmp_path / "sharded"),
        spec_for("ivfpq", corpus.n_tokens),
        parallel_add=parallel,
        n_groups=3,
    )
    calls = parallel.calls  # type: ignore[attr-defined]
    assert len(calls) == 1 and len(calls[0]) == 3 and sum(calls[0]) == len(corpus.shard_tokens)
    assert meta.parallel_groups == 3
    assert read_meta(one_shot)["parallel_groups"] == 1
    queries = unit_queries(200, seed=5)
    d1, i1 = search(one_shot, queries, 50, nprobe=8)
    d2, i2 = search(tmp_path / "sharded", queries, 50, nprobe=8)
    assert load_index(tmp_path / "sharded").index.ntotal == corpus.n_tokens
    assert np.array_equal(i1, i2)
    assert np.array_equal(d1, d2)
    for name in (TOKENS, OFFSETS, DOC_IDS):
        assert (one_shot / name).read_bytes() == (tmp_path / "sharded" / name).read_bytes()
    # Same inverted lists, entry for entry.
    loaded_a, loaded_b = load_index(one_shot), load_index(tmp_path / "sharded")
    a = faiss.extract_index_ivf(loaded_a.index)
    b = faiss.extract_index_ivf(loaded_b.index)
    assert a.nlist == b.nlist == 64 and a.code_size == b.code_size
    for lst in range(a.nlist):
        n = a.invlists.list_size(lst)
        assert b.invlists.list_size(lst) == n
        if n == 0:
            continue
        ids = [faiss.rev_swig_ptr(x.invlists.get_ids(lst), n).copy() for x in (a, b)]
        assert np.array_equal(ids[0], ids[1]), f"ids of list {lst}"
        assert (np.diff(ids[0]) > 0).all()  # both in global token order
        codes = [
            faiss.rev_swig_ptr(x.invlists.get_codes(lst), n * a.code_size).copy() for x in (a, b)
        ]
        assert np.array_equal(codes[0], codes[1]), f"codes of list {lst}"


def test_sharded_build_with_factory_ivf(corpus: Corpus, tmp_path: Path) -> None:
    spec = spec_for("factory", corpus.n_tokens)
    build_index(str(corpus.root), str(tmp_path / "one"), spec)
    build_index(
        str(corpus.root),
        str(tmp_path / "par"),
        spec,
        parallel_add=sequential_parallel_add(corpus.root),
        n_groups=2,
    )
    queries = unit_queries(50, seed=8)
    assert all(
        np.array_equal(x, y)
        for x, y in zip(
            search(tmp_path / "one", queries, 20, 8),
            search(tmp_path / "par", queries, 20, 8),
            strict=True,
        )
    )


def test_non_ivf_ignores_parallel_add(corpus: Corpus, tmp_path: Path) -> None:
    def refuse(trained: bytes, groups: list[list[ShardInfo]]):
        raise AssertionError("flat indices are filled in-process")

    meta = build_index(
        str(corpus.root),
        str(tmp_path / "flat"),
        spec_for("flat", corpus.n_tokens),
        parallel_add=refuse,
        n_groups=4,
    )
    assert meta.parallel_groups == 1
    assert load_index(tmp_path / "flat").index.ntotal == corpus.n_tokens


def test_ray_parallel_build_equals_one_shot(
    corpus: Corpus, built: Callable[[str], Path], ray_address: str, tmp_path: Path
) -> None:
    one_shot = built("ivfpq")
    meta = build_index(
        str(corpus.root),
        str(tmp_path / "ray"),
        spec_for("ivfpq", corpus.n_tokens),
        parallel_add=RayParallelAdd(str(corpus.root), ray_address),
        n_groups=2,
    )
    assert meta.parallel_groups == 2
    queries = unit_queries(200, seed=6)
    d1, i1 = search(one_shot, queries, 50, nprobe=8)
    d2, i2 = search(tmp_path / "ray", queries, 50, nprobe=8)
    assert np.array_equal(i1, i2)
    assert np.array_equal(d1, d2)
    assert (one_shot / TOKENS).read_bytes() == (tmp_path / "ray" / TOKENS).read_bytes()


def test_failed_parallel_add_leaves_no_index(corpus: Corpus, tmp_path: Path) -> None:
    def broken(trained: bytes, groups: list[list[ShardInfo]]):
        def collect() -> Iterator[bytes]:
            yield add_shards_to_copy(trained, str(corpus.root), groups[0], 0)
            raise RuntimeError("worker lost")

        return collect

    with pytest.raises(RuntimeError, match="worker lost"):
        build_index(
            str(corpus.root),
            str(tmp_path / "x"),
            spec_for("factory", corpus.n_tokens),
            parallel_add=broken,
            n_groups=2,
        )
    assert not (tmp_path / "x" / META).exists()
    assert not list((tmp_path / "x").glob(".*.tmp"))
    with pytest.raises(IndexLoadError, match=r"meta\.json not found"):
        load_index(tmp_path / "x")


# ---------------------------------------------------------------------------- load validation


@pytest.fixture
def damaged(built: Callable[[str], Path], tmp_path: Path) -> Path:
    """A private copy of the IVF-PQ index to damage."""
    return copy_index(built("ivfpq"), tmp_path / "idx")


def test_missing_meta(damaged: Path) -> None:
    (damaged / META).unlink()
    with pytest.raises(IndexLoadError, match=r"meta\.json not found"):
        load_index(damaged)


def test_invalid_meta_json(damaged: Path) -> None:
    (damaged / META).write_text('{"format_version": 1, "dim": ')
    with pytest.raises(IndexLoadError, match=r"meta\.json: invalid JSON"):
        load_index(damaged)


def test_meta_missing_key_or_wrong_version(damaged: Path) -> None:
    meta = read_meta(damaged)
    write_meta(damaged, {k: v for k, v in meta.items() if k != "n_docs"})
    with pytest.raises(IndexLoadError, match=r"meta\.json: missing 'n_docs'"):
        load_index(damaged)
    write_meta(damaged, meta | {"format_version": 99})
    with pytest.raises(IndexLoadError, match=r"meta\.json: unsupported index format"):
        load_index(damaged)
    del meta["files"][TOKENS]
    write_meta(damaged, meta)
    with pytest.raises(IndexLoadError, match=r"no entry for tokens\.f16"):
        load_index(damaged)


@pytest.mark.parametrize("name", [INDEX_FILE, TOKENS, OFFSETS, DOC_IDS])
def test_missing_file(damaged: Path, name: str) -> None:
    (damaged / name).unlink()
    with pytest.raises(IndexLoadError, match=f"missing index file .*{name}"):
        load_index(damaged)


@pytest.mark.parametrize("name", [INDEX_FILE, TOKENS, OFFSETS, DOC_IDS])
def test_truncated_file(damaged: Path, name: str) -> None:
    path = damaged / name
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    for verify in (True, False):  # sizes are always checked
        with pytest.raises(IndexLoadError, match=rf"{name}: {len(raw) // 2} bytes, meta"):
            load_index(damaged, verify=verify)


@pytest.mark.parametrize("name", [INDEX_FILE, TOKENS, OFFSETS, DOC_IDS])
def test_same_size_corruption_caught_by_sha256(damaged: Path, name: str) -> None:
    path = damaged / name
    size = path.stat().st_size
    flip_bytes(path, size // 2)
    assert path.stat().st_size == size
    with pytest.raises(IndexLoadError, match=rf"{name}: sha256 differs"):
        load_index(damaged)


def test_corruption_without_verify_never_crashes(damaged: Path, tmp_path: Path) -> None:
    """With verify=False FAISS parses a damaged index file (the small mapping files are
    checksummed anyway): each load must end in an IndexLoadError or a working index - in
    a child process, so a segfault or abort shows up as a signal naming its variant
    instead of killing the test run."""
    variants = []
    sizes = {name: (damaged / name).stat().st_size for name in (INDEX_FILE, OFFSETS, DOC_IDS)}
    spots = {
        INDEX_FILE: [
            0,
            8,
            12,
            40,
            48,
            56,
            64,
            200,
            sizes[INDEX_FILE] // 3,
            sizes[INDEX_FILE] // 2,
            sizes[INDEX_FILE] - 40,
        ],
        OFFSETS: [8, 60, sizes[OFFSETS] // 2, sizes[OFFSETS] - 8],
        DOC_IDS: [4, sizes[DOC_IDS] // 2, sizes[DOC_IDS] - 12],
    }
    for name, offsets in spots.items():
        for offset in offsets:
            folder = copy_index(damaged, tmp_path / f"v{len(variants)}")
            flip_bytes(folder / name, offset)
            variants.append(str(folder))
    # One forked child per variant, so a crash names its variant; the parent reports each
    # child's exit status. Everyone leaves through os._exit: what is under test is loading
    # damaged files, not interpreter teardown, where a Parquet reader thread can abort the
    # process after all work is done (apache/arrow#34314; seen once in CI as SIGABRT
    # "terminate called without an active exception").
    script = textwrap.dedent(
        """
        import os
        import sys
        import faiss
        import numpy as np
        from colbert_core.index import IndexLoadError, load_index

        q = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
        for folder in sys.argv[1:]:
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    loaded = load_index(folder, verify=False)
                except IndexLoadError as exc:
                    print("IndexLoadError", str(exc).split(":")[0], flush=True)
                    os._exit(0)
                ivf = faiss.try_extract_index_ivf(loaded.index)
                if ivf is not None:
                    ivf.nprobe = ivf.nlist
                loaded.index.search(q, 20)
                print("loaded", folder, flush=True)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                print("CRASH", folder, os.waitstatus_to_exitcode(status), flush=True)
        sys.stdout.flush()
        os._exit(0)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *variants],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    crashes = [line for line in lines if line.startswith("CRASH")]
    assert not crashes, f"{crashes}\n{proc.stderr[-2000:]}"
    assert len(lines) == len(variants), proc.stdout
    # The header corruptions at least are detected (and blamed on the right file).
    errors = [line for line in lines if line.startswith("IndexLoadError")]
    assert any(line.endswith(INDEX_FILE) for line in errors), lines
    assert any(line.endswith(OFFSETS) for line in errors), lines
    assert any(line.endswith(DOC_IDS) for line in errors), lines


@pytest.mark.parametrize("name", [OFFSETS, DOC_IDS])
def test_small_files_are_checksummed_even_without_verify(damaged: Path, name: str) -> None:
    # A flipped Parquet footer once made pyarrow malloc 256 GiB and the kernel kill the
    # process: verify=False must not hand a damaged mapping file to a parser.
    path = damaged / name
    flip_bytes(path, path.stat().st_size - 200)
    with pytest.raises(IndexLoadError, match=rf"{name}: sha256 differs"):
        load_index(damaged, verify=False)


def rehash(folder: Path, name: str) -> None:
    """Make meta.json agree with a file that was changed on purpose."""
    meta = read_meta(folder)
    raw = (folder / name).read_bytes()
    meta["files"][name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    write_meta(folder, meta)


def test_unparseable_small_files_are_load_errors(
    damaged: Path, built: Callable[[str], Path]
) -> None:
    flip_bytes(damaged / OFFSETS, 0, 6)  # the .npy magic
    rehash(damaged, OFFSETS)
    with pytest.raises(IndexLoadError, match=r"doc_offsets\.npy: unreadable"):
        load_index(damaged)
    shutil.copy(built("ivfpq") / OFFSETS, damaged / OFFSETS)
    rehash(damaged, OFFSETS)
    (damaged / DOC_IDS).write_bytes(b"not parquet at all")
    rehash(damaged, DOC_IDS)
    with pytest.raises(IndexLoadError, match=r"doc_ids\.parquet: unreadable"):
        load_index(damaged)


def test_doc_ids_count_mismatch(damaged: Path, corpus: Corpus) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"doc_id": pa.array(corpus.doc_ids[:-1], pa.string())}), sink)
    raw = sink.getvalue().to_pybytes()
    (damaged / DOC_IDS).write_bytes(raw)
    meta = read_meta(damaged)
    meta["files"][DOC_IDS] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    write_meta(damaged, meta)
    with pytest.raises(IndexLoadError, match=rf"doc_ids\.parquet: {corpus.n_docs - 1} ids for"):
        load_index(damaged)


def test_offsets_inconsistent_with_tokens(damaged: Path, corpus: Corpus) -> None:
    import io

    bad = corpus.offsets.copy()
    bad[-1] -= 1  # last document loses a token: no longer ends at n_tokens
    buf = io.BytesIO()
    np.save(buf, bad)
    raw = buf.getvalue()
    (damaged / OFFSETS).write_bytes(raw)
    meta = read_meta(damaged)
    meta["files"][OFFSETS] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    write_meta(damaged, meta)
    with pytest.raises(IndexLoadError, match=r"doc_offsets\.npy: not .* offsets"):
        load_index(damaged)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "dim",
            64,
            rf"index\.faiss: holds \d+ vectors of dim {DIM}, meta\.json says \d+ of dim 64",
        ),
        ("n_tokens", 12345, r"index\.faiss: holds \d+ vectors .* says 12345"),
        ("n_docs", 3, r"doc_offsets\.npy: not 4 non-decreasing"),
    ],
)
def test_meta_disagrees_with_files(damaged: Path, key: str, value: int, message: str) -> None:
    meta = read_meta(damaged)
    meta[key] = value
    write_meta(damaged, meta)
    with pytest.raises(IndexLoadError, match=message):
        load_index(damaged)


def test_rebuild_into_existing_folder(
    corpus: Corpus, built: Callable[[str], Path], tmp_path: Path
) -> None:
    folder = copy_index(built("ivfpq"), tmp_path / "rebuilt")
    build_index(str(corpus.root), str(folder), spec_for("flat", corpus.n_tokens))
    loaded = load_index(folder)
    assert loaded.meta.type == "flat"
    assert isinstance(faiss.downcast_index(loaded.index), faiss.IndexFlatIP)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [META, INDEX_FILE, TOKENS, OFFSETS, DOC_IDS]
    )


# ---------------------------------------------------------------------------- memory

_BUILD_AND_MEASURE = """
import json, sys
from colbert_core.index import IndexConfig, build_index
from colbert_core.embeddings import Embeddings
from colbert_core.index.build import peak_rss_mb
root, out = sys.argv[1], sys.argv[2]
store = Embeddings(root)
spec = IndexConfig(type="ivfpq", nlist=16, pq_m=4).resolve(n_tokens=store.n_tokens, dim=store.dim)
before = peak_rss_mb()
meta = build_index(root, out, spec)
print(json.dumps({"before_mb": before, "after_mb": peak_rss_mb(),
                  "index_mb": meta.files["index.faiss"].bytes / 2**20}))
"""


def test_index_build_peak_memory_grows_with_the_index_not_the_shards(tmp_path: Path) -> None:
    """README: adding streams shard by shard, so peak memory is the index plus the working
    set of one shard (its bytes, its decoded tokens, FAISS's buffers for one add chunk),
    whatever the number of shards. Measured as VmHWM growth in fresh processes building
    over 2 and over 8 shards of 200k tokens (d=64, 24 MB of float16 each)."""
    dim, shard_tokens, n_shards, per_doc = 64, 200_000, 8, 100
    rng = np.random.default_rng(7)
    roots = {n: tmp_path / f"shards-{n}" for n in (2, n_shards)}
    infos = []
    for k in range(n_shards):
        x = rng.standard_normal((shard_tokens, dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        docs = list(x.astype(np.float16).reshape(-1, per_doc, dim))
        first = k * len(docs)
        ids = [f"d{first + i}" for i in range(len(docs))]
        data = build_shard(ids, range(first, first + len(docs)), docs, dim, "mem")
        infos.append(write_shard(roots[n_shards], k, first, data, len(docs), shard_tokens))
    (roots[2] / "embeddings").mkdir(parents=True)
    for info in infos[:2]:
        os.link(roots[n_shards] / info.key, roots[2] / info.key)
    for n, root in roots.items():
        write_test_manifest(root, infos[:n], dim=dim, fingerprint="mem")
    grown = {}
    for n, root in roots.items():
        proc = subprocess.run(
            [sys.executable, "-c", _BUILD_AND_MEASURE, str(root), str(tmp_path / f"idx-{n}")],
            capture_output=True,
            text=True,
            check=True,
        )
        grown[n] = json.loads(proc.stdout.splitlines()[-1])
    shard_mb = shard_tokens * dim * 2 / 2**20
    small, big = grown[2], grown[n_shards]
    # Four times as many shards: the peak grows by the larger index only (up to three
    # times its growth: FAISS's inverted lists grow by reallocation, doubling capacity and
    # holding old and new buffers while they copy).
    index_growth = big["index_mb"] - small["index_mb"]
    extra = (big["after_mb"] - big["before_mb"]) - (small["after_mb"] - small["before_mb"])
    assert extra < 3 * index_growth + 16, grown
    # The working set itself is a few shards' worth (measured: ~5 x 24 MB), not all of them.
    assert big["after_mb"] - big["before_mb"] < 3 * big["index_mb"] + 5 * shard_mb + 32, grown
