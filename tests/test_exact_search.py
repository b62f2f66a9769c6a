"""Exhaustive MaxSim search over a real ROOT against a brute-force numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colbert_core.embeddings import Embeddings, EmbeddingsView, Manifest, ManifestError, ViewPart
from colbert_core.embeddings.shards import build_shard, write_shard
from colbert_core.search.exact import (
    SearchResult,
    exact_search,
    exact_search_prefixes,
    topk_merge,
)
from colbert_core.search.maxsim import maxsim_reference

BUDGETS = [1, 600, 4096, 1 << 16, 1 << 30]  # 1 byte: one query per group, one doc per block


# ---------------------------------------------------------------------------- helpers


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.astype(np.float16)


def write_root(
    root: Path, docs: list[np.ndarray], shard_sizes: list[int], dim: int, id_base: int = 0
) -> Path:
    """Write ``docs`` (float16) as consecutive shards plus a complete manifest; document
    ``i`` is ``doc-<id_base + i>``."""
    assert sum(shard_sizes) == len(docs)
    infos = []
    first = 0
    for shard_id, size in enumerate(shard_sizes):
        vectors = docs[first : first + size]
        data = build_shard(
            [f"doc-{id_base + i}" for i in range(first, first + size)],
            range(first, first + size),
            vectors,
            dim,
            "fp",
        )
        n_tokens = sum(v.shape[0] for v in vectors)
        infos.append(write_shard(root, shard_id, first, data, size, n_tokens))
        first += size
    Manifest.for_shards(infos, dim=dim, fingerprint="fp").save(str(root))
    return root


def random_corpus(
    rng: np.random.Generator, n_docs: int, dim: int, max_len: int = 9
) -> list[np.ndarray]:
    lengths = rng.integers(1, max_len + 1, n_docs)
    lengths[rng.integers(n_docs)] = 0  # one empty document
    return [unit_vectors(rng, int(n), dim) for n in lengths]


def split(rng: np.random.Generator, n: int, n_shards: int) -> list[int]:
    cuts = np.sort(rng.choice(np.arange(1, n), n_shards - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n]])).tolist()


def reference_scores(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    return np.array([[maxsim_reference(q, d) for d in docs] for q in queries])


def reference_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Rank by (-score, doc_index) per query."""
    idx = np.arange(scores.shape[1])
    return np.stack([np.lexsort((idx, -row))[:k] for row in scores])


def assert_matches_reference(
    result: SearchResult, queries: list[np.ndarray], docs: list[np.ndarray], k: int
) -> None:
    ref = reference_scores(queries, docs)
    want = reference_topk(ref, k)
    n = min(k, len(docs))
    # Data where float32-vs-float64 rounding (~1e-6 here) cannot flip an order: neighbours
    # in the reference ranking (through position n, the first one left out) differ by more.
    ranked = -np.sort(-ref, axis=1)[:, : n + 1]
    assert (np.abs(np.diff(ranked, axis=1)) > 1e-5).all(), "test data has near-ties"
    assert result.doc_index.shape == (len(queries), k)
    assert result.scores.shape == (len(queries), k)
    assert result.doc_index.dtype == np.int64 and result.scores.dtype == np.float32
    np.testing.assert_array_equal(result.doc_index[:, :n], want)
    np.testing.assert_allclose(
        result.scores[:, :n], np.take_along_axis(ref, want, 1), atol=1e-3, rtol=0
    )
    assert (result.doc_index[:, n:] == -1).all()
    assert np.isneginf(result.scores[:, n:]).all()
    assert result.doc_ids == [f"doc-{i}" for i in range(len(docs))]


# ---------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_brute_force_reference(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = 8
    docs = random_corpus(rng, 40, dim)
    sizes = split(rng, len(docs), 4)
    store = Embeddings(write_root(tmp_path, docs, sizes, dim))
    # Mixed query lengths; float16 and float32 queries are both accepted.
    queries = [unit_vectors(rng, int(n), dim) for n in rng.integers(1, 8, 6)]
    queries[0] = queries[0].astype(np.float32)
    seen: list[int] = []
    result = exact_search(store, queries, k=10, progress=seen.append)
    assert seen == sizes
    assert_matches_reference(result, queries, docs, 10)


