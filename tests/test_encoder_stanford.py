"""Stanford ColBERT checkpoints: the encoder against a literal port of ColBERT v2's code.

A tiny random checkpoint in Stanford's layout (``bert.*`` + ``linear.weight``,
``artifact.metadata``, a WordPiece vocabulary) is built inside the test. The reference
below follows stanford-futuredata/ColBERT (``QueryTokenizer.tensorize``,
``DocTokenizer.tensorize``, ``ColBERT.query`` / ``ColBERT.doc`` / ``ColBERT.mask``) line by
line on the *original* in-memory torch module, so it shares no code with
``colbert_core.encoder`` beyond the tokenizer files a Stanford checkpoint ships.
"""

from __future__ import annotations

import inspect
import json
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

from colbert_core import CheckpointError, load_encoder
from colbert_core.encoder import ColBERTEncoder, detect_format

QUERY_MAXLEN = 12
DOC_MAXLEN = 16
DIM = 8
HIDDEN = 32
ATOL = 1e-5

# fmt: off
WORDS = [
    "the", "an", "of", "and", "is", "what", "who", "how", "why", "in", "on", "to", "it",
    "late", "interaction", "colbert", "token", "vector", "search", "query", "document",
    "model", "city", "munich", "capital", "germany", "river", "music", "hello", "world",
    "weather", "today", "##es", "##ing", "##ed", "##er", "un", "##able", "data", "index",
]
# fmt: on

SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[unused2]", "[unused3]"]
SPECIALS += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]

QUERIES = [
    "what is late interaction?",
    "",
    "   ",
    "?",
    "hello, world!!! (what's [the] weather -- today?) #search @colbert",
    "how is the capital of germany in the search index of the late interaction colbert model",
    "a",
    "munich",
]

DOCS = [
    "Munich is the capital of Germany.",
    "",
    "a",
    "hello, world... is it sunny? yes; very: lovely -- today!!!",
    "the city of munich is on a river and the music of the city is the music of "
    "germany, and the capital has an index of data.",
    "...!!!???",
    "ColBERT: every token (not [CLS] only) gets a vector; MaxSim sums 100% of them",
    "xyz qqq unable unknown",
]


# -- building the tiny checkpoint ----------------------------------------------------


def _vocab() -> list[str]:
    singles = list(string.punctuation + string.digits + string.ascii_lowercase)
    vocab = SPECIALS + singles + ["##" + c for c in singles] + WORDS
    assert len(vocab) == len(set(vocab))
    return vocab


def _make_tokenizer(vocab: list[str], vocab_file: Path) -> BertTokenizerFast:
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    params = inspect.signature(BertTokenizerFast.__init__).parameters
    if "vocab_file" in params:  # transformers 4.x
        tok = BertTokenizerFast(vocab_file=str(vocab_file), do_lower_case=True)
    else:  # transformers 5.x takes the vocabulary itself
        tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    # The ids the rest of this file relies on (BERT's layout).
    assert tok.pad_token_id == 0
    assert tok.convert_tokens_to_ids(["[unused0]", "[unused1]"]) == [1, 2]
    assert tok.mask_token_id == vocab.index("[MASK]")
    words = ["hello", ",", "late", "-", "interaction", "!"]
    assert tok.tokenize("Hello, late-interaction!") == words
    return tok


class HFColBERTReference(torch.nn.Module):
    """Stanford's ``HF_ColBERT``: ``self.bert = BertModel(config)`` + ``self.linear``."""

    def __init__(self, config: BertConfig, dim: int):
        super().__init__()
        self.bert = BertModel(config)
        self.linear = torch.nn.Linear(config.hidden_size, dim, bias=False)


@dataclass
class TinyCheckpoint:
    path: Path
    model: HFColBERTReference  # the original weights, in memory
    tokenizer: BertTokenizerFast
    metadata: dict


