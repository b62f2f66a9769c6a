"""The residual token store: codec, scoring without decoding, build, validation on load."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_index import DIM, Corpus, make_clustered_root

from colbert_core.errors import ConfigError
from colbert_core.index import META, IndexConfig, IndexLoadError, build_index, load_index
from colbert_core.search import SearchParams, resolved_params, search, warm
from colbert_core.search.maxsim import CandidateScorer, maxsim_reference
from colbert_core.tokenstore import TOKENS
from colbert_core.tokenstore.pq import CODEBOOKS, PQCodec
from colbert_core.tokenstore.residual import (
    CENTROIDS,
    CIDS,
    CODES,
    SCALES,
    ResidualCodec,
    ResidualFormatError,
    ResidualStore,
    distinct_per_segment,
    unit_scales,
)
from colbert_core.tokenstore.store import StoreSpec


def reference_decode(
    codec: ResidualCodec | PQCodec, cids: np.ndarray, codes: np.ndarray, scales: np.ndarray
) -> np.ndarray:
    """Decode one dimension at a time in float64 from the documented layout, then scale
    each vector by its stored ``scales``; independent of the codec's tables.

    Residual codec: byte ``p`` holds dimensions ``p * 8/nbits ...``, the first in the
    lowest bits. PQ codec: byte ``p`` is the codeword of dimensions ``p * dim/m ...``.
    The stored scales must be ``1 / |vector|`` to float16 precision (they are compared
    here; the stored ones are used because a float64 norm and the store's float32 one
    can round to neighbouring float16 values).
    """
    if isinstance(codec, PQCodec):
        sub = codec.dim // codec.m
        out = np.zeros((len(cids), codec.dim), dtype=np.float64)
        for t in range(len(cids)):
            for d in range(codec.dim):
                word = codec.codebooks[d // sub, int(codes[t, d // sub]), d % sub]
                out[t, d] = float(codec.centroids[cids[t], d]) + float(word)
        return _scaled(out, scales)
    per = 8 // codec.nbits
    mask = (1 << codec.nbits) - 1
    out = np.zeros((len(cids), codec.dim), dtype=np.float64)
    for t in range(len(cids)):
        for d in range(codec.dim):
            bucket = (int(codes[t, d // per]) >> (codec.nbits * (d % per))) & mask
            out[t, d] = float(codec.centroids[cids[t], d]) + float(codec.weights[bucket])
    return _scaled(out, scales)


def _scaled(raw: np.ndarray, scales: np.ndarray) -> np.ndarray:
    scales = np.asarray(scales, dtype=np.float64)
    np.testing.assert_allclose(scales, 1.0 / np.linalg.norm(raw, axis=1), rtol=1e-3)
    return raw * scales[:, None]


def random_store(rng: np.random.Generator, nbits: int, dim: int, n_tokens: int, k: int):
    """A store of random tokens: ``nbits`` 1, 2 or 4 for the residual codec, or a negative
    ``-m`` for a PQ codec of ``m`` bytes with random codewords (scoring does not depend on
    how they were fitted; training is tested on built indexes)."""
    centroids = rng.standard_normal((k, dim)).astype(np.float32)
    if nbits < 0:
        words = 0.3 * rng.standard_normal((-nbits, 256, dim // -nbits))
        codec: ResidualCodec | PQCodec = PQCodec(centroids, words.astype(np.float32))
    else:
        sample = rng.standard_normal((max(n_tokens, 8), dim)).astype(np.float32)
        codec = ResidualCodec.train(centroids, sample, rng.integers(0, k, len(sample)), nbits)
    x = rng.standard_normal((n_tokens, dim)).astype(np.float32)
    cids = rng.integers(0, k, n_tokens)
    codes = codec.encode(x, cids)
    scales = unit_scales(codec.decode(cids, codes))
    return codec, ResidualStore(codec, cids.astype(np.uint16), codes, scales), x, cids


@settings(max_examples=60, deadline=None)
@given(
    nbits=st.sampled_from([1, 2, 4, -1, -2, -4]),  # negative: pq with that many bytes
    dim=st.sampled_from([8, 16, 24]),
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    n_q=st.integers(1, 6),
    block=st.sampled_from([1, 7, 4096]),
    seed=st.integers(0, 2**16),
)
def test_scores_equal_numpy_decode_then_maxsim(nbits, dim, lengths, n_q, block, seed) -> None:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    codec, store, _, cids = random_store(rng, nbits, dim, int(offsets[-1]), k=5)
    decoded = reference_decode(codec, cids, np.asarray(store.codes), store.scales)
    np.testing.assert_allclose(store.decode(np.arange(store.n_tokens)), decoded, atol=1e-5)
    query = rng.standard_normal((n_q, dim)).astype(np.float32)
    cand = np.sort(rng.choice(len(lengths), size=rng.integers(0, len(lengths) + 1), replace=False))
    got = CandidateScorer(block_tokens=block).score(query, store, offsets, cand)
    want = [maxsim_reference(query, decoded[offsets[c] : offsets[c + 1]]) for c in cand]
    np.testing.assert_allclose(got, np.asarray(want, dtype=np.float64), rtol=1e-5, atol=1e-4)
    for c, s in zip(cand, got, strict=True):
        if lengths[c] == 0:
            assert s == 0.0  # an empty document scores 0, as in the float16 store


def reference_centroid_maxsim(query, centroids, cids, offsets, cand) -> np.ndarray:
    """PLAID's centroid interaction in float64: each token replaced by its centroid."""
    out = np.zeros(len(cand))
    for i, c in enumerate(cand):
        cents = centroids[cids[offsets[c] : offsets[c + 1]]].astype(np.float64)
        if len(cents):
            out[i] = (query.astype(np.float64) @ cents.T).max(axis=1).sum()
    return out