@pytest.mark.parametrize("seed", [0, 1])
def test_memory_budget_does_not_change_the_result(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = 8
    docs = random_corpus(rng, 30, dim)
    store = Embeddings(write_root(tmp_path, docs, split(rng, 30, 3), dim))
    queries = [unit_vectors(rng, int(n), dim) for n in rng.integers(1, 8, 5)]
    results = [exact_search(store, queries, k=7, memory_budget_bytes=b) for b in BUDGETS]
    for r in results:
        assert_matches_reference(r, queries, docs, 7)
        np.testing.assert_array_equal(r.doc_index, results[-1].doc_index)
        # Not bit-identical: float32 GEMM rounds differently for different block shapes
        # (see test_duplicates_with_float_scores_tie_exactly).
        np.testing.assert_allclose(r.scores, results[-1].scores, atol=1e-6, rtol=0)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_docs=st.integers(2, 25),
    n_shards=st.integers(1, 4),
    k=st.integers(1, 30),
    budget=st.sampled_from(BUDGETS[:-1]),
)
def test_budget_invariance_property(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    n_docs: int,
    n_shards: int,
    k: int,
    budget: int,
) -> None:
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(1, 17))
    docs = random_corpus(rng, n_docs, dim, max_len=5)
    sizes = split(rng, n_docs, min(n_shards, n_docs))
    store = Embeddings(write_root(tmp_path_factory.mktemp("root"), docs, sizes, dim))
    queries = [unit_vectors(rng, int(n), dim) for n in rng.integers(1, 6, 4)]
    small = exact_search(store, queries, k=k, memory_budget_bytes=budget)
    large = exact_search(store, queries, k=k)
    assert small.doc_index.shape == large.doc_index.shape == (4, k)
    np.testing.assert_allclose(small.scores, large.scores, atol=1e-6, rtol=0)
    # Identical rankings, except where float32 rounding may reorder near-ties: positions
    # whose reference score is within 1e-5 of a neighbour's are left out.
    ref_sorted = -np.sort(-reference_scores(queries, docs), axis=1)
    close = np.abs(np.diff(ref_sorted, axis=1)) <= 1e-5
    ambiguous = np.zeros(ref_sorted.shape, bool)
    ambiguous[:, 1:] |= close
    ambiguous[:, :-1] |= close
    n = min(k, n_docs)
    clear = ~ambiguous[:, :n]
    np.testing.assert_array_equal(small.doc_index[:, :n][clear], large.doc_index[:, :n][clear])
    assert (small.doc_index[:, n:] == -1).all() and (large.doc_index[:, n:] == -1).all()
    # Whatever the order, the result holds exactly min(k, n_docs) distinct documents.
    for row in large.doc_index:
        real = row[row >= 0]
        assert len(real) == min(k, n_docs) == len(set(real.tolist()))
    ref = reference_scores(queries, docs)
    got = np.take_along_axis(ref, large.doc_index[:, :n], 1)
    np.testing.assert_allclose(large.scores[:, :n], got, atol=1e-3, rtol=0)
    # Scores come out in non-increasing order.
    assert (np.diff(large.scores[:, :n], axis=1) <= 0).all()


@pytest.mark.parametrize("budget", [1, 1 << 30])
def test_k_larger_than_corpus_pads_with_minus_one(tmp_path: Path, budget: int) -> None:
    rng = np.random.default_rng(7)
    dim = 4
    docs = random_corpus(rng, 5, dim)
    store = Embeddings(write_root(tmp_path, docs, [2, 3], dim))
    queries = [unit_vectors(rng, 3, dim), unit_vectors(rng, 1, dim)]
    result = exact_search(store, queries, k=9, memory_budget_bytes=budget)
    assert_matches_reference(result, queries, docs, 9)
    assert (result.doc_index[:, 5:] == -1).all()


