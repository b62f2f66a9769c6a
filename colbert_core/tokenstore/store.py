"""Which token store an index has: the spec a user asks for and the opened store.

Two kinds, chosen with ``colbert-batch index --store``:

* ``float16`` - every token vector in float16 (:mod:`.float16`), ``2 * dim`` bytes/token;
* ``residual:B`` - ColBERTv2's residual codec with ``B`` in {1, 2, 4} bits per dimension
  (:mod:`.residual`), ``dim * B / 8 + 4`` bytes/token.

``meta.json`` records the kind and the codec's parameters under ``"store"``; an index
without that entry (built before the choice existed) has a float16 store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ..errors import ConfigError
from .float16 import TOKENS
from .residual import CENTROIDS, CIDS, CODES, NBITS, SCALES, ResidualStore

#: What the exact stage reads: a float16 ``(n_tokens, dim)`` matrix or a residual store.
TokenStore = Union[np.ndarray, ResidualStore]  # noqa: UP007 - a runtime alias

STORE_KINDS = ("float16", "residual")


@dataclass(frozen=True)
class StoreSpec:
    """A token-store choice: ``float16`` or ``residual`` with ``nbits`` per dimension.

    >>> StoreSpec.parse("residual:1"), str(StoreSpec.parse("float16"))
    (StoreSpec(kind='residual', nbits=1), 'float16')
    """

    kind: str = "float16"
    nbits: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in STORE_KINDS:
            raise ConfigError(
                f"unknown token store {self.kind!r}: use float16 or residual:B (B in 1, 2, 4)"
            )
        if self.kind == "residual" and self.nbits not in NBITS:
            raise ConfigError(
                f"residual store needs nbits in {NBITS}, got {self.nbits}: e.g. residual:2"
            )
        if self.kind == "float16" and self.nbits is not None:
            raise ConfigError("the float16 store takes no bit width")

    @classmethod
    def parse(cls, text: str) -> StoreSpec:
        """``float16``, ``residual`` (2 bits) or ``residual:B``."""
        kind, sep, bits = str(text).strip().lower().partition(":")
        if not sep:
            return cls(kind, DEFAULT_RESIDUAL_BITS if kind == "residual" else None)
        try:
            nbits = int(bits)
        except ValueError as exc:
            raise ConfigError(
                f"token store {text!r}: the bit width must be 1, 2 or 4 (e.g. residual:2)"
            ) from exc
        return cls(kind, nbits)

    def __str__(self) -> str:
        return self.kind if self.kind == "float16" else f"{self.kind}:{self.nbits}"


#: ``--store residual`` without a width.
DEFAULT_RESIDUAL_BITS = 2


def store_files(store: dict[str, Any]) -> tuple[str, ...]:
    """The files of a store described by ``meta.json``'s ``"store"`` entry.

    >>> store_files({"kind": "float16"}), store_files({"kind": "residual", "centroids": "index"})
    (('tokens.f16',), ('residual.cids', 'residual.codes', 'residual.scales'))
    """
    if store.get("kind", "float16") == "float16":
        return (TOKENS,)
    extra = (CENTROIDS,) if store.get("centroids") == "file" else ()
    return (CIDS, CODES, SCALES, *extra)


def store_label(store: dict[str, Any]) -> str:
    """``meta.json``'s ``"store"`` entry as the ``--store`` value that builds it.

    >>> store_label({"kind": "residual", "nbits": 1}), store_label({})
    ('residual:1', 'float16')
    """
    if store.get("kind", "float16") == "float16":
        return "float16"
    return f"{store['kind']}:{store.get('nbits')}"


def store_kind(store: TokenStore) -> str:
    """``"float16"`` or ``"residual"``."""
    return "residual" if isinstance(store, ResidualStore) else "float16"
