"""Plain Hugging Face encoders used zero-shot, on the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from colbert_core import CheckpointError, load_encoder
from colbert_core.encoder import ColBERTEncoder, detect_format, resolve_model_path

QUERIES = [
    "what is late interaction?",
    "Größe der Bevölkerung in München",
    "?",
    "a",
    "hello, world!!! (what's [the] weather -- today?) #search @colbert",
]
DOCS = [
    "Munich is the capital of Bavaria and the third largest city in Germany.",
    "",
    "a",
    "Hello, world... is it sunny outside? Yes; very: lovely -- today!!!",
    "ColBERT uses late interaction: every token gets a vector, and MaxSim sums the best "
    "matches over all query tokens. " * 2,
    "x",
]


@pytest.fixture(scope="module")
def encoder() -> ColBERTEncoder:
    return load_encoder("minilm", device="cpu")


@pytest.fixture(scope="module")
def encoded(encoder: ColBERTEncoder) -> dict[str, list[np.ndarray]]:
    """QUERIES and DOCS encoded once with the default batch sizes."""
    return {"queries": encoder.encode_queries(QUERIES), "docs": encoder.encode_documents(DOCS)}


def test_format_and_settings(encoder: ColBERTEncoder) -> None:
    assert detect_format(encoder.path) == "hf"
    s = encoder.settings
    assert s.format == "hf"
    assert s.dim == encoder.dim == 384
    assert s.query_marker is None and s.doc_marker is None
    assert s.query_augmentation is False
    assert s.skiplist_ids == ()
    assert (s.query_maxlen, s.doc_maxlen) == (64, 256)
    assert encoder.describe().settings == s


def test_rows_are_l2_normalised(encoded: dict[str, list[np.ndarray]]) -> None:
    for vecs in encoded["queries"] + encoded["docs"]:
        assert vecs.dtype == np.float32
        assert vecs.ndim == 2 and vecs.shape[1] == 384
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_queries_have_no_mask_padding(
    encoder: ColBERTEncoder, encoded: dict[str, list[np.ndarray]]
) -> None:
    tok = encoder.tokenizer
    for text, vecs in zip(QUERIES, encoded["queries"], strict=True):
        assert vecs.shape[0] == len(tok.tokenize(text)) + 2, text  # [CLS] ... [SEP]
    ids = encoder.tokenize(QUERIES, is_query=True)
    assert all(tok.mask_token_id not in row for row in ids)
    assert all(row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id for row in ids)


def test_documents_keep_punctuation(
    encoder: ColBERTEncoder, encoded: dict[str, list[np.ndarray]]
) -> None:
    tok = encoder.tokenizer
    for text, vecs in zip(DOCS, encoded["docs"], strict=True):
        n = min(len(tok.tokenize(text)) + 2, encoder.settings.doc_maxlen)
        assert vecs.shape[0] == n, text


def test_empty_document_keeps_cls_and_sep(encoder: ColBERTEncoder) -> None:
    (vecs,) = encoder.encode_documents([""])
    assert vecs.shape == (2, 384)
    assert encoder.encode_queries([""])[0].shape == (2, 384)


def test_empty_input_list(encoder: ColBERTEncoder) -> None:
    assert encoder.encode_queries([]) == []
    assert encoder.encode_documents([]) == []


def test_batching_invariance(encoder: ColBERTEncoder, encoded: dict[str, list[np.ndarray]]) -> None:
    for encode, texts, key in (
        (encoder.encode_queries, QUERIES, "queries"),
        (encoder.encode_documents, DOCS, "docs"),
    ):
        one = encode(texts, batch_size=1)
        many = encode(texts, batch_size=16)
        assert len(texts) < 16  # one batch holds all, with padding
        for text, a, b, c in zip(texts, one, many, encoded[key], strict=True):
            assert a.shape == b.shape == c.shape, text
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0, err_msg=repr(text))
            np.testing.assert_allclose(c, b, atol=1e-5, rtol=0, err_msg=repr(text))


def test_context_matters(encoder: ColBERTEncoder) -> None:
    """Token vectors are contextual, so the invariance check above is not vacuous."""
    a = encoder.encode_documents(["the bank of the river"])[0]
    b = encoder.encode_documents(["the bank raised interest rates"])[0]
    assert np.abs(a[2] - b[2]).max() > 1e-2  # "bank"


def test_bare_string_raises_type_error(encoder: ColBERTEncoder) -> None:
    with pytest.raises(TypeError, match="list of texts"):
        encoder.encode_queries("what is late interaction?")
    with pytest.raises(TypeError, match="list of texts"):
        encoder.encode_documents("a document")


def test_bad_batch_size(encoder: ColBERTEncoder) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode_documents(["a"], batch_size=0)


def test_doc_maxlen_override_truncates(encoder: ColBERTEncoder) -> None:
    short = load_encoder("minilm", device="cpu", doc_maxlen=8)
    assert short.settings.doc_maxlen == 8
    assert short.settings.query_maxlen == encoder.settings.query_maxlen
    long_doc = DOCS[4]
    assert encoder.encode_documents([long_doc])[0].shape[0] > 8
    out = short.encode_documents(DOCS)
    assert all(v.shape[0] <= 8 for v in out)
    assert out[4].shape == (8, 384)
    ids = short.tokenize([long_doc], is_query=False)[0]
    assert ids[-1] == short.tokenizer.sep_token_id  # truncation keeps [SEP]


def test_not_a_checkpoint_lists_supported_formats(tmp_path: Path) -> None:
    (tmp_path / "notes.bin").write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(CheckpointError) as info:
        load_encoder(tmp_path, device="cpu")
    msg = str(info.value)
    assert str(tmp_path) in msg
    for fragment in ("Stanford ColBERT", "PyLate", "Hugging Face", "artifact.metadata", "minilm"):
        assert fragment in msg, fragment


def test_missing_path_raises(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(CheckpointError, match="not a local directory") as info:
        load_encoder(missing, device="cpu")
    assert "no-such-model" in str(info.value)
    with pytest.raises(CheckpointError):
        load_encoder(str(missing))


def test_fingerprint_stable_and_sensitive(encoder: ColBERTEncoder) -> None:
    fp = encoder.fingerprint
    assert isinstance(fp, str) and len(fp) == 32
    again = load_encoder("minilm", device="cpu")
    assert again.fingerprint == fp
    assert encoder.describe().fingerprint == fp
    assert load_encoder("minilm", device="cpu", doc_maxlen=8).fingerprint != fp
    assert load_encoder("minilm", device="cpu", query_maxlen=32).fingerprint != fp


def test_fingerprint_follows_weights(encoder: ColBERTEncoder, tmp_path: Path) -> None:
    copy = tmp_path / "minilm-copy"
    shutil.copytree(encoder.path, copy)
    enc = load_encoder(copy, device="cpu")
    assert enc.fingerprint == encoder.fingerprint  # same bytes, same settings
    (copy / "README.md").write_text("docs do not count\n", encoding="utf-8")
    assert load_encoder(copy, device="cpu").fingerprint == encoder.fingerprint
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # flip one bit in the last tensor
    weights.write_bytes(bytes(data))
    assert load_encoder(copy, device="cpu").fingerprint != encoder.fingerprint


@pytest.mark.parametrize("alias", ["minilm", "MiniLM", "  MINILM ", "all-MiniLM-L6-v2"])
def test_alias_is_case_insensitive(encoder: ColBERTEncoder, alias: str) -> None:
    assert resolve_model_path(alias) == encoder.path
    assert detect_format(resolve_model_path(alias)) == "hf"


def test_alias_loads(encoder: ColBERTEncoder) -> None:
    enc = load_encoder("MiniLM", device="cpu")
    assert enc.fingerprint == encoder.fingerprint
    np.testing.assert_allclose(
        enc.encode_queries(["late interaction"])[0],
        encoder.encode_queries(["late interaction"])[0],
        atol=1e-6,
    )


def test_tokenisation_windows_keep_order_and_values(
    encoder: ColBERTEncoder, encoded: dict[str, list[np.ndarray]]
) -> None:
    """Several sort windows (the next one tokenised in a thread) give the same vectors in
    the same order as one window."""
    docs = DOCS * 3
    whole = encoder.encode_documents(docs)
    encoder.sort_window = 4
    try:
        seen: list[int] = []
        windowed = encoder.encode_documents(
            docs, batch_size=3, progress=lambda n, _t: seen.append(n)
        )
    finally:
        del encoder.sort_window
    assert sum(seen) == len(docs)
    for a, b in zip(whole, windowed, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bf16_on_cpu_is_close_to_fp32(encoded: dict[str, list[np.ndarray]]) -> None:
    from colbert_core import load_encoder

    enc = load_encoder("minilm", dtype="bf16")
    assert str(enc.dtype) == "torch.bfloat16"
    for a, b in zip(encoded["docs"], enc.encode_documents(DOCS), strict=True):
        assert a.shape == b.shape and b.dtype == np.float32
        assert float((a * b).sum(axis=1).min()) > 0.99  # cosine per token


def test_unknown_dtype_is_refused() -> None:
    from colbert_core import load_encoder

    with pytest.raises(ValueError, match="dtype must be auto, fp32, bf16 or fp16"):
        load_encoder("minilm", dtype="int4")


def test_overflow_counts_tokens_lost_to_truncation(encoder: ColBERTEncoder) -> None:
    short = load_encoder("minilm", device="cpu", query_maxlen=6, doc_maxlen=9)
    texts = [*QUERIES, *DOCS]
    for is_query, maxlen in ((True, 6), (False, 9)):
        full = [len(ids) for ids in encoder.tokenize(texts, is_query=is_query)]
        kept = [len(ids) for ids in short.tokenize(texts, is_query=is_query)]
        lost = short.overflow(texts, is_query=is_query)
        assert [k + n for k, n in zip(kept, lost, strict=True)] == full
        assert all((n > 0) == (f > maxlen) for n, f in zip(lost, full, strict=True))
        assert any(lost) and not all(lost)
    assert encoder.overflow(QUERIES, is_query=True) == [0] * len(QUERIES)
    assert encoder.overflow([], is_query=True) == []