@settings(max_examples=40, deadline=None)
@given(
    nbits=st.sampled_from([1, 2, 4, -2, -8]),
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=16),
    full=st.integers(1, 17),
    seed=st.integers(0, 2**16),
)
def test_full_scores_keeps_the_best_by_centroid_maxsim(nbits, lengths, full, seed) -> None:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    codec, store, _, cids = random_store(rng, nbits, 16, int(offsets[-1]), k=5)
    query = rng.standard_normal((4, 16)).astype(np.float32)
    cand = np.sort(rng.choice(len(lengths), size=rng.integers(0, len(lengths) + 1), replace=False))
    docs, scores = CandidateScorer(block_tokens=7).score_best(query, store, offsets, cand, full)
    approx = reference_centroid_maxsim(query, codec.centroids, cids, offsets, cand)
    if len(cand) <= full:
        assert docs.tolist() == cand.tolist()
    else:
        assert len(docs) == full and np.all(np.diff(docs) > 0)
        # Every kept document's centroid score is at least every dropped one's (up to
        # float32 rounding of near ties).
        kept = np.isin(cand, docs)
        assert approx[kept].min() >= approx[~kept].max() - 1e-4
    decoded = reference_decode(codec, cids, np.asarray(store.codes), store.scales)
    want = [maxsim_reference(query, decoded[offsets[d] : offsets[d + 1]]) for d in docs]
    np.testing.assert_allclose(scores, np.asarray(want), rtol=1e-5, atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=0, max_size=12),
    k=st.sampled_from([1, 3, 70_000]),
    chunk=st.sampled_from([1, 5, 64, 1 << 22]),
    seed=st.integers(0, 2**16),
)
def test_distinct_per_segment_equals_a_set_per_document(lengths, k, chunk, seed) -> None:
    """Any chunking of the sort (a document longer than a chunk, many per chunk), uint16
    and uint32 ids, empty documents: each document's set of ids, ascending."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, k, int(offsets[-1])).astype(np.uint16 if k < 65_536 else np.uint32)
    ids, bounds = distinct_per_segment(values, offsets, chunk)
    assert ids.dtype == values.dtype and bounds.tolist()[:1] == [0]
    assert len(bounds) == len(lengths) + 1 and bounds[-1] == len(ids)
    for d in range(len(lengths)):
        want = sorted(set(values[offsets[d] : offsets[d + 1]].tolist()))
        assert ids[bounds[d] : bounds[d + 1]].tolist() == want


def test_lookup_tables_in_batches_equal_one_table_per_query(monkeypatch) -> None:
    """The centroid products of several queries computed together, across product
    boundaries (a budget of 3 query tokens: queries split over products and alone), equal
    each query's own table, and the documents' distinct centroids are built once."""
    rng = np.random.default_rng(5)
    _, store, _, _ = random_store(rng, 2, 16, 40, k=4)
    queries = [rng.standard_normal((n, 16)).astype(np.float32) for n in (1, 2, 5, 1, 3)]
    monkeypatch.setattr("colbert_core.tokenstore.residual.TABLE_BATCH_BYTES", 3 * 4 * 4)
    tables = list(store.lookup_tables(queries))
    assert len(tables) == len(queries)
    for q, table in zip(queries, tables, strict=True):
        np.testing.assert_allclose(table.numpy(), store.lookup_table(q).numpy(), rtol=1e-6)
    offsets = np.array([0, 10, 10, 40])
    first = store.document_centroids(offsets)
    assert store.document_centroids(offsets)[0] is first[0]


def test_full_scores_drops_the_document_far_from_the_query_centroids() -> None:
    # Two centroids, +e0 and -e0; a query along +e0. Document 1 sits on -e0 and is the
    # one dropped with full_scores=2; a float16 store has no centroids and scores all 3.
    centroids = np.zeros((2, 8), dtype=np.float32)
    centroids[0, 0], centroids[1, 0] = 1.0, -1.0
    codec = ResidualCodec(
        centroids, np.array([0.0], np.float32), np.array([-0.1, 0.1], np.float32), 1
    )
    cids = np.array([0, 1, 1, 0, 0])
    x = centroids[cids]
    store = ResidualStore(codec, cids.astype(np.uint16), codec.encode(x, cids),
                          unit_scales(codec.decode(cids, codec.encode(x, cids))))  # fmt: skip
    offsets, cand = np.array([0, 1, 3, 5]), np.arange(3)
    query = centroids[:1]
    docs, _ = CandidateScorer().score_best(query, store, offsets, cand, 2)
    assert docs.tolist() == [0, 2]
    docs, _ = CandidateScorer().score_best(query, store, offsets, cand, None)
    assert docs.tolist() == [0, 1, 2]
    f16 = x.astype(np.float16)
    docs, _ = CandidateScorer().score_best(query, f16, offsets, cand, 2)
    assert docs.tolist() == [0, 1, 2]


def test_encode_packs_low_bits_first_and_buckets_by_cutoffs() -> None:
    codec = ResidualCodec(
        np.zeros((1, 4), np.float32),
        np.array([-1.0, 0.0, 1.0], np.float32),
        np.array([-2.0, -0.5, 0.5, 2.0], np.float32),
        2,
    )
    codes = codec.encode(np.array([[-3.0, -0.5, 0.5, 3.0]], np.float32), np.zeros(1, int))
    assert codes.tolist() == [[0b11100100]]  # buckets 0, 1, 2, 3 from the low bits up
    assert codec.decode(np.zeros(1, int), codes).tolist() == [[-2.0, -0.5, 0.5, 2.0]]


def test_more_bits_reconstruct_better() -> None:
    cosines = []
    for nbits in (1, 2, 4):
        _, store, x, _ = random_store(np.random.default_rng(0), nbits, 32, 2000, k=16)
        decoded = store.decode(np.arange(2000))
        np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=2e-3)
        cosines.append(np.mean((decoded * x).sum(axis=1) / np.linalg.norm(x, axis=1)))
    assert cosines[0] < cosines[1] < cosines[2] and cosines[2] > 0.95, cosines


def test_store_spec_parses_and_refuses_with_the_fix() -> None:
    assert StoreSpec.parse("residual") == StoreSpec("residual", 2)
    assert str(StoreSpec.parse("Residual:4")) == "residual:4"
    assert StoreSpec.parse("PQ:64") == StoreSpec("pq", m=64) and str(StoreSpec("pq", m=8)) == "pq:8"
    for bad in ("residual:3", "residual:x", "opq", "float16:2"):
        with pytest.raises(ConfigError, match=r"float16|residual"):
            StoreSpec.parse(bad)
    for bad in ("pq", "pq:x", "pq:0"):
        with pytest.raises(ConfigError, match=r"e\.g\. pq:64"):
            StoreSpec.parse(bad)
    with pytest.raises(ConfigError, match=r"--store pq:60: .*divides the dimension 384.*pq:64"):
        StoreSpec.parse("pq:60").check(384, 10_000)
    with pytest.raises(ConfigError, match=r"at least 256 tokens.*use residual:B"):
        StoreSpec.parse("pq:8").check(32, 100)
    StoreSpec.parse("pq:8").check(32, 256)
    with pytest.raises(ConfigError, match="store"):
        IndexConfig(store="bf16")
    with pytest.raises(ResidualFormatError, match="multiple of 8"):
        ResidualCodec(np.zeros((1, 12), np.float32), np.zeros(1, np.float32),
                      np.zeros(2, np.float32), 1)  # fmt: skip
    # The residual's byte packing is refused before training too, naming what fits.
    with pytest.raises(
        ConfigError, match=r"--store residual:1: dimension 100 .*use residual:2 or residual:4"
    ):
        StoreSpec.parse("residual:1").check(100, 10_000)
    StoreSpec.parse("residual:2").check(100, 10_000)


@pytest.mark.parametrize("nbits", [1, 2, 4, -4])
def test_a_query_without_tokens_scores_zero_as_on_float16(nbits: int) -> None:
    rng = np.random.default_rng(3)
    _, store, x, _ = random_store(rng, nbits, 16, 30, k=4)
    offsets, cand = np.array([0, 10, 30]), np.array([0, 1])
    empty = np.zeros((0, 16), np.float32)
    f16 = CandidateScorer().score(empty, x.astype(np.float16), offsets, cand)
    got = CandidateScorer().score(empty, store, offsets, cand)
    assert got.tolist() == f16.tolist() == [0.0, 0.0]
    # ann.search builds every query's table up front, empty ones included.
    assert store.lookup_table(empty).shape == (store.codec.code_bytes * 256 + 4, 0)


# ------------------------------------------------------------------ build and load


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_clustered_root(tmp_path_factory.mktemp("residual") / "root")


def _build(corpus: Corpus, out: Path, index: IndexConfig) -> Path:
    spec = index.resolve(n_tokens=corpus.n_tokens, dim=DIM)
    build_index(str(corpus.root), str(out), spec, token_store=index.store_spec,
                build=index.to_dict())  # fmt: skip
    return out


@pytest.fixture(scope="module")
def built(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("residual-idx")
    configs = {
        "ivf-f16": IndexConfig(type="ivfpq", nlist=32, pq_m=8, pq_nbits=6),
        "ivf-r2": IndexConfig(type="ivfpq", nlist=32, pq_m=8, pq_nbits=6, store="residual:2"),
        "flat-r1": IndexConfig(type="flat", store="residual:1"),
        "ivf-pq": IndexConfig(type="ivfpq", nlist=32, pq_m=8, pq_nbits=6, store="pq:8"),
        "flat-pq": IndexConfig(type="flat", store="pq:16"),
    }
    return {name: _build(corpus, base / name, cfg) for name, cfg in configs.items()}


def test_ivf_store_reuses_the_index_centroids_and_lists(corpus: Corpus, built) -> None:
    f16, res = load_index(built["ivf-f16"]), load_index(built["ivf-r2"])
    meta = res.meta.to_dict()
    assert meta["store"]["kind"] == "residual" and meta["store"]["nbits"] == 2
    assert meta["store"]["centroids"] == "index" and meta["store"]["n_centroids"] == 32
    assert meta["build"]["store"] == "residual:2"
    # Same FAISS index as the float16 build; the store replaces tokens.f16.
    assert meta["files"]["index.faiss"] == f16.meta.to_dict()["files"]["index.faiss"]
    assert not (built["ivf-r2"] / TOKENS).exists() and not (built["ivf-r2"] / CENTROIDS).exists()
    assert {CIDS, CODES} <= set(meta["files"])
    per_token = DIM * 2 // 8 + 2 + 2  # codes, centroid id, scale
    assert meta["bytes_per_token"]["token_store"] == pytest.approx(per_token, abs=1e-3)
    assert res.store_kind == "residual" and f16.store_kind == "float16"
    # Each token's centroid is its IVF list.
    ivf = __import__("faiss").extract_index_ivf(res.index)
    for lst in (0, 7, 31):
        ids = __import__("faiss").rev_swig_ptr(
            ivf.invlists.get_ids(lst), ivf.invlists.list_size(lst)
        )
        assert np.all(np.asarray(res.store.cids)[np.asarray(ids)] == lst)
    # Decoded vectors are unit vectors close to the originals (2 bits per dimension).
    decoded = res.store.decode(np.arange(corpus.n_tokens))
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=2e-3)
    cosine = (decoded * corpus.tokens.astype(np.float32)).sum(axis=1)
    assert np.median(cosine) > 0.9


def test_pq_store_reuses_the_index_and_reconstructs_better_than_residual_bits(
    corpus: Corpus, built
) -> None:
    f16, pq, r2 = (load_index(built[n]) for n in ("ivf-f16", "ivf-pq", "ivf-r2"))
    meta = pq.meta.to_dict()
    assert meta["store"] == {**meta["store"], "kind": "pq", "m": 8, "centroids": "index"}
    assert meta["build"]["store"] == "pq:8" and pq.store_kind == "pq"
    assert meta["files"]["index.faiss"] == f16.meta.to_dict()["files"]["index.faiss"]
    assert (built["ivf-pq"] / CODEBOOKS).stat().st_size == 8 * 256 * (DIM // 8) * 4
    words = 8 * 256 * (DIM // 8) * 4 / corpus.n_tokens  # the codewords count too
    assert meta["bytes_per_token"]["token_store"] == pytest.approx(8 + 2 + 2 + words, abs=1e-3)
    assert np.array_equal(np.asarray(pq.store.cids), np.asarray(r2.store.cids))
    # 8 bytes of PQ (2 bits per dimension at d=32) decode closer than 2-bit buckets.
    x = corpus.tokens.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.arange(corpus.n_tokens)
    err_pq = np.linalg.norm(pq.store.decode(rows) - x, axis=1).mean()
    err_r2 = np.linalg.norm(r2.store.decode(rows) - x, axis=1).mean()
    assert err_pq < 0.8 * err_r2, (err_pq, err_r2)


def test_flat_index_store_trains_its_own_centroids(built) -> None:
    res = load_index(built["flat-r1"])
    store = res.meta.store
    assert store["centroids"] == "file" and store["nbits"] == 1
    assert (built["flat-r1"] / CENTROIDS).stat().st_size == store["n_centroids"] * DIM * 4


@pytest.mark.parametrize("factory", ["OPQ4,IVF16,Flat", "PCA16,IVF16,Flat"])
def test_pre_transformed_ivf_store_trains_its_own_centroids(
    corpus: Corpus, tmp_path: Path, factory: str
) -> None:
    # The IVF behind an OPQ rotation or a PCA has its centroids in the transformed space:
    # residuals to them decoded badly (OPQ) or failed after the whole build (PCA).
    folder = _build(corpus, tmp_path / "idx", IndexConfig(factory=factory, store="residual:2"))
    loaded = load_index(folder)
    assert loaded.meta.store["centroids"] == "file"
    decoded = loaded.store.decode(np.arange(corpus.n_tokens))
    cosine = (decoded * corpus.tokens.astype(np.float32)).sum(axis=1)
    assert np.median(cosine) > 0.9, np.median(cosine)
    # A store that claims this index's quantizer is refused with the fix.
    _edit_meta(folder, lambda m: m["store"].update(centroids="index"))
    with pytest.raises(IndexLoadError, match=r"pre-transform .*rebuild the index"):
        load_index(folder)


@pytest.mark.parametrize("name", ["ivf-r2", "flat-r1", "ivf-pq", "flat-pq"])
def test_search_through_the_store_equals_the_reference(corpus: Corpus, built, name) -> None:
    loaded = load_index(built[name])
    rng = np.random.default_rng(1)
    queries = [corpus.tokens[rng.choice(corpus.n_tokens, 8)].astype(np.float32) for _ in range(5)]
    results = search(loaded, queries, SearchParams(k=10, k_prime=16, max_candidates=40))
    for q, r in zip(queries, results, strict=True):
        assert len(r.doc_index) == 10
        for doc, score in zip(r.doc_index, r.scores, strict=True):
            rows = np.arange(loaded.doc_offsets[doc], loaded.doc_offsets[doc + 1])
            store = loaded.store
            ref = maxsim_reference(q, reference_decode(
                store.codec, np.asarray(store.cids)[rows], store.codes[rows], store.scales[rows]))  # fmt: skip
            assert score == pytest.approx(ref, abs=1e-4)


def test_search_with_full_scores_returns_k_exactly_scored_documents(corpus: Corpus, built) -> None:
    loaded = load_index(built["ivf-r2"])
    rng = np.random.default_rng(2)
    queries = [corpus.tokens[rng.choice(corpus.n_tokens, 8)].astype(np.float32) for _ in range(5)]
    every = search(loaded, queries, SearchParams(k=10, k_prime=16, max_candidates=40))
    pruned = search(
        loaded, queries, SearchParams(k=10, k_prime=16, max_candidates=40, full_scores=4)
    )
    for q, a, b in zip(queries, every, pruned, strict=True):
        # full_scores below k still scores k documents, each with its exact score; the
        # candidate set (what candidate recall measures) is the same.
        assert len(b.doc_index) == 10 and b.candidates.tolist() == a.candidates.tolist()
        exact = CandidateScorer().score(q, loaded.store, loaded.doc_offsets, b.doc_index)
        np.testing.assert_allclose(b.scores, exact, rtol=1e-6)


def test_warm_collects_the_document_centroids_before_the_first_search(
    corpus: Corpus, built, monkeypatch: pytest.MonkeyPatch
) -> None:
    import colbert_core.tokenstore.residual as residual

    loaded = load_index(built["ivf-r2"])
    params = SearchParams(k=10, k_prime=16, max_candidates=40, full_scores=4)
    warm(loaded, params)

    def on_the_clock(*_: object) -> None:
        raise AssertionError("the document centroids were collected during a search")

    monkeypatch.setattr(residual, "distinct_per_segment", on_the_clock)
    queries = [corpus.tokens[:8].astype(np.float32)]
    assert len(search(loaded, queries, params)[0].doc_index) == 10
    # Nothing is collected without full_scores, nor when it keeps every candidate that can
    # arrive (warm and search never ask for them then).
    for unused in (None, params.max_candidates):
        fresh = load_index(built["ivf-r2"])
        warm(fresh, dataclasses.replace(params, full_scores=unused))
        search(fresh, queries, dataclasses.replace(params, full_scores=unused))


def test_k_prime_above_the_token_count_asks_faiss_for_every_token_only(
    corpus: Corpus, built
) -> None:
    """Hits beyond the index's tokens are FAISS's -1 padding: a k_prime of a million over
    this index's tokens gives the same results without a (queries x 1M) hit array."""
    import tracemalloc

    loaded = load_index(built["ivf-f16"])
    queries = [corpus.tokens[:8].astype(np.float32)]
    every = SearchParams(k=10, k_prime=loaded.index.ntotal, max_candidates=1000, nprobe=32)
    # The recorded settings say what ran.
    huge = dataclasses.replace(every, k_prime=1_000_000)
    assert resolved_params(loaded.meta, huge).k_prime == loaded.n_tokens
    want = search(loaded, queries, every)[0]
    tracemalloc.start()
    try:
        got = search(loaded, queries, dataclasses.replace(every, k_prime=1_000_000))[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.doc_index.tolist() == want.doc_index.tolist()
    np.testing.assert_array_equal(got.scores, want.scores)
    assert peak < 8 * 1_000_000 * 12 // 4, peak  # unclamped: 232 MB (hits, ids, documents)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_damaged_store_files_are_refused_with_the_fix(built, tmp_path: Path) -> None:
    truncated = _copy(built["ivf-r2"], tmp_path / "truncated")
    with (truncated / CODES).open("r+b") as fh:
        fh.truncate((truncated / CODES).stat().st_size - 8)
    with pytest.raises(IndexLoadError, match=r"residual\.codes.*truncated or replaced"):
        load_index(truncated)

    flipped = _copy(built["ivf-r2"], tmp_path / "flipped")
    raw = bytearray((flipped / CIDS).read_bytes())
    raw[10] ^= 0xFF
    (flipped / CIDS).write_bytes(bytes(raw))
    with pytest.raises(IndexLoadError, match=r"residual\.cids.*sha256"):
        load_index(flipped)

    missing = _copy(built["flat-r1"], tmp_path / "missing")
    (missing / CENTROIDS).unlink()
    with pytest.raises(IndexLoadError, match=r"missing index file .*residual\.centroids"):
        load_index(missing)

    no_words = _copy(built["flat-pq"], tmp_path / "no-words")
    (no_words / CODEBOOKS).unlink()
    with pytest.raises(IndexLoadError, match=r"missing index file .*residual\.codebooks"):
        load_index(no_words)

    # Hashing skipped (verify=False): a damaged scale is still caught before it scores NaN.
    inf_scale = _copy(built["ivf-r2"], tmp_path / "inf-scale")
    scales = np.fromfile(inf_scale / SCALES, dtype="<f2")
    scales[5] = np.inf
    scales.tofile(inf_scale / SCALES)
    with pytest.raises(IndexLoadError, match=r"residual\.scales: a scale is not finite"):
        load_index(inf_scale, verify=False)

    other_m = _copy(built["flat-pq"], tmp_path / "other-m")
    _edit_meta(other_m, lambda m: m["store"].update(m=8))  # same codebook bytes, other split
    with pytest.raises(
        IndexLoadError, match=r"pq token store: residual\.codes: \d+ bytes, expected"
    ):
        load_index(other_m)


def _edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / META).read_text())
    edit(meta)
    (folder / META).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # Files of a 2-bit store described as 4-bit: the codes' size no longer fits.
        (lambda m: m["store"].update(nbits=4, cutoffs=list(range(15)), weights=list(range(16))),
         r"residual\.codes: \d+ bytes, expected"),
        (lambda m: m["store"].update(cutoffs=[0.5, 0.1, 0.2]), "cutoffs must be ascending"),
        (lambda m: m["store"].update(n_centroids=16), "32 centroids of dim 32, meta.json says 16"),
        (lambda m: m["store"].pop("weights"), "invalid store parameters"),
        (lambda m: m["store"].update(kind="opq"), "unknown token store 'opq'"),
        # A residual store's files described as pq: the codewords file is not there.
        (lambda m: m["store"].update(kind="pq", m=16), r"no entry for residual\.codebooks"),
    ],
)  # fmt: skip
def test_mismatched_store_description_is_refused(built, tmp_path: Path, edit, message) -> None:
    folder = _copy(built["ivf-r2"], tmp_path / "idx")
    _edit_meta(folder, edit)
    with pytest.raises(IndexLoadError, match=message):
        load_index(folder)


