"""Residual product quantisation (``--store pq:M``): centroid id + ``M`` bytes of PQ codes.

Like ColBERTv2's codec (:mod:`.residual`), a token is stored as a centroid ``c`` (the IVF
list FAISS put it in) and a coded residual ``x - c``. Here the residual is
product-quantised (FAISS ``ProductQuantizer``, 8 bits per sub-quantizer): cut into ``M``
sub-vectors of ``dim / M`` dimensions, each replaced by the nearest of 256 codewords that
k-means learned on a training sample's residuals. ColBERT's buckets spend the same bits
on each dimension alone, with ``2**B`` values shared by every dimension; the codewords
are fitted to where residuals lie, and reconstruct closer: at 96 bytes on MIRACL-de
(d=384) a mean cosine of 0.978 to the original vectors against 0.958. In nDCG@10 that
is worth less than the spread of the codec's training draw at 2 bits, and PQ loses less
than ColBERT's codec at 1 bit (bench/RESULTS.md).

Scoring is the residual store's table lookup unchanged (:class:`.residual.ResidualStore`):
byte ``p`` of a token is the codeword of sub-quantizer ``p``, and table row ``p * 256 + v``
holds each query token's dot product with codeword ``v`` of sub-quantizer ``p``
(:meth:`PQCodec.byte_vectors`). The decoded vector ``c + codewords`` is scaled to unit
length by the stored per-token scale, as for the residual codec.

Files: the residual store's ``residual.cids``, ``residual.codes`` (``(n_tokens, M)``
uint8, byte ``p`` = sub-quantizer ``p``), ``residual.scales`` (and ``residual.centroids``
without an IVF index), plus::

    residual.codebooks   (M, 256, dim / M) float32, LE: the codewords
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .residual import ResidualFormatError, StoreCodec

CODEBOOKS = "residual.codebooks"

#: Codewords per sub-quantizer: one byte per sub-vector, so a byte indexes the table.
CODEWORDS = 256


def pq_problem(m: int, dim: int, n_tokens: int) -> str | None:
    """Why ``pq:m`` cannot be built over ``n_tokens`` tokens of ``dim``, or ``None``.

    >>> pq_problem(64, 384, 10_000) is None, pq_problem(60, 384, 10_000)
    (True, 'pq:60 needs a number of bytes that divides the dimension 384: e.g. pq:16 or pq:24 or pq:32 or pq:48 or pq:64 or pq:96 or pq:128 or pq:192')
    """
    if m < 1 or dim % m:
        divisors = [k for k in (16, 24, 32, 48, 64, 96, 128, 192) if dim % k == 0]
        return (
            f"pq:{m} needs a number of bytes that divides the dimension {dim}: "
            f"e.g. pq:{' or pq:'.join(map(str, divisors or [dim]))}"
        )
    if n_tokens < CODEWORDS:
        return (
            f"pq:{m} trains {CODEWORDS} codewords per byte and needs at least {CODEWORDS} "
            f"tokens, the index has {n_tokens}: use residual:B for an index this small"
        )
    return None


@dataclass(frozen=True)
class PQCodec(StoreCodec):
    """Centroids and product-quantiser codewords of the residual PQ codec.

    Attributes
    ----------
    centroids
        ``(n_centroids, dim)`` float32.
    codebooks
        ``(m, 256, dim / m)`` float32: codeword ``v`` of sub-quantizer ``p`` is
        ``codebooks[p, v]``, the residual's dimensions ``p * dim / m ...`` decode to it.
    """

    codebooks: np.ndarray
    _pq: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        m = self.codebooks.shape[0] if self.codebooks.ndim == 3 else 0
        if (
            self.codebooks.dtype != np.float32
            or self.codebooks.ndim != 3
            or self.codebooks.shape[1] != CODEWORDS
            or m * self.codebooks.shape[2] != self.dim
        ):
            raise ResidualFormatError(
                f"codebooks of shape {self.codebooks.shape} ({self.codebooks.dtype}) do not "
                f"fit dim {self.dim}: expected float32 (m, {CODEWORDS}, {self.dim} / m)"
            )
        if not np.all(np.isfinite(self.codebooks)):
            raise ResidualFormatError("codebooks must be finite")
        pq = faiss.ProductQuantizer(self.dim, m, 8)
        faiss.copy_array_to_vector(np.ascontiguousarray(self.codebooks).ravel(), pq.centroids)
        # A codeword-major copy FAISS's encoder vectorises over: 25% faster at dim/m = 6,
        # which has no specialised nearest-codeword kernel (4 and 8 have; 10x faster).
        # (FAISS >= 1.7.3; older builds encode the same codes without it.)
        if hasattr(pq, "sync_transposed_centroids"):
            pq.sync_transposed_centroids()
        object.__setattr__(self, "_pq", pq)  # FAISS encodes with it

    @property
    def m(self) -> int:
        """Sub-quantizers, one byte each."""
        return int(self.codebooks.shape[0])

    @property
    def code_bytes(self) -> int:
        """Residual bytes per token (the centroid id comes on top)."""
        return self.m

    @classmethod
    def train(
        cls,
        centroids: np.ndarray,
        sample: np.ndarray,
        sample_cids: np.ndarray,
        m: int,
        seed: int,
    ) -> PQCodec:
        """Codewords by k-means on the residuals of ``sample`` ``(n, dim)`` to their
        centroids ``sample_cids`` ``(n,)``, seeded.

        Raises
        ------
        ResidualFormatError
            When ``m`` does not divide the dimension or the sample has fewer than 256
            tokens (k-means needs a token per codeword).
        """
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        dim = centroids.shape[1]
        problem = pq_problem(m, dim, len(sample))
        if problem:
            raise ResidualFormatError(problem)
        res = np.ascontiguousarray(np.asarray(sample, dtype=np.float32) - centroids[sample_cids])
        pq = faiss.ProductQuantizer(dim, m, 8)
        pq.cp.seed = seed
        pq.train(res)
        codebooks = faiss.vector_to_array(pq.centroids).reshape(m, CODEWORDS, dim // m)
        return cls(centroids, codebooks.astype(np.float32))

    @classmethod
    def open(cls, folder: Path, params: dict[str, Any], centroids: np.ndarray) -> PQCodec:
        """The codec of a store folder: ``params`` from ``meta.json``, codewords from
        :data:`CODEBOOKS` (its size and hash already checked)."""
        try:
            m = int(params["m"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ResidualFormatError(f"invalid pq parameters in meta.json: {exc!r}") from exc
        dim = centroids.shape[1]
        raw = np.fromfile(folder / CODEBOOKS, dtype="<f4")
        if m < 1 or dim % m or raw.size != dim * CODEWORDS:
            raise ResidualFormatError(
                f"{CODEBOOKS}: {raw.size} values do not hold {m} sub-quantizers of "
                f"{CODEWORDS} codewords at dim {dim}"
            )
        return cls(centroids, raw.reshape(m, CODEWORDS, dim // m).astype(np.float32))

    def params(self) -> dict[str, Any]:
        """The codec's scalars, as recorded in ``meta.json`` (codewords are a file)."""
        return {"kind": "pq", "m": self.m, "n_centroids": self.n_centroids}

    def files(self) -> dict[str, bytes]:
        """Codec files written beside the codes: the codewords."""
        return {CODEBOOKS: np.ascontiguousarray(self.codebooks, dtype="<f4").tobytes()}

    def encode(self, x: np.ndarray, cids: np.ndarray) -> np.ndarray:
        """PQ codes ``(n, m)`` uint8 of the residuals of ``x`` to centroids ``cids``."""
        res = np.ascontiguousarray(np.asarray(x, dtype=np.float32) - self.centroids[cids])
        return self._pq.compute_codes(res)

    def byte_vectors(self) -> np.ndarray:
        """``(m, 256, dim / m)`` float32: what value ``v`` of byte ``p`` decodes to."""
        return self.codebooks

    def decode(self, cids: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Centroid + codewords ``(n, dim)`` float32, before the per-token scale.

        >>> codec = PQCodec(np.ones((1, 4), np.float32),
        ...                 np.arange(2 * 256 * 2, dtype=np.float32).reshape(2, 256, 2))
        >>> codec.decode(np.zeros(1, int), np.array([[1, 0]], np.uint8)).tolist()
        [[3.0, 4.0, 513.0, 514.0]]
        """
        codes = np.asarray(codes, dtype=np.int64)
        words = self.codebooks[np.arange(self.m), codes].reshape(len(codes), self.dim)
        return self.centroids[np.asarray(cids, dtype=np.int64)] + words
