"""MaxSim scoring: padded and flat layouts against the float64 numpy reference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from colbert_core.search.maxsim import (
    CandidateScorer,
    max_per_segment,
    maxsim_flat,
    maxsim_padded,
    maxsim_reference,
    piece_rows,
)

ATOL = 1e-4
# Values at masked-out positions: large, so a masking bug cannot hide inside the tolerance.
GARBAGE = 50.0


@dataclass
class Batch:
    """Queries and documents as padded tensors with (non-prefix) random masks."""

    queries: np.ndarray  # (n_q, L_q, dim) float32
    query_mask: np.ndarray  # (n_q, L_q) bool
    docs: np.ndarray  # (n_d, L_d, dim) float32
    doc_mask: np.ndarray  # (n_d, L_d) bool

    def query_tokens(self, i: int) -> np.ndarray:
        return self.queries[i][self.query_mask[i]]

    def doc_tokens(self, j: int) -> np.ndarray:
        return self.docs[j][self.doc_mask[j]]

    def reference(self) -> np.ndarray:
        n_q, n_d = self.queries.shape[0], self.docs.shape[0]
        out = np.zeros((n_q, n_d), dtype=np.float64)
        for i in range(n_q):
            for j in range(n_d):
                out[i, j] = maxsim_reference(self.query_tokens(i), self.doc_tokens(j))
        return out

    def padded(self) -> np.ndarray:
        return maxsim_padded(
            torch.from_numpy(self.queries),
            torch.from_numpy(self.query_mask),
            torch.from_numpy(self.docs),
            torch.from_numpy(self.doc_mask),
        ).numpy()

    def flat(self) -> np.ndarray:
        q_lengths = self.query_mask.sum(axis=1)
        d_lengths = self.doc_mask.sum(axis=1)
        dim = self.queries.shape[2]
        q_tokens = self.queries[self.query_mask].reshape(-1, dim)
        d_tokens = self.docs[self.doc_mask].reshape(-1, dim)
        offsets = np.zeros(len(d_lengths) + 1, dtype=np.int64)
        np.cumsum(d_lengths, out=offsets[1:])
        return maxsim_flat(
            torch.from_numpy(np.ascontiguousarray(q_tokens)),
            torch.from_numpy(q_lengths.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(d_tokens)),
            torch.from_numpy(offsets),
        ).numpy()


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    dim = draw(st.integers(1, 16))
    n_q = draw(st.integers(1, 4))
    n_d = draw(st.integers(0, 6))
    l_q = draw(st.integers(1, 6))
    # L_d == 0 (every document empty, no token positions at all) is a valid batch too.
    l_d = draw(st.integers(0, 7))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q_mask = rng.random((n_q, l_q)) < draw(st.sampled_from([0.3, 0.7, 1.0]))
    d_mask = rng.random((n_d, l_d)) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]))
    if n_d and l_d and draw(st.booleans()):
        d_mask[rng.integers(n_d)] = False  # at least one empty document
    queries = rng.uniform(-1, 1, (n_q, l_q, dim)).astype(np.float32)
    docs = rng.uniform(-1, 1, (n_d, l_d, dim)).astype(np.float32)
    queries[~q_mask] = GARBAGE
    docs[~d_mask] = GARBAGE
    return Batch(queries, q_mask, docs, d_mask)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_padded_matches_reference(batch: Batch) -> None:
    got = batch.padded()
    assert got.dtype == np.float32
    assert got.shape == (batch.queries.shape[0], batch.docs.shape[0])
    np.testing.assert_allclose(got, batch.reference(), atol=ATOL, rtol=0)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_flat_matches_reference(batch: Batch) -> None:
    got = batch.flat()
    assert got.dtype == np.float32
    assert got.shape == (batch.queries.shape[0], batch.docs.shape[0])
    np.testing.assert_allclose(got, batch.reference(), atol=ATOL, rtol=0)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_padded_equals_flat_and_empty_docs_score_exactly_zero(batch: Batch) -> None:
    padded, flat = batch.padded(), batch.flat()
    np.testing.assert_allclose(padded, flat, atol=1e-5, rtol=0)
    empty = ~batch.doc_mask.any(axis=1)
    # Exactly 0, not "close to": -inf must not leak, nor garbage from padded positions.
    assert (padded[:, empty] == 0.0).all()
    assert (flat[:, empty] == 0.0).all()
    # A query without real tokens scores 0 against everything.
    no_tokens = ~batch.query_mask.any(axis=1)
    assert (padded[no_tokens] == 0.0).all()
    assert (flat[no_tokens] == 0.0).all()


def test_hand_computed_scores() -> None:
    q = np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)
    d = np.array([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [9.0, 9.0]]], dtype=np.float32)
    batch = Batch(q, np.ones((1, 2), bool), d, np.array([[True, True], [True, False]]))
    # Doc 0: max(1, .6) + max(0, .8) = 1.8; doc 1 (one real token (0, 1)): 0 + 1 = 1.
    np.testing.assert_allclose(batch.padded(), [[1.8, 1.0]], atol=1e-6)
    np.testing.assert_allclose(batch.flat(), [[1.8, 1.0]], atol=1e-6)
    np.testing.assert_allclose(batch.reference(), [[1.8, 1.0]], atol=1e-12)


def test_negative_similarities_are_not_clamped() -> None:
    # Every similarity is negative: an empty document (0) must beat this one.
    q = np.array([[[1.0, 0.0]]], dtype=np.float32)
    d = np.array([[[-1.0, 0.0], [-0.5, 0.5]], [[7.0, 7.0], [7.0, 7.0]]], dtype=np.float32)
    batch = Batch(q, np.ones((1, 1), bool), d, np.array([[True, True], [False, False]]))
    np.testing.assert_allclose(batch.padded(), [[-0.5, 0.0]], atol=1e-6)
    np.testing.assert_allclose(batch.flat(), [[-0.5, 0.0]], atol=1e-6)


@pytest.mark.parametrize("n_docs", [0, 3])
def test_all_documents_empty(n_docs: int) -> None:
    q = torch.ones(2, 3, 4)
    qm = torch.ones(2, 3, dtype=torch.bool)
    got = maxsim_padded(q, qm, torch.zeros(n_docs, 0, 4), torch.zeros(n_docs, 0, dtype=torch.bool))
    assert got.shape == (2, n_docs) and (got == 0).all()
    flat = maxsim_flat(
        q.reshape(-1, 4), torch.tensor([3, 3]), torch.zeros(0, 4), torch.zeros(n_docs + 1).long()
    )
    assert flat.shape == (2, n_docs) and (flat == 0).all()


def test_reference_is_float64_and_handles_empty_document() -> None:
    q = np.array([[1.0, 2.0]], dtype=np.float16)
    assert maxsim_reference(q, np.zeros((0, 2), np.float16)) == 0.0
    # float16 inputs are widened before the product: 300 * 300 overflows float16 (max 65504).
    big = np.array([[300.0, 0.0]], dtype=np.float16)
    assert maxsim_reference(big, big) == 90000.0


# ------------------------------------------------------------ candidate scorer (token store)


def _store(rng: np.random.Generator, lengths: list[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = rng.standard_normal((int(offsets[-1]), dim)).astype(np.float16)
    return tokens, offsets


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    block=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_candidate_scorer_matches_reference(lengths: list[int], block: int, seed: int) -> None:
    """Any block size (documents split across blocks, longer than a block, empty), any
    candidate subset in any order: the float64 reference, candidate by candidate."""
    rng = np.random.default_rng(seed)
    tokens, offsets = _store(rng, lengths, 8)
    cand = rng.permutation(len(lengths))[: rng.integers(1, len(lengths) + 1)]
    query = rng.standard_normal((5, 8)).astype(np.float32)
    scorer = CandidateScorer(block_tokens=block)
    got = scorer.score(query, tokens, offsets, cand)
    want = [maxsim_reference(query, tokens[offsets[d] : offsets[d + 1]]) for d in cand]
    np.testing.assert_allclose(got, want, atol=ATOL)
    # Reused buffers: a second, different call is not polluted by the first.
    other = cand[::-1]
    np.testing.assert_allclose(scorer.score(query, tokens, offsets, other), want[::-1], atol=ATOL)


def test_candidate_scorer_reads_a_read_only_memmap(tmp_path) -> None:
    rng = np.random.default_rng(7)
    tokens, offsets = _store(rng, [30, 0, 5000, 12], 16)
    path = tmp_path / "tokens.f16"
    tokens.tofile(path)
    store = np.memmap(path, dtype=np.float16, mode="r").reshape(-1, 16)
    query = rng.standard_normal((3, 16)).astype(np.float32)
    got = CandidateScorer(block_tokens=1024).score(query, store, offsets, np.array([3, 2, 1, 0]))
    want = [maxsim_reference(query, tokens[offsets[d] : offsets[d + 1]]) for d in (3, 2, 1, 0)]
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert got[2] == 0.0  # the empty document
    assert not store.flags.writeable


def test_candidate_scorer_no_candidates_and_bad_block() -> None:
    tokens, offsets = _store(np.random.default_rng(0), [3], 4)
    out = CandidateScorer().score(np.ones((2, 4)), tokens, offsets, np.array([], dtype=np.int64))
    assert out.shape == (0,) and out.dtype == np.float32
    with pytest.raises(ValueError, match="block_tokens must be positive"):
        CandidateScorer(block_tokens=0)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 70), min_size=0, max_size=12),
    piece=st.sampled_from([1, 2, 4, 16, 64]),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_max_per_segment_over_padded_pieces(lengths, piece, n, seed) -> None:
    """Segments anywhere in a table (gaps, any order), of any length (empty, shorter and
    longer than a piece, exact multiples): the per-segment maximum of a plain loop."""
    rng = np.random.default_rng(seed)
    table = torch.from_numpy(rng.standard_normal((400, n)).astype(np.float32))
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = rng.integers(0, 400 - lengths.max(initial=0) + 1, len(lengths))
    rows, counts = piece_rows(starts, lengths, piece)
    assert rows.size == counts.sum() * piece
    got = max_per_segment(torch.index_select(table, 0, torch.from_numpy(rows)), counts)
    assert got.shape == (len(lengths), n)
    for k, (s, m) in enumerate(zip(starts, lengths, strict=True)):
        want = table[s : s + m].numpy().max(axis=0) if m else np.zeros(n, np.float32)
        np.testing.assert_array_equal(got[k], want)


def test_piece_rows_refuses_a_piece_that_is_not_a_power_of_two() -> None:
    with pytest.raises(ValueError, match="power of two"):
        piece_rows(np.array([0]), np.array([3]), 3)