def test_index_without_a_store_entry_reads_as_float16(built, tmp_path: Path) -> None:
    folder = _copy(built["ivf-f16"], tmp_path / "old")
    _edit_meta(folder, lambda m: m.pop("store"))
    assert load_index(folder).store_kind == "float16"


def test_cli_refuses_a_bad_store_naming_the_option(tmp_path: Path, capsys) -> None:
    from jobs.cli import main

    argv = ["index", "--embeddings", str(tmp_path), "--out", str(tmp_path / "i")]
    assert main([*argv, "--store", "residual:3"]) == 2
    err = capsys.readouterr().err
    assert "--store" in err and "residual:2" in err


def _rss_file_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_compressing_a_float16_file_keeps_one_chunk_resident(tmp_path: Path) -> None:
    """The sequential pass over the float16 store maps one chunk at a time: the file's
    pages do not pile up in RSS (one long-lived mapping made a 303K-document build peak at
    the store's whole 12.6 GB), and the chunks equal the file's rows."""
    from colbert_core.tokenstore import open_float16
    from colbert_core.tokenstore.residual import iter_chunks

    rows, dim = 65_536, 384  # 48 MiB of float16
    data = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float16)
    data.tofile(tmp_path / "tokens.f16")
    tokens = open_float16(tmp_path / "tokens.f16", rows, dim)
    before = _rss_file_kb()
    seen = 0
    for lo, chunk in iter_chunks(tokens, size=4096):
        np.testing.assert_array_equal(chunk, data[lo : lo + len(chunk)].astype(np.float32))
        seen += len(chunk)
    grown_mib = (_rss_file_kb() - before) / 1024
    assert seen == rows
    assert grown_mib < 8, f"{grown_mib:.0f} MiB of the 48 MiB file stayed mapped"