def _metadata(**changes: object) -> dict:
    meta = {
        "query_maxlen": QUERY_MAXLEN,
        "doc_maxlen": DOC_MAXLEN,
        "dim": DIM,
        "mask_punctuation": True,
        "query_token_id": "[unused0]",
        "doc_token_id": "[unused1]",
        "query_token": "[Q]",
        "doc_token": "[D]",
        "attend_to_mask_tokens": False,
        "similarity": "cosine",
    }
    meta.update(changes)
    return meta


def build_checkpoint(
    path: Path,
    *,
    weights: str = "safetensors",
    seed: int = 0,
    drop: tuple[str, ...] = (),
    **meta_changes: object,
) -> TinyCheckpoint:
    """Write a random Stanford ColBERT checkpoint to ``path`` and return its parts."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    tokenizer = _make_tokenizer(vocab, path / "vocab.txt")
    tokenizer.save_pretrained(path)  # vocab.txt stays beside it, as in real checkpoints

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        # Large random weights: attention is far from uniform, so a wrong mask, position
        # or padding shows up well above the tolerance.
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = HFColBERTReference(config, DIM).eval()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for key in drop:
        del state[key]
    if weights == "safetensors":
        save_file(state, str(path / "model.safetensors"))
    else:
        torch.save(state, path / "pytorch_model.bin")

    cfg = config.to_dict()
    cfg["architectures"] = ["HF_ColBERT"]
    (path / "config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    meta = _metadata(**meta_changes)
    (path / "artifact.metadata").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return TinyCheckpoint(path, model, tokenizer, meta)


# -- literal port of Stanford ColBERT v2 ----------------------------------------------


class StanfordReference:
    """``QueryTokenizer`` / ``DocTokenizer`` / ``ColBERT.query`` / ``ColBERT.doc``."""

    def __init__(self, ckpt: TinyCheckpoint):
        meta = ckpt.metadata
        # HF_ColBERT.raw_tokenizer_from_pretrained(checkpoint) is AutoTokenizer.
        self.tok = AutoTokenizer.from_pretrained(ckpt.path)
        self.query_maxlen = meta["query_maxlen"]
        self.doc_maxlen = meta["doc_maxlen"]
        self.attend_to_mask_tokens = meta["attend_to_mask_tokens"]
        self.Q_marker_token_id = self.tok.convert_tokens_to_ids(meta["query_token_id"])
        self.D_marker_token_id = self.tok.convert_tokens_to_ids(meta["doc_token_id"])
        self.mask_token_id = self.tok.mask_token_id
        self.pad_token_id = self.tok.pad_token_id
        self.skiplist: dict = {}
        if meta["mask_punctuation"]:
            self.skiplist = {
                w: True
                for symbol in string.punctuation
                for w in [symbol, self.tok.encode(symbol, add_special_tokens=False)[0]]
            }
        self.pad_token = self.tok.pad_token_id
        self.bert = ckpt.model.bert
        self.linear = ckpt.model.linear

    # QueryTokenizer.tensorize
    def tensorize_queries(self, batch_text: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch_text = [". " + x for x in batch_text]
        obj = self.tok(
            batch_text,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            max_length=self.query_maxlen,
        )
        ids, mask = obj["input_ids"], obj["attention_mask"]
        ids[:, 1] = self.Q_marker_token_id
        ids[ids == self.pad_token_id] = self.mask_token_id
        if self.attend_to_mask_tokens:
            mask[ids == self.mask_token_id] = 1
            assert mask.sum().item() == mask.size(0) * mask.size(1), mask
        return ids, mask

    # DocTokenizer.tensorize (without bsize)
    def tensorize_docs(self, batch_text: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch_text = [". " + x for x in batch_text]
        obj = self.tok(
            batch_text,
            padding="longest",
            truncation="longest_first",
            return_tensors="pt",
            max_length=self.doc_maxlen,
        )
        ids, mask = obj["input_ids"], obj["attention_mask"]
        ids[:, 1] = self.D_marker_token_id
        return ids, mask

    def mask(self, input_ids: torch.Tensor, skiplist) -> list[list[bool]]:
        return [
            [(x not in skiplist) and (x != self.pad_token) for x in d]
            for d in input_ids.cpu().tolist()
        ]

    @torch.inference_mode()
    def query(self, texts: list[str]) -> list[np.ndarray]:
        input_ids, attention_mask = self.tensorize_queries(texts)
        Q = self.bert(input_ids, attention_mask=attention_mask)[0]
        Q = self.linear(Q)
        mask = torch.tensor(self.mask(input_ids, skiplist=[])).unsqueeze(2).float()
        Q = Q * mask
        Q = torch.nn.functional.normalize(Q, p=2, dim=2)
        return [q.numpy() for q in Q]

    @torch.inference_mode()
    def doc(self, texts: list[str]) -> list[np.ndarray]:
        input_ids, attention_mask = self.tensorize_docs(texts)
        D = self.bert(input_ids, attention_mask=attention_mask)[0]
        D = self.linear(D)
        mask = torch.tensor(self.mask(input_ids, skiplist=self.skiplist)).unsqueeze(2).float()
        D = D * mask
        D = torch.nn.functional.normalize(D, p=2, dim=2)
        # keep_dims=False
        D, mask = D.cpu(), mask.bool().cpu().squeeze(-1)
        return [d[mask[idx]].numpy() for idx, d in enumerate(D)]


def _assert_all_close(got: list[np.ndarray], want: list[np.ndarray], texts: list[str]) -> None:
    assert len(got) == len(want) == len(texts)
    for g, w, t in zip(got, want, texts, strict=True):
        assert g.dtype == np.float32, t
        assert g.shape == w.shape, (t, g.shape, w.shape)
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0, err_msg=repr(t))


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def tiny(request, tmp_path_factory) -> TinyCheckpoint:
    path = tmp_path_factory.mktemp(f"stanford_{request.param}")
    return build_checkpoint(path, weights=request.param)


@pytest.fixture(scope="module")
def encoder(tiny: TinyCheckpoint) -> ColBERTEncoder:
    return load_encoder(tiny.path, device="cpu")


@pytest.fixture(scope="module")
def reference(tiny: TinyCheckpoint) -> StanfordReference:
    return StanfordReference(tiny)


# -- format and settings ----------------------------------------------------------------


def test_loader_maps_every_stanford_tensor(tiny: TinyCheckpoint, encoder: ColBERTEncoder) -> None:
    """Each ``bert.*`` tensor lands in the backbone and ``linear.weight`` in the projection,
    unchanged (a key mapped wrong would leave random weights that only the end-to-end
    comparisons would catch, and only approximately)."""
    want = tiny.model.state_dict()
    got = {f"bert.{k}": v for k, v in encoder.backbone.state_dict().items()}
    got["linear.weight"] = encoder.projection.weight
    for key, tensor in want.items():
        if key.startswith("bert.pooler."):
            continue  # ColBERT never uses the pooler
        assert torch.equal(got[key].float(), tensor.float()), key


def test_detect_format_and_settings(tiny: TinyCheckpoint, encoder: ColBERTEncoder) -> None:
    assert detect_format(tiny.path) == "stanford"
    s = encoder.settings
    assert s.format == "stanford"
    assert (s.query_maxlen, s.doc_maxlen, s.dim) == (QUERY_MAXLEN, DOC_MAXLEN, DIM)
    assert encoder.dim == DIM
    assert (s.query_marker, s.doc_marker) == ("[unused0]", "[unused1]")
    assert s.query_augmentation is True
    assert s.attend_to_mask_tokens is False
    tok = tiny.tokenizer
    assert set(s.skiplist_ids) == set(tok.convert_tokens_to_ids(list(string.punctuation)))
    assert len(s.skiplist_ids) == len(string.punctuation)


def test_skiplist_matches_stanford(encoder: ColBERTEncoder, reference: StanfordReference) -> None:
    ints = {w for w in reference.skiplist if isinstance(w, int)}
    assert set(encoder.settings.skiplist_ids) == ints


# -- token ids --------------------------------------------------------------------------


def test_query_ids_match_stanford(encoder: ColBERTEncoder, reference: StanfordReference) -> None:
    ids, mask = reference.tensorize_queries(QUERIES)
    ours = encoder.tokenize(QUERIES, is_query=True)
    mask_id = reference.mask_token_id
    for text, row, ref_ids, ref_mask in zip(QUERIES, ours, ids, mask, strict=True):
        assert row[1] == reference.Q_marker_token_id == 1, text
        assert len(row) <= QUERY_MAXLEN
        # Our unpadded ids are Stanford's attended positions; the rest are [MASK].
        n = int(ref_mask.sum())
        assert row == ref_ids[:n].tolist(), text
        assert (ref_ids[n:] == mask_id).all(), text


def test_doc_ids_match_stanford(encoder: ColBERTEncoder, reference: StanfordReference) -> None:
    ids, mask = reference.tensorize_docs(DOCS)
    ours = encoder.tokenize(DOCS, is_query=False)
    for text, row, ref_ids, ref_mask in zip(DOCS, ours, ids, mask, strict=True):
        assert row[1] == reference.D_marker_token_id == 2, text
        assert row == ref_ids[ref_mask.bool()].tolist(), text
    assert max(len(r) for r in ours) == DOC_MAXLEN  # the long document is truncated


# -- embeddings -------------------------------------------------------------------------


def test_queries_match_stanford(encoder: ColBERTEncoder, reference: StanfordReference) -> None:
    got = encoder.encode_queries(QUERIES)
    want = reference.query(QUERIES)
    _assert_all_close(got, want, QUERIES)
    for q in got:
        assert q.shape == (QUERY_MAXLEN, DIM)
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_docs_match_stanford(encoder: ColBERTEncoder, reference: StanfordReference) -> None:
    got = encoder.encode_documents(DOCS)
    want = reference.doc(DOCS)
    _assert_all_close(got, want, DOCS)
    for d in got:
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_batching_matches_stanford(
    encoder: ColBERTEncoder, reference: StanfordReference, batch_size: int
) -> None:
    # Very different lengths in one list: sorting and per-batch padding must not matter.
    docs = ["a", DOCS[4], "munich", DOCS[3], "", DOCS[6], "the city"]
    queries = ["a", QUERIES[4], "", QUERIES[3], "munich"]
    _assert_all_close(
        encoder.encode_documents(docs, batch_size=batch_size), reference.doc(docs), docs
    )
    _assert_all_close(
        encoder.encode_queries(queries, batch_size=batch_size), reference.query(queries), queries
    )
    # Stanford itself is batch invariant too: one text at a time gives the same vectors.
    _assert_all_close(
        encoder.encode_documents(docs, batch_size=batch_size),
        [reference.doc([d])[0] for d in docs],
        docs,
    )


def test_punctuation_dropped_from_docs(
    encoder: ColBERTEncoder, reference: StanfordReference
) -> None:
    skip = set(encoder.settings.skiplist_ids)
    ids = encoder.tokenize(DOCS, is_query=False)
    out = encoder.encode_documents(DOCS)
    for text, row, vecs in zip(DOCS, ids, out, strict=True):
        n_punct = sum(i in skip for i in row)
        assert vecs.shape[0] == len(row) - n_punct, text
    # Documents made of punctuation keep only [CLS], [D] and [SEP].
    assert out[DOCS.index("...!!!???")].shape == (3, DIM)
    # Against the literal tokenization: the counts differ exactly by the punctuation.
    ref_ids, ref_mask = reference.tensorize_docs(DOCS)
    punct_count = sum(
        int(i) in skip for r, m in zip(ref_ids, ref_mask, strict=True) for i in r[m.bool()]
    )
    assert punct_count > 10
    assert sum(v.shape[0] for v in out) == int(ref_mask.sum()) - punct_count


def test_empty_and_punctuation_only_texts(encoder: ColBERTEncoder) -> None:
    q = encoder.encode_queries(["", "?", "   "])
    assert [x.shape for x in q] == [(QUERY_MAXLEN, DIM)] * 3
    d = encoder.encode_documents(["", "?"])
    assert [x.shape for x in d] == [(3, DIM), (3, DIM)]  # [CLS] [D] [SEP]


def test_encoder_is_contextual_and_honours_attend_to_mask_tokens(tiny: TinyCheckpoint) -> None:
    """The tolerance of the comparisons is meaningful: context and the mask-attention
    setting move the project's vectors by far more than ATOL."""
    enc = load_encoder(tiny.path, device="cpu")
    a = enc.encode_documents(["the city of munich"])[0]
    b = enc.encode_documents(["the city of germany"])[0]
    assert np.abs(a[:3] - b[:3]).max() > 100 * ATOL  # [CLS], [D], "the" see later tokens
    q = enc.encode_queries(["munich"])[0]
    attending = load_encoder(tiny.path, device="cpu")
    attending.settings = attending.settings.replace(attend_to_mask_tokens=True)
    assert np.abs(q - attending.encode_queries(["munich"])[0]).max() > 100 * ATOL