@pytest.mark.parametrize("budget", BUDGETS)
def test_duplicate_documents_rank_by_ascending_doc_index(tmp_path: Path, budget: int) -> None:
    """Duplicates in different shards and blocks, with exactly representable scores (every
    summation order gives the same float32), rank in ascending doc_index order."""
    rng = np.random.default_rng(11)
    dim = 8
    eye = np.eye(dim, dtype=np.float16)
    twin = eye[[0, 3, 5]] * np.float16(0.5)
    docs = [unit_vectors(rng, int(n), dim) * np.float16(0.25) for n in rng.integers(1, 9, 14)]
    twins_at = [12, 1, 6, 5, 9]  # shard sizes 3, 2, 5, 4: shards 0, 2, 2, 3 and 1
    for pos in twins_at:
        docs[pos] = twin.copy()
    store = Embeddings(write_root(tmp_path, docs, [3, 2, 5, 4], dim))
    queries = [eye[[0, 3, 5]], eye[[3]], eye[[5, 0, 0, 3]]]  # twins score 1.5, 0.5, 2.0
    result = exact_search(store, queries, k=7, memory_budget_bytes=budget)
    for row, scores, want in zip(result.doc_index, result.scores, [1.5, 0.5, 2.0], strict=True):
        assert row[:5].tolist() == sorted(twins_at)
        assert scores[:5].tolist() == [want] * 5
        assert scores[5] < want  # others: <= 0.25 per query token, below every twin


def test_all_equal_scores_keep_corpus_order(tmp_path: Path) -> None:
    dim = 2
    docs = [np.array([[1.0, 0.0]], np.float16)] * 7 + [np.zeros((0, dim), np.float16)]
    store = Embeddings(write_root(tmp_path, docs, [3, 1, 4], dim))
    q = [np.array([[0.0, 1.0]], np.float16)]  # orthogonal: every document scores 0
    for budget in BUDGETS:
        result = exact_search(store, q, k=5, memory_budget_bytes=budget)
        assert result.doc_index.tolist() == [[0, 1, 2, 3, 4]]
        assert result.scores.tolist() == [[0.0] * 5]


def test_empty_document_scores_zero(tmp_path: Path) -> None:
    dim = 2
    docs = [
        np.array([[-1.0, 0.0]], np.float16),  # scores -1
        np.zeros((0, dim), np.float16),  # empty: 0
        np.array([[1.0, 0.0]], np.float16),  # scores 1
    ]
    store = Embeddings(write_root(tmp_path, docs, [1, 2], dim))
    result = exact_search(store, [np.array([[1.0, 0.0]], np.float32)], k=3)
    assert result.doc_index.tolist() == [[2, 1, 0]]
    assert result.scores.tolist() == [[1.0, 0.0, -1.0]]