# ------------------------------------------------------------------ search settings


def test_settings_an_index_cannot_use_are_dropped_and_reported(built, caplog) -> None:
    from colbert_core.search import default_params

    flat, ivf = load_index(built["flat-r1"]).meta, load_index(built["ivf-f16"]).meta
    asked = SearchParams(k=300, nprobe=4, ef_search=99, full_scores=64)
    with caplog.at_level("WARNING", logger="colbert_core.search.ann"):
        got = default_params(flat, asked)
    # A flat index has neither IVF lists nor an HNSW graph; its residual store keeps
    # full_scores.
    assert (got.nprobe, got.ef_search, got.full_scores) == (None, None, 64)
    text = caplog.text
    assert "nprobe=4 is ignored" in text and "ef_search=99 is ignored" in text
    assert "k=300 is more than max_candidates=256" in text and "full_scores" not in text
    caplog.clear()
    with caplog.at_level("WARNING", logger="colbert_core.search.ann"):
        got = default_params(ivf, SearchParams(full_scores=64))
    assert (got.nprobe, got.full_scores) == (1, None)  # nlist 32: the nlist/512 rule gives 1
    assert "full_scores=64 is ignored: the index's token store is float16" in caplog.text


@pytest.mark.parametrize("factory", ["IVF16_HNSW8,Flat", "PCA16,HNSW8", "HNSW8"])
def test_ef_search_reaches_every_hnsw_graph(factory: str) -> None:
    import faiss

    from colbert_core.search.ann import configure, hnsw_graphs

    index = faiss.index_factory(32, factory, faiss.METRIC_INNER_PRODUCT)
    configure(index, SearchParams(ef_search=99))
    graphs = hnsw_graphs(index)
    assert len(graphs) == 1 and graphs[0].hnsw.efSearch == 99


def test_search_without_resolved_settings_uses_the_defaults(corpus: Corpus, built) -> None:
    # A direct library call with nprobe unset searches with the index's default nprobe,
    # not with whatever an earlier call left on the FAISS object.
    loaded = load_index(built["ivf-r2"])
    rng = np.random.default_rng(4)
    queries = [corpus.tokens[rng.choice(corpus.n_tokens, 8)].astype(np.float32) for _ in range(5)]
    params = SearchParams(k=10, k_prime=16, max_candidates=40)
    first = search(loaded, queries, params)
    search(loaded, queries, dataclasses.replace(params, nprobe=32))
    again = search(loaded, queries, params)
    for a, b in zip(first, again, strict=True):
        assert a.candidates.tolist() == b.candidates.tolist()


def test_store_spellings_are_one_build_option() -> None:
    assert IndexConfig(store="residual").store == "residual:2"
    assert IndexConfig(store="PQ:64").store == "pq:64"
    assert IndexConfig(store="residual:2") == IndexConfig(store="Residual")
