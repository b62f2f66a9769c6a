"""Which token store an index has: the spec a user asks for and the opened store.

Three kinds, chosen with ``colbert-batch index --store``:

* ``float16`` - every token vector in float16 (:mod:`.float16`), ``2 * dim`` bytes/token;
* ``residual:B`` - ColBERTv2's residual codec with ``B`` in {1, 2, 4} bits per dimension
  (:mod:`.residual`), ``dim * B / 8 + 4`` bytes/token;
* ``pq:M`` - the residual product-quantised in ``M`` bytes (:mod:`.pq`; ``M`` divides
  ``dim``), ``M + 4`` bytes/token. Both compressed kinds are a
  :class:`~.residual.ResidualStore` and score the same way.

``meta.json`` records the kind and the codec's parameters under ``"store"``; an index
without that entry (built before the choice existed) has a float16 store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import faiss
import numpy as np

from ..errors import ConfigError
from .float16 import TOKENS
from .pq import CODEBOOKS, PQCodec, pq_problem
from .residual import (
    CENTROIDS,
    CIDS,
    CODES,
    NBITS,
    SCALES,
    CodecTrainer,
    ResidualCodec,
    ResidualFormatError,
    ResidualStore,
    StoreCodec,
    open_residual,
    read_centroids,
    residual_problem,
)

#: What the exact stage reads: a float16 ``(n_tokens, dim)`` matrix or a residual store.
TokenStore = Union[np.ndarray, ResidualStore]  # noqa: UP007 - a runtime alias

STORE_KINDS = ("float16", "residual", "pq")


@dataclass(frozen=True)
class StoreSpec:
    """A token-store choice: ``float16``, ``residual`` with ``nbits`` per dimension, or
    ``pq`` with ``m`` bytes per token.

    >>> StoreSpec.parse("residual:1"), str(StoreSpec.parse("float16")), StoreSpec.parse("pq:64")
    (StoreSpec(kind='residual', nbits=1, m=None), 'float16', StoreSpec(kind='pq', nbits=None, m=64))
    """

    kind: str = "float16"
    nbits: int | None = None
    m: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in STORE_KINDS:
            raise ConfigError(
                f"unknown token store {self.kind!r}: use float16, residual:B (B in 1, 2, 4) "
                "or pq:M (M bytes per token, dividing the dimension)"
            )
        if self.kind == "residual" and self.nbits not in NBITS:
            raise ConfigError(
                f"residual store needs nbits in {NBITS}, got {self.nbits}: e.g. residual:2"
            )
        if self.kind == "pq" and (self.m is None or self.m < 1):
            raise ConfigError(
                f"pq store needs a positive number of bytes per token, got {self.m}: "
                "e.g. pq:64 (M must divide the dimension)"
            )
        if self.kind != "residual" and self.nbits is not None:
            raise ConfigError(f"the {self.kind} store takes no bit width")
        if self.kind != "pq" and self.m is not None:
            raise ConfigError(f"the {self.kind} store takes no byte count")

    @classmethod
    def parse(cls, text: str) -> StoreSpec:
        """``float16``, ``residual`` (2 bits), ``residual:B`` or ``pq:M``."""
        kind, sep, width = str(text).strip().lower().partition(":")
        if kind == "pq":
            try:
                return cls(kind, m=int(width))
            except ValueError as exc:
                raise ConfigError(
                    f"token store {text!r}: pq needs its bytes per token, e.g. pq:64"
                ) from exc
        if not sep:
            return cls(kind, DEFAULT_RESIDUAL_BITS if kind == "residual" else None)
        try:
            nbits = int(width)
        except ValueError as exc:
            raise ConfigError(
                f"token store {text!r}: the bit width must be 1, 2 or 4 (e.g. residual:2)"
            ) from exc
        return cls(kind, nbits)

    def __str__(self) -> str:
        if self.kind == "pq":
            return f"pq:{self.m}"
        return self.kind if self.kind == "float16" else f"{self.kind}:{self.nbits}"

    def check(self, dim: int, n_tokens: int) -> None:
        """Refuse a store that cannot be built over ``n_tokens`` tokens of ``dim``
        (before the index is trained, not after).

        Raises
        ------
        ConfigError
            For ``residual:B`` when a byte's ``8 / B`` dimensions do not divide ``dim``,
            and ``pq:M`` with ``M`` not dividing ``dim`` or fewer than 256 tokens.
        """
        problem = None
        if self.kind == "pq":
            problem = pq_problem(int(self.m or 0), dim, n_tokens)
        elif self.kind == "residual":
            problem = residual_problem(int(self.nbits or 0), dim)
        if problem:
            raise ConfigError(f"--store {self}: {problem}")

    def bytes_per_token(self, dim: int) -> float:
        """Stored bytes per token at ``dim`` (2-byte centroid ids: up to 65,536 centroids).

        >>> [StoreSpec.parse(s).bytes_per_token(384) for s in ("float16", "residual:1", "pq:64")]
        [768.0, 52.0, 68.0]
        """
        if self.kind == "residual":
            return dim * int(self.nbits or 0) / 8 + 4
        if self.kind == "pq":
            return float(int(self.m or 0) + 4)
        return 2.0 * dim


def codec_trainer(spec: StoreSpec, seed: int) -> CodecTrainer:
    """What fits the codec of a compressed ``spec`` to a sample (for
    :func:`~.residual.write_residual_store`)."""
    if spec.kind == "pq":
        return lambda centroids, sample, cids: PQCodec.train(
            centroids, sample, cids, int(spec.m or 0), seed
        )
    if spec.kind == "residual":
        return lambda centroids, sample, cids: ResidualCodec.train(
            centroids, sample, cids, int(spec.nbits or 0)
        )
    raise ConfigError(f"the {spec.kind} store has no codec")


def open_compressed(
    folder: Path, params: dict[str, Any], n_tokens: int, dim: int, index: faiss.Index
) -> ResidualStore:
    """Open the residual or pq store of an index folder (file sizes and hashes already
    checked); ``params`` is ``meta.json``'s ``"store"`` entry.

    Raises
    ------
    ResidualFormatError
        When the files, ``params`` and the index disagree.
    """
    centroids = read_centroids(folder, params, dim, index)
    if params.get("kind") == "pq":
        codec: StoreCodec = PQCodec.open(folder, params, centroids)
    elif params.get("kind") == "residual":
        codec = ResidualCodec.from_params(params, centroids)
    else:
        raise ResidualFormatError(f"not a compressed store: {params.get('kind')!r}")
    return open_residual(folder, codec, n_tokens)


#: ``--store residual`` without a width.
DEFAULT_RESIDUAL_BITS = 2


def store_files(store: dict[str, Any]) -> tuple[str, ...]:
    """The files of a store described by ``meta.json``'s ``"store"`` entry.

    >>> store_files({"kind": "float16"}), store_files({"kind": "residual", "centroids": "index"})
    (('tokens.f16',), ('residual.cids', 'residual.codes', 'residual.scales'))
    >>> store_files({"kind": "pq", "centroids": "file"})[3:]
    ('residual.codebooks', 'residual.centroids')
    """
    kind = store.get("kind", "float16")
    if kind == "float16":
        return (TOKENS,)
    extra = (CODEBOOKS,) if kind == "pq" else ()
    extra += (CENTROIDS,) if store.get("centroids") == "file" else ()
    return (CIDS, CODES, SCALES, *extra)


def store_label(store: dict[str, Any]) -> str:
    """``meta.json``'s ``"store"`` entry as the ``--store`` value that builds it.

    >>> store_label({"kind": "residual", "nbits": 1}), store_label({}), store_label(
    ...     {"kind": "pq", "m": 64})
    ('residual:1', 'float16', 'pq:64')
    """
    kind = store.get("kind", "float16")
    if kind == "float16":
        return "float16"
    if kind == "pq":
        return f"pq:{store.get('m')}"
    return f"{kind}:{store.get('nbits')}"


def store_kind(store: TokenStore) -> str:
    """``"float16"``, ``"residual"`` or ``"pq"``."""
    if isinstance(store, ResidualStore):
        return "pq" if isinstance(store.codec, PQCodec) else "residual"
    return "float16"