def test_bad_queries_and_k(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store = Embeddings(write_root(tmp_path, random_corpus(rng, 4, 8), [4], 8))
    with pytest.raises(ValueError, match=r"query 1 has shape \(3, 4\); expected \(n_tokens, 8\)"):
        exact_search(store, [unit_vectors(rng, 2, 8), unit_vectors(rng, 3, 4)], k=3)
    with pytest.raises(ValueError, match="query 0"):
        exact_search(store, [np.ones(8, np.float32)], k=3)  # 1-D
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be positive"):
            exact_search(store, [unit_vectors(rng, 2, 8)], k=k)


# ---------------------------------------------------------------------------- topk_merge


def test_topk_merge_docstring_case() -> None:
    s, i = topk_merge(
        np.array([[1.0, 0.5]]), np.array([[7, 3]]), np.array([[0.5, 2.0]]), np.array([[1, 9]]), 3
    )
    assert i.tolist() == [[9, 7, 1]]
    assert s.tolist() == [[2.0, 1.0, 0.5]]


def test_topk_merge_ties_break_by_smaller_index_in_either_input() -> None:
    a_s, a_i = np.array([[1.0, 1.0, 0.0]]), np.array([[8, 2, 4]])
    b_s, b_i = np.array([[1.0, 0.0]]), np.array([[5, 1]])
    for args in [(a_s, a_i, b_s, b_i), (b_s, b_i, a_s, a_i)]:
        s, i = topk_merge(*args, 4)
        assert i.tolist() == [[2, 5, 8, 1]]
        assert s.tolist() == [[1.0, 1.0, 1.0, 0.0]]


def test_topk_merge_padding_sorts_last_and_rows_are_independent() -> None:
    a_s = np.array([[-np.inf, -np.inf], [3.0, -np.inf]])
    a_i = np.array([[-1, -1], [4, -1]])
    b_s = np.array([[-2.0, 0.5, -np.inf], [3.0, 3.0, 1.0]])
    b_i = np.array([[0, 6, 2], [9, 0, 5]])
    s, i = topk_merge(a_s, a_i, b_s, b_i, 4)
    # Row 0: doc 2 really scored -inf? No such score occurs in practice, but a real index
    # with -inf still ranks before padding (-1).
    assert i.tolist() == [[6, 0, 2, -1], [0, 4, 9, 5]]
    assert s.tolist() == [[0.5, -2.0, -np.inf, -np.inf], [3.0, 3.0, 3.0, 1.0]]
    s1, i1 = topk_merge(a_s, a_i, b_s, b_i, 1)
    assert i1.tolist() == [[6], [0]] and s1.tolist() == [[0.5], [3.0]]


# ------------------------------------------------------ prefixes of a view (scaling studies)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_one_pass_over_a_view_gives_the_exact_top_k_of_every_prefix(
    tmp_path: Path, seed: int
) -> None:
    """A study's corpus: all of ROOT A, then the first m documents of ROOT B (cut inside a
    shard). Every stop's result equals brute force over exactly that prefix."""
    rng = np.random.default_rng(seed)
    dim = 8
    docs_a, docs_b = random_corpus(rng, 13, dim), random_corpus(rng, 30, dim)
    root_a = write_root(tmp_path / "a", docs_a, split(rng, 13, 2), dim)
    root_b = write_root(tmp_path / "b", docs_b, split(rng, 30, 4), dim, id_base=13)
    m = int(rng.integers(1, 30))
    view = EmbeddingsView([ViewPart(str(root_a)), ViewPart(str(root_b), m)])
    corpus = docs_a + docs_b[:m]
    assert view.n_docs == 13 + m
    assert view.n_tokens == sum(d.shape[0] for d in corpus)
    data = list(view)
    np.testing.assert_array_equal(np.concatenate([d.doc_index for d in data]), np.arange(13 + m))
    np.testing.assert_array_equal(np.concatenate([d.tokens for d in data]), np.concatenate(corpus))
    queries = [unit_vectors(rng, int(n), dim) for n in rng.integers(1, 8, 5)]
    stops = sorted({int(s) for s in rng.integers(1, 13 + m + 1, 3)} | {13 + m})
    results = exact_search_prefixes(view, queries, stops[::-1], k=6)
    for stop, result in zip(stops[::-1], results, strict=True):
        assert_matches_reference(result, queries, corpus[:stop], 6)


def test_a_view_refuses_more_documents_than_a_part_holds(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = write_root(tmp_path / "a", random_corpus(rng, 5, 4), [5], 4)
    with pytest.raises(ManifestError, match="holds 5 documents but the view needs its first 9"):
        EmbeddingsView([ViewPart(str(root), 9)])


def test_view_identity_follows_its_documents(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = write_root(tmp_path / "a", random_corpus(rng, 4, 4), [4], 4)
    b = write_root(tmp_path / "b", random_corpus(rng, 9, 4), [5, 4], 4, id_base=4)
    sha = [
        EmbeddingsView([ViewPart(str(a)), ViewPart(str(b), n)]).manifest_sha256 for n in (3, 3, 6)
    ]
    assert sha[0] == sha[1] != sha[2]