def test_attend_to_mask_tokens(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt", seed=3, attend_to_mask_tokens=True)
    enc = load_encoder(ckpt.path, device="cpu")
    assert enc.settings.attend_to_mask_tokens is True
    _assert_all_close(enc.encode_queries(QUERIES), StanfordReference(ckpt).query(QUERIES), QUERIES)


def test_mask_punctuation_false_keeps_punctuation(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt", seed=4, mask_punctuation=False)
    enc = load_encoder(ckpt.path, device="cpu")
    assert enc.settings.skiplist_ids == ()
    got = enc.encode_documents(DOCS)
    _assert_all_close(got, StanfordReference(ckpt).doc(DOCS), DOCS)
    assert got[DOCS.index("...!!!???")].shape == (12, DIM)


def test_maxlen_overrides(tiny: TinyCheckpoint) -> None:
    enc = load_encoder(tiny.path, device="cpu", query_maxlen=6, doc_maxlen=5)
    assert enc.encode_queries([QUERIES[4]])[0].shape == (6, DIM)
    assert enc.encode_documents([DOCS[4]])[0].shape[0] <= 5
    assert enc.tokenize([DOCS[4]], is_query=False)[0][1] == 2


# -- broken checkpoints -----------------------------------------------------------------


def test_missing_linear_raises(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt", drop=("linear.weight",))
    with pytest.raises(CheckpointError, match=r"linear\.weight") as info:
        load_encoder(ckpt.path, device="cpu")
    assert "model.safetensors" in str(info.value)


def test_missing_backbone_weight_raises(tmp_path: Path) -> None:
    key = "bert.encoder.layer.1.output.dense.weight"
    ckpt = build_checkpoint(tmp_path / "ckpt", weights="bin", drop=(key,))
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.output\.dense\.weight"):
        load_encoder(ckpt.path, device="cpu")


def test_dim_mismatch_raises(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt", dim=16)
    with pytest.raises(CheckpointError, match=r"dim=16.*8 rows"):
        load_encoder(ckpt.path, device="cpu")


def test_missing_weights_raises(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt")
    (ckpt.path / "model.safetensors").unlink()
    assert detect_format(ckpt.path) == "stanford"  # artifact.metadata decides
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_encoder(ckpt.path, device="cpu")


def test_invalid_metadata_json_raises(tmp_path: Path) -> None:
    ckpt = build_checkpoint(tmp_path / "ckpt")
    (ckpt.path / "artifact.metadata").write_text('{"dim": 8,', encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"artifact\.metadata.*invalid JSON"):
        load_encoder(ckpt.path, device="cpu")


def test_overflow_counts_the_marker(tiny: TinyCheckpoint, encoder: ColBERTEncoder) -> None:
    """[CLS] [Q] ... [SEP]: the marker takes one of query_maxlen's positions."""
    short = load_encoder(tiny.path, device="cpu", query_maxlen=6, doc_maxlen=5)
    texts = ["hello late interaction munich capital germany", "a", ""]
    words = [len(tiny.tokenizer.tokenize(t)) for t in texts]
    assert short.overflow(texts, is_query=True) == [max(0, w + 3 - 6) for w in words]
    assert short.overflow(texts, is_query=False) == [max(0, w + 3 - 5) for w in words]
    assert encoder.overflow(texts, is_query=True) == [0, 0, 0]
