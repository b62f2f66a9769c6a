"""The explicit, serialisable description of how a checkpoint encodes text."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

CheckpointFormat = Literal["stanford", "pylate", "hf"]


@dataclass(frozen=True)
class EncoderSettings:
    """How queries and documents are turned into token vectors.

    One instance is derived from a checkpoint by :func:`colbert_core.load_encoder`
    (overridable field by field) and written next to every output, so that an
    index always records exactly how its vectors were made.

    Attributes
    ----------
    format
        ``"stanford"`` (ColBERT/PLAID checkpoint), ``"pylate"`` (sentence-transformers
        layout with a Dense projection) or ``"hf"`` (plain encoder used zero-shot).
    query_maxlen, doc_maxlen
        Maximum token counts, markers and special tokens included.
    dim
        Output vector dimension (projection size, or hidden size without one).
    query_marker, doc_marker
        Token inserted right after ``[CLS]`` (``None``: no marker).
    query_augmentation
        Pad queries to ``query_maxlen`` with ``[MASK]`` and keep those positions.
    attend_to_mask_tokens
        Whether the encoder attends to the ``[MASK]`` expansion tokens.
    skiplist_ids
        Token ids dropped from document outputs (punctuation for ColBERT models).
    """

    format: CheckpointFormat
    query_maxlen: int
    doc_maxlen: int
    dim: int
    query_marker: str | None = None
    doc_marker: str | None = None
    query_augmentation: bool = False
    attend_to_mask_tokens: bool = False
    skiplist_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.query_maxlen < 3 or self.doc_maxlen < 3:
            raise ConfigError(
                f"query_maxlen={self.query_maxlen} and doc_maxlen={self.doc_maxlen} must both be "
                ">= 3 (room for [CLS], a marker and [SEP])"
            )
        if self.dim <= 0:
            raise ConfigError(f"dim must be positive, got {self.dim}")

    def replace(self, **changes: Any) -> EncoderSettings:
        """Return a copy with ``changes`` applied (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["skiplist_ids"] = list(self.skiplist_ids)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderSettings:
        d = dict(d)
        d["skiplist_ids"] = tuple(d.get("skiplist_ids", ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
