"""PyLate checkpoints: the encoder against PyLate's own output, stored as a fixture.

``tests/fixtures/pylate_tiny/`` is a tiny random ColBERT saved by PyLate and
``pylate_tiny_reference.npz`` holds what ``pylate.models.ColBERT.encode`` returned for it
(see ``tests/fixtures/README.md``), so PyLate itself is not needed here.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest

from colbert_core import load_encoder
from colbert_core.encoder import ColBERTEncoder, detect_format

FIXTURES = Path(__file__).parent / "fixtures"
CHECKPOINT = FIXTURES / "pylate_tiny"
REFERENCE = FIXTURES / "pylate_tiny_reference.npz"
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref() -> dict:
    with np.load(REFERENCE) as z:
        data = {k: z[k] for k in z.files}
    data["texts"] = json.loads(str(data["texts"]))
    data["config"] = json.loads(str(data["config"]))
    return data


@pytest.fixture(scope="module")
def encoder() -> ColBERTEncoder:
    return load_encoder(CHECKPOINT, device="cpu")


def _expected(ref: dict, kind: str) -> list[np.ndarray]:
    n = len(ref["texts"]["queries" if kind == "query" else "documents"])
    return [ref[f"{kind}_{i}"] for i in range(n)]


def _assert_matches(got: list[np.ndarray], want: list[np.ndarray], texts: list[str]) -> None:
    assert len(got) == len(want) == len(texts)
    for g, w, t in zip(got, want, texts, strict=True):
        assert g.dtype == np.float32, t
        assert g.shape == w.shape, (t, g.shape, w.shape)
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0, err_msg=repr(t))


def test_outputs_are_discriminative(encoder: ColBERTEncoder, ref: dict) -> None:
    """The tolerance of the comparisons below is meaningful: the project's vectors for two
    different documents differ by far more than ATOL; queries are query_length long."""
    docs = encoder.encode_documents(ref["texts"]["documents"][:2])
    assert not np.allclose(docs[0][:4], docs[1][:4], atol=100 * ATOL)
    assert all(q.shape == (16, 16) for q in encoder.encode_queries(ref["texts"]["queries"]))


def test_detect_format() -> None:
    assert detect_format(CHECKPOINT) == "pylate"


def test_settings_derived(encoder: ColBERTEncoder, ref: dict) -> None:
    s = encoder.settings
    assert s.format == "pylate"
    assert (s.query_maxlen, s.doc_maxlen, s.dim) == (16, 32, 16)
    assert encoder.dim == 16
    assert (s.query_marker, s.doc_marker) == ("[Q] ", "[D] ")
    assert s.query_augmentation is True
    assert s.attend_to_mask_tokens is False
    cfg = ref["config"]
    assert list(s.skiplist_ids) == sorted(cfg["skiplist_ids"])
    assert len(s.skiplist_ids) == len(string.punctuation)
    tok = encoder.tokenizer
    assert tok.convert_tokens_to_ids(s.query_marker) == cfg["query_prefix_id"]
    assert tok.convert_tokens_to_ids(s.doc_marker) == cfg["document_prefix_id"]


def test_query_input_ids_match_pylate(encoder: ColBERTEncoder, ref: dict) -> None:
    queries = ref["texts"]["queries"]
    mask_id = ref["config"]["mask_token_id"]
    for i, row in enumerate(encoder.tokenize(queries, is_query=True)):
        ids, attn = ref[f"query_{i}_input_ids"], ref[f"query_{i}_attention_mask"]
        n = int(attn.sum())
        assert row == ids[:n].tolist(), queries[i]
        assert (ids[n:] == mask_id).all()
        assert row[1] == ref["config"]["query_prefix_id"]


def test_doc_input_ids_match_pylate(encoder: ColBERTEncoder, ref: dict) -> None:
    docs = ref["texts"]["documents"]
    skip = set(encoder.settings.skiplist_ids)
    for i, row in enumerate(encoder.tokenize(docs, is_query=False)):
        assert row == ref[f"doc_{i}_input_ids"].tolist(), docs[i]
        assert row[1] == ref["config"]["document_prefix_id"]
        keep = [t not in skip for t in row]
        assert keep == ref[f"doc_{i}_keep"].tolist(), docs[i]


@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_queries_match_pylate(encoder: ColBERTEncoder, ref: dict, batch_size: int) -> None:
    queries = ref["texts"]["queries"]
    got = encoder.encode_queries(queries, batch_size=batch_size)
    _assert_matches(got, _expected(ref, "query"), queries)


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_docs_match_pylate(encoder: ColBERTEncoder, ref: dict, batch_size: int) -> None:
    docs = ref["texts"]["documents"]
    got = encoder.encode_documents(docs, batch_size=batch_size)
    _assert_matches(got, _expected(ref, "doc"), docs)


def test_batching_invariance(encoder: ColBERTEncoder, ref: dict) -> None:
    docs = ref["texts"]["documents"]
    queries = ref["texts"]["queries"]
    for one, four in zip(
        encoder.encode_documents(docs, batch_size=1)
        + encoder.encode_queries(queries, batch_size=1),
        encoder.encode_documents(docs, batch_size=4)
        + encoder.encode_queries(queries, batch_size=4),
        strict=True,
    ):
        assert one.shape == four.shape
        np.testing.assert_allclose(one, four, atol=1e-5, rtol=0)


def test_order_and_subsets(encoder: ColBERTEncoder, ref: dict) -> None:
    """Outputs come back in input order, whatever the batch composition."""
    docs = ref["texts"]["documents"]
    order = [5, 3, 0, 4, 1, 2, 3]
    got = encoder.encode_documents([docs[i] for i in order], batch_size=3)
    _assert_matches(got, [ref[f"doc_{i}"] for i in order], [docs[i] for i in order])


def test_rows_normalised_and_punctuation_dropped(encoder: ColBERTEncoder, ref: dict) -> None:
    docs = ref["texts"]["documents"]
    for vecs in encoder.encode_documents(docs):
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # "Hello, world... is it sunny outside? Yes; very: lovely -- today!!!" loses 12 of 26.
    assert ref["doc_2_input_ids"].shape == (26,)
    assert encoder.encode_documents([docs[2]])[0].shape == (14, 16)


def test_progress_callback(encoder: ColBERTEncoder, ref: dict) -> None:
    docs = ref["texts"]["documents"]
    calls: list[tuple[int, int]] = []
    encoder.encode_documents(docs, batch_size=4, progress=lambda n, t: calls.append((n, t)))
    assert [n for n, _ in calls] == [4, 2]
    assert sum(t for _, t in calls) == sum(ref[f"doc_{i}"].shape[0] for i in range(6))
