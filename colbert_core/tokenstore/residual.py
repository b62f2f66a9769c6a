"""The residual token store: ColBERTv2's codec, centroid id + b-bit residual buckets.

A token vector ``x`` is stored as the id of a centroid ``c`` (for an IVF index, the list
FAISS put the token in: the coarse quantizer's centroids and assignment are reused, so the
store costs no second assignment pass and no second copy of the centroids) and, for every
dimension, the bucket of the residual ``x - c`` among ``2**nbits`` buckets. The bucket
cutoffs and the value each bucket decodes to (its weight) are quantiles of the residuals
of a training sample, shared by all dimensions, as in ColBERT's
``indexing/codecs/residual.py``. The decoded vector is ``c + weights[buckets]`` scaled to
unit length, as ColBERT's decompression normalises it: the scale ``1 / |c + r|`` is
stored per token (float16), because MaxSim never materialises the vector to normalise it.

Files (sizes and sha256 in ``meta.json`` like every other file)::

    residual.cids        (n_tokens,) uint16 (or uint32 beyond 65,536 centroids), LE
    residual.codes       (n_tokens, dim * nbits / 8) uint8; byte ``p`` holds dimensions
                         ``p*8/nbits ...``, the first one in the lowest bits
    residual.scales      (n_tokens,) float16, LE: 1 / |centroid + residual| per token
    residual.centroids   (n_centroids, dim) float32, LE - only when the index has no
                         coarse quantizer to read them from

Scoring never decodes (:meth:`ResidualStore.lookup_table`): for a query token ``q``,
``<q, c + r> = <q, c> + sum_p T_q[p, byte_p]``, where ``T_q[p, v]`` is the dot product of
``q``'s slice of byte ``p`` with the weights byte value ``v`` stands for. A token costs
``dim * nbits / 8`` table lookups instead of ``dim`` multiply-adds after a decode.

:class:`ResidualStore` also holds the residual product-quantised (:mod:`.pq`,
``--store pq:M``): any codec whose byte ``p`` with value ``v`` always decodes to the same
residual values (:class:`StoreCodec`) scores through the same table.
"""

from __future__ import annotations

import hashlib
import logging
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from ..storage.atomic import replace_durably, write_bytes_atomic

logger = logging.getLogger(__name__)

CIDS = "residual.cids"
CODES = "residual.codes"
SCALES = "residual.scales"
CENTROIDS = "residual.centroids"
NBITS = (1, 2, 4)

#: Rows encoded at a time while building: a float32 chunk of 16k rows is 25 MB at d=384.
ENCODE_CHUNK = 16_384

#: Bytes of centroid products computed in one matrix product by
#: :meth:`ResidualStore.lookup_tables` (1,024 query tokens at 4,096 centroids).
TABLE_BATCH_BYTES = 16 << 20

#: Tokens per sort when :func:`distinct_per_segment` collects documents' centroid ids:
#: its int64 temporaries (~6 per token) stay near 12 MB; at 4M tokens per sort they
#: raised a 10M-token searcher's peak RSS by 170 MB.
DISTINCT_CHUNK = 1 << 18


class ResidualFormatError(ValueError):
    """Residual store files or parameters that do not fit together."""


@dataclass(frozen=True)
class StoreCodec(ABC):
    """A codec of :class:`ResidualStore`: ColBERTv2's buckets (:class:`ResidualCodec`) or
    product quantisation (:class:`.pq.PQCodec`).

    Both store a centroid id and ``code_bytes`` bytes per token, and byte ``p`` with value
    ``v`` always decodes to the same ``dim / code_bytes`` residual values
    (:meth:`byte_vectors`), so one lookup table per query scores either.

    Attributes
    ----------
    centroids
        ``(n_centroids, dim)`` float32.
    """

    centroids: np.ndarray

    def __post_init__(self) -> None:
        if self.centroids.ndim != 2 or self.centroids.dtype != np.float32:
            raise ResidualFormatError("centroids must be a (n, dim) float32 array")

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid (largest inner product) of each row of ``x`` ``(n, dim)``."""
        return nearest_centroids(self.centroids, x)

    @property
    @abstractmethod
    def code_bytes(self) -> int:
        """Residual bytes per token (the centroid id comes on top)."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The codec's scalars and ``"kind"``, as recorded in ``meta.json``."""

    @abstractmethod
    def files(self) -> dict[str, bytes]:
        """Codec files written beside the codes (name -> contents)."""

    @abstractmethod
    def encode(self, x: np.ndarray, cids: np.ndarray) -> np.ndarray:
        """Codes ``(n, code_bytes)`` uint8 of ``x`` ``(n, dim)`` against centroids ``cids``."""

    @abstractmethod
    def byte_vectors(self) -> np.ndarray:
        """``(code_bytes, 256, dim / code_bytes)`` float32: what value ``v`` of byte ``p``
        decodes to."""

    @abstractmethod
    def decode(self, cids: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Centroid + decoded residual ``(n, dim)`` float32, before the per-token scale."""


def cid_dtype(n_centroids: int) -> np.dtype:
    """Little-endian unsigned type of the centroid ids: 2 bytes up to 65,536 centroids.

    >>> cid_dtype(4096), cid_dtype(70_000)
    (dtype('uint16'), dtype('uint32'))
    """
    return np.dtype("<u2") if n_centroids <= 1 << 16 else np.dtype("<u4")


@dataclass(frozen=True)
class ResidualCodec(StoreCodec):
    """Centroids, bucket cutoffs and bucket weights of the residual codec.

    Attributes
    ----------
    centroids
        ``(n_centroids, dim)`` float32.
    cutoffs
        ``(2**nbits - 1,)`` float32, ascending: a residual value ``v`` falls in bucket
        ``searchsorted(cutoffs, v, side="right")``.
    weights
        ``(2**nbits,)`` float32: what each bucket decodes to.
    nbits
        Bits per dimension: 1, 2 or 4.
    """

    cutoffs: np.ndarray
    weights: np.ndarray
    nbits: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.nbits not in NBITS:
            raise ResidualFormatError(f"nbits must be one of {NBITS}, got {self.nbits}")
        problem = residual_problem(self.nbits, self.dim)
        if problem:
            raise ResidualFormatError(problem)
        n = 1 << self.nbits
        if self.cutoffs.shape != (n - 1,) or self.weights.shape != (n,):
            raise ResidualFormatError(
                f"{self.nbits}-bit codec needs {n - 1} cutoffs and {n} weights, got "
                f"{self.cutoffs.shape[0]} and {self.weights.shape[0]}"
            )
        if not (np.all(np.isfinite(self.cutoffs)) and np.all(np.isfinite(self.weights))):
            raise ResidualFormatError("cutoffs and weights must be finite")
        if np.any(np.diff(self.cutoffs) < 0):
            raise ResidualFormatError("cutoffs must be ascending")

    @property
    def code_bytes(self) -> int:
        """Residual bytes per token (the centroid id comes on top)."""
        return self.dim * self.nbits // 8

    @property
    def bytes_per_token(self) -> int:
        """Stored bytes per token: centroid id + packed residual buckets + scale."""
        return self.code_bytes + cid_dtype(self.n_centroids).itemsize + 2

    @classmethod
    def train(
        cls, centroids: np.ndarray, sample: np.ndarray, sample_cids: np.ndarray, nbits: int
    ) -> ResidualCodec:
        """Cutoffs and weights from the residuals of ``sample`` ``(n, dim)`` to their
        centroids ``sample_cids`` ``(n,)``: quantiles over every residual value.

        >>> x = np.array([[-1., 1.] * 4, [-.5, .5] * 4])
        >>> codec = ResidualCodec.train(np.zeros((1, 8), np.float32), x, np.zeros(2, int), 1)
        >>> codec.cutoffs.tolist(), codec.weights.tolist()
        ([0.0], [-0.625, 0.625])
        """
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if len(sample) == 0:
            raise ResidualFormatError("no training vectors for the residual codec")
        res = (np.asarray(sample, dtype=np.float32) - centroids[sample_cids]).ravel()
        n = 1 << nbits
        cutoffs = np.quantile(res, np.arange(1, n) / n).astype(np.float32)
        weights = np.quantile(res, (np.arange(n) + 0.5) / n).astype(np.float32)
        return cls(centroids, cutoffs, weights, nbits)

    @classmethod
    def from_params(cls, params: dict[str, Any], centroids: np.ndarray) -> ResidualCodec:
        """The codec recorded in ``meta.json`` (:meth:`params`) over ``centroids``."""
        try:
            nbits = int(params["nbits"])
            cutoffs = np.asarray(params["cutoffs"], dtype=np.float32)
            weights = np.asarray(params["weights"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise ResidualFormatError(f"invalid store parameters in meta.json: {exc!r}") from exc
        return cls(centroids, cutoffs, weights, nbits)

    def params(self) -> dict[str, Any]:
        """The codec's scalars, as recorded in ``meta.json`` (centroids are a file)."""
        return {
            "kind": "residual",
            "nbits": self.nbits,
            "n_centroids": self.n_centroids,
            "cutoffs": [float(v) for v in self.cutoffs],
            "weights": [float(v) for v in self.weights],
        }

    def files(self) -> dict[str, bytes]:
        """Codec files beside the codes: none (the scalars fit in ``meta.json``)."""
        return {}

    def encode(self, x: np.ndarray, cids: np.ndarray) -> np.ndarray:
        """Packed residual buckets ``(n, code_bytes)`` uint8 of ``x`` against ``cids``.

        >>> codec = ResidualCodec(np.zeros((1, 8), np.float32), np.array([0.], np.float32),
        ...                       np.array([-1., 1.], np.float32), 1)
        >>> codec.encode(np.array([[1, -1, 1, 1, -1, -1, -1, 1]], np.float32), np.zeros(1, int))
        array([[141]], dtype=uint8)
        """
        res = np.asarray(x, dtype=np.float32) - self.centroids[cids]
        buckets = np.searchsorted(self.cutoffs, res, side="right").astype(np.uint8)
        per = 8 // self.nbits
        buckets = buckets.reshape(len(res), self.code_bytes, per)
        packed = np.zeros((len(res), self.code_bytes), dtype=np.uint8)
        for j in range(per):
            packed |= buckets[:, :, j] << np.uint8(self.nbits * j)
        return packed

    def byte_weights(self) -> np.ndarray:
        """``(256, 8 / nbits)`` float32: the weights each byte value stands for.

        >>> codec = ResidualCodec(np.zeros((1, 4), np.float32), np.array([0, 1, 2], np.float32),
        ...                       np.array([-2, -1, 1, 2], np.float32), 2)
        >>> codec.byte_weights()[0b11100100].tolist()
        [-2.0, -1.0, 1.0, 2.0]
        """
        per = 8 // self.nbits
        mask = (1 << self.nbits) - 1
        values = np.arange(256)[:, None] >> (self.nbits * np.arange(per))[None, :]
        return self.weights[values & mask].astype(np.float32)

    def byte_vectors(self) -> np.ndarray:
        """``(code_bytes, 256, 8 / nbits)`` float32: what value ``v`` of byte ``p`` decodes
        to - :meth:`byte_weights` for every byte (a read-only broadcast view)."""
        per = 8 // self.nbits
        return np.broadcast_to(self.byte_weights(), (self.code_bytes, 256, per))

    def decode(self, cids: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Centroid + bucket weights ``(n, dim)`` float32, before the per-token scale."""
        residual = self.byte_weights()[np.asarray(codes)].reshape(len(codes), self.dim)
        return self.centroids[np.asarray(cids, dtype=np.int64)] + residual


def residual_problem(nbits: int, dim: int) -> str | None:
    """Why ``residual:nbits`` cannot code vectors of ``dim``, or ``None``: a byte holds
    ``8 / nbits`` dimensions, so ``dim`` must be a multiple of that.

    >>> residual_problem(2, 384) is None, residual_problem(1, 100)
    (True, 'dimension 100 is not a multiple of 8 (dimensions per byte at 1 bit): use residual:2 or residual:4')
    """
    per_byte = 8 // nbits
    if dim % per_byte == 0:
        return None
    fits = [f"residual:{b}" for b in NBITS if dim % (8 // b) == 0]
    hint = f"use {' or '.join(fits)}" if fits else "use pq:M or float16"
    unit = "bit" if nbits == 1 else "bits"
    return (
        f"dimension {dim} is not a multiple of {per_byte} (dimensions per byte at "
        f"{nbits} {unit}): {hint}"
    )


def nearest_centroids(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the centroid with the largest inner product, per row of ``x``; ``(n,)``."""
    quantizer = faiss.IndexFlatIP(centroids.shape[1])
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    out = np.empty(len(x), dtype=np.int64)
    for lo in range(0, len(x), ENCODE_CHUNK):
        chunk = np.ascontiguousarray(x[lo : lo + ENCODE_CHUNK], dtype=np.float32)
        out[lo : lo + len(chunk)] = quantizer.search(chunk, 1)[1][:, 0]
    return out


def unit_scales(raw: np.ndarray) -> np.ndarray:
    """``1 / |row|`` per row of ``raw`` ``(n, dim)``, as float16: 0 for a zero row, and at
    most float16's largest value (65504) for a row shorter than 1/65504, which would
    otherwise store an infinite scale and score inf or NaN.

    >>> unit_scales(np.array([[3.0, 4.0], [0.0, 0.0], [1e-6, 0.0]])).tolist()
    [0.199951171875, 0.0, 65504.0]
    """
    norms = np.linalg.norm(raw.astype(np.float64), axis=1)
    with np.errstate(divide="ignore"):
        scales = np.where(norms > 0, 1.0 / norms, 0.0)
    return np.minimum(scales, np.finfo(np.float16).max).astype("<f2")


class ResidualStoreWriter:
    """Encode float16 token chunks into ``residual.cids`` and ``residual.codes`` (through
    temp files, hashed as they are written)."""

    def __init__(self, folder: Path, codec: StoreCodec, *, write_centroids: bool):
        self.folder = folder
        self.codec = codec
        self.write_centroids = write_centroids
        self.n_tokens = 0
        self._dtype = cid_dtype(codec.n_centroids)
        self._files = {name: folder / f".{name}.tmp" for name in (CIDS, CODES, SCALES)}
        self._handles = {name: path.open("wb") for name, path in self._files.items()}
        self._sha = {name: hashlib.sha256() for name in self._files}

    def append(self, tokens: np.ndarray, cids: np.ndarray | None) -> None:
        """Encode ``tokens`` ``(n, dim)``; ``cids`` ``(n,)`` from the index, or ``None`` to
        assign each token to its nearest centroid."""
        if cids is None:
            cids = self.codec.assign(tokens)
        if cids.shape != (len(tokens),):
            raise ResidualFormatError(f"{len(cids)} centroid ids for {len(tokens)} tokens")
        codes = self.codec.encode(tokens, cids)
        self._write(CIDS, np.ascontiguousarray(cids, dtype=self._dtype).tobytes())
        self._write(CODES, codes.tobytes())
        self._write(SCALES, unit_scales(self.codec.decode(cids, codes)).tobytes())
        self.n_tokens += len(tokens)

    def _write(self, name: str, raw: bytes) -> None:
        self._handles[name].write(raw)
        self._sha[name].update(raw)

    def close(self) -> dict[str, dict[str, int | str]]:
        """Move the files into place; returns ``{name: {"bytes", "sha256"}}``."""
        out: dict[str, dict[str, int | str]] = {}
        for name, fh in self._handles.items():
            fh.close()
            replace_durably(self._files[name], self.folder / name)
            out[name] = {"bytes": (self.folder / name).stat().st_size}
            out[name]["sha256"] = self._sha[name].hexdigest()
        extra = dict(self.codec.files())
        if self.write_centroids:
            extra[CENTROIDS] = np.ascontiguousarray(self.codec.centroids, dtype="<f4").tobytes()
        for name, raw in extra.items():
            write_bytes_atomic(self.folder / name, raw)
            out[name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        return out

    def abort(self) -> None:
        for name, fh in self._handles.items():
            fh.close()
            self._files[name].unlink(missing_ok=True)


def token_space_ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF index inside ``index`` whose coarse quantizer works on the token vectors
    themselves, or ``None``. Behind a pre-transform (an ``OPQ``, ``PCA`` or ``L2norm``
    factory prefix) the centroids and lists live in the transformed space: residuals to
    them would be wrong (OPQ) or of the wrong dimension (PCA), so such a store trains its
    own centroids, as over a non-IVF index."""
    if isinstance(index, faiss.IndexPreTransform):
        return None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or ivf.d != index.d:
        return None
    return ivf


def ivf_assignment(index: faiss.Index) -> np.ndarray | None:
    """Each token's IVF list in ``index`` (token ids 0..ntotal-1), int32, or ``None``
    unless :func:`token_space_ivf` finds one. Read off the inverted lists: FAISS already
    assigned every token.

    Raises
    ------
    ResidualFormatError
        When the lists do not hold every token id 0..ntotal-1 exactly once.
    """
    ivf = token_space_ivf(index)
    if ivf is None:
        return None
    out = np.full(index.ntotal, -1, dtype=np.int32)  # 4 bytes, not 8: read at 10^9 tokens
    seen = 0
    invlists = ivf.invlists
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            ids = np.asarray(faiss.rev_swig_ptr(invlists.get_ids(lst), size), dtype=np.int64)
            if ids.min() < 0 or ids.max() >= index.ntotal:
                raise ResidualFormatError(
                    f"IVF list {lst} holds token id {int(ids.max())} or {int(ids.min())}, "
                    f"outside 0..{index.ntotal - 1}"
                )
            out[ids] = lst
            seen += size
    if seen != index.ntotal or np.any(out < 0):
        raise ResidualFormatError("the IVF index does not hold every token id once")
    return out


def ivf_centroids(index: faiss.Index) -> np.ndarray | None:
    """The coarse quantizer's centroids ``(nlist, dim)`` float32, or ``None`` unless
    :func:`token_space_ivf` finds one."""
    ivf = token_space_ivf(index)
    if ivf is None:
        return None
    return np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), dtype=np.float32)


def train_centroids(sample: np.ndarray, n_centroids: int, seed: int) -> np.ndarray:
    """k-means centroids (inner product, as the index's) for a store over a non-IVF index."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n_centroids = max(1, min(n_centroids, len(sample)))
    km = faiss.Kmeans(sample.shape[1], n_centroids, niter=20, seed=seed, spherical=True)
    km.train(sample)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


class ResidualStore:
    """A residual store opened for search: memory-mapped centroid ids, codes and scales,
    and the codec."""

    def __init__(self, codec: StoreCodec, cids: np.ndarray, codes: np.ndarray, scales: np.ndarray):
        if (
            cids.shape[0] != codes.shape[0]
            or codes.shape[1:] != (codec.code_bytes,)
            or scales.shape != cids.shape
        ):
            raise ResidualFormatError(
                f"{cids.shape[0]} centroid ids, codes of shape {codes.shape} and "
                f"{scales.shape[0]} scales, expected (n, {codec.code_bytes}) codes and n scales"
            )
        self.codec = codec
        self.cids = cids
        self.codes = codes
        self.scales = scales
        self._centroids = torch.from_numpy(codec.centroids)
        self._byte_vectors = torch.tensor(codec.byte_vectors())  # a copy: the bmm's operand
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only memmaps, only read
            self._codes_t = torch.from_numpy(np.asarray(codes))
            # torch has no index_select for unsigned 16/32-bit ints: gather the same bits
            # as signed ints and mask them back (bag_indices).
            raw = np.asarray(cids)
            self._cids_t = torch.from_numpy(raw.view(np.int16 if raw.itemsize == 2 else np.int32))
            self._scales_t = torch.from_numpy(np.asarray(scales))
        self._cid_mask = (1 << 16) - 1 if np.asarray(cids).itemsize == 2 else None
        self._row_offsets = torch.empty(0, dtype=torch.int32)
        # (the document offsets it was built for, ids, bounds): document_centroids.
        self._doc_centroids: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.cids.shape[0])

    @property
    def dim(self) -> int:
        return self.codec.dim

    def decode(self, rows: np.ndarray) -> np.ndarray:
        """Decoded (unit) vectors of token ``rows`` ``(n,)`` -> ``(n, dim)`` float32."""
        raw = self.codec.decode(self.cids[rows], self.codes[rows])
        return raw * np.asarray(self.scales[rows], dtype=np.float32)[:, None]

    def token_scales(self, rows: np.ndarray) -> torch.Tensor:
        """``(n, 1)`` float32 scales of token ``rows``: multiply the bag sums by them."""
        return torch.index_select(self._scales_t, 0, torch.from_numpy(rows)).float()[:, None]

    def lookup_table(self, query: np.ndarray) -> torch.Tensor:
        """The query's scoring table: ``(code_bytes * 256 + n_centroids, n_q)`` float32.

        Row ``p * 256 + v`` holds, for every query token, the dot product of its
        dimensions stored in byte ``p`` with what byte value ``v`` decodes to
        (the codec's ``byte_vectors``); row
        ``code_bytes * 256 + c`` holds ``<q_i, centroid_c>``. A token's score for every
        query token is the sum of the rows its bytes and its centroid select
        (:meth:`bag_indices`), ``<q_i, c + r>``, times its scale (:meth:`token_scales`):
        the decoded vector's dot product.
        """
        return next(self.lookup_tables([query]))

    def lookup_tables(self, queries: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        """:meth:`lookup_table` of each query ``(n_q, dim)`` in turn.

        The centroid rows of consecutive queries come from one matrix product (up to
        :data:`TABLE_BATCH_BYTES` of products at a time): one query's ~20-30 tokens
        against 4,096 centroids run at half the multiply-add rate of a batched product, and
        this product is the largest part of building a table.
        """
        per_product = max(1, TABLE_BATCH_BYTES // (4 * self.codec.n_centroids))
        lo = 0
        while lo < len(queries):
            hi, n_tokens = lo + 1, len(queries[lo])
            while hi < len(queries) and n_tokens + len(queries[hi]) <= per_product:
                n_tokens += len(queries[hi])
                hi += 1
            batch = [np.ascontiguousarray(q, dtype=np.float32) for q in queries[lo:hi]]
            products = self._centroids @ torch.from_numpy(np.concatenate(batch)).T
            row = 0
            for q in batch:
                yield self._table(q, products[:, row : row + len(q)])
                row += len(q)
            lo = hi

    def _table(self, query: np.ndarray, centroid_products: torch.Tensor) -> torch.Tensor:
        """:meth:`lookup_table` from the query's ``(n_centroids, n_q)`` centroid products."""
        q = torch.from_numpy(query)
        n_q, n_bytes = q.shape[0], self.codec.code_bytes
        table = torch.empty((n_bytes * 256 + self.codec.n_centroids, n_q), dtype=torch.float32)
        # Written in place (a concatenation would copy the table once more).
        # Per byte p: (256, per) @ (per, n_q), batched over p -> (P, 256, n_q).
        # An explicit width: -1 cannot be inferred for a query with no tokens.
        q_bytes = q.reshape(n_q, n_bytes, self.codec.dim // n_bytes).permute(1, 2, 0)
        bytes_part = table[: n_bytes * 256].view(n_bytes, 256, n_q)
        torch.bmm(self._byte_vectors, q_bytes, out=bytes_part)
        table[n_bytes * 256 :].copy_(centroid_products)
        return table

    def document_centroids(self, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each document's distinct centroid ids (ascending), documents back to back:
        ``(ids (m,), bounds (n_docs + 1,) int64)``; document ``k`` owns
        ``ids[bounds[k]:bounds[k + 1]]``.

        The centroid interaction takes a maximum over a document's tokens' centroids, and
        a document's tokens share about half of them (SciFact: 48% are distinct), so it
        reads these instead of every token's id. Built on first use for ``offsets`` (the
        index's token -> document offsets; ~2 s per 10M tokens; ``search.warm`` does it
        before any query is timed) and kept: 1-2 bytes per token of uint16 ids.
        """
        cached = self._doc_centroids
        if cached is None or cached[0] is not offsets:
            t0 = time.perf_counter()
            cached = (offsets, *distinct_per_segment(self.cids, offsets))
            self._doc_centroids = cached
            logger.info(
                "collected the distinct centroids of %d documents (%d of %d token ids, "
                "%.1f s; 2 s per 10M tokens)",
                len(offsets) - 1,
                len(cached[1]),
                self.n_tokens,
                time.perf_counter() - t0,
            )
        return cached[1], cached[2]

    def bag_indices(self, rows: np.ndarray, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` ``(len(rows), code_bytes + 1)`` int32 with the table rows of tokens
        ``rows``: ``p * 256 + byte_p`` per byte, then ``code_bytes * 256 + centroid``."""
        n_bytes = self.codec.code_bytes
        if self._row_offsets.shape != (n_bytes + 1,):
            self._row_offsets = torch.arange(n_bytes + 1, dtype=torch.int32) * 256
        index = torch.from_numpy(rows)
        out[:, :n_bytes].copy_(torch.index_select(self._codes_t, 0, index))
        centroid = out[:, n_bytes]
        centroid.copy_(torch.index_select(self._cids_t, 0, index))
        if self._cid_mask is not None:
            centroid.bitwise_and_(self._cid_mask)
        # In place on a reused int32 buffer: a fresh, promoted uint8 + int32 sum costs
        # 15x more.
        return out.add_(self._row_offsets)


def distinct_per_segment(
    values: np.ndarray, offsets: np.ndarray, chunk: int = DISTINCT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``values`` of each segment ``offsets[k]:offsets[k + 1]``, ascending,
    segments back to back, and their bounds ``(n_segments + 1,)`` int64. Sorts about
    ``chunk`` values at a time, so a memory-mapped ``values`` is read once, in order.

    >>> ids, bounds = distinct_per_segment(np.array([3, 1, 3, 2, 2]), np.array([0, 3, 3, 5]))
    >>> ids.tolist(), bounds.tolist()
    ([1, 3, 2], [0, 2, 2, 3])
    """
    n_segments = len(offsets) - 1
    counts = np.zeros(n_segments, dtype=np.int64)
    parts = [np.zeros(0, dtype=values.dtype)]
    lo = 0
    while lo < n_segments:
        # The segments that start within ``chunk`` values (at least one).
        hi = int(np.searchsorted(offsets, offsets[lo] + chunk, side="right")) - 1
        hi = min(max(hi, lo + 1), n_segments)
        part = np.asarray(values[offsets[lo] : offsets[hi]], dtype=np.int64)
        width = int(part.max()) + 1 if part.size else 1
        owner = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(offsets[lo : hi + 1]))
        keys = np.unique(owner * width + part)  # sorted by segment, then value
        parts.append((keys % width).astype(values.dtype))
        counts[lo:hi] = np.bincount(keys // width, minlength=hi - lo)
        lo = hi
    bounds = np.zeros(n_segments + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    return np.concatenate(parts), bounds


def read_centroids(
    folder: Path, params: dict[str, Any], dim: int, index: faiss.Index
) -> np.ndarray:
    """A store's centroids ``(n_centroids, dim)`` float32: the IVF index's coarse quantizer
    (``params["centroids"] == "index"``) or :data:`CENTROIDS`.

    Raises
    ------
    ResidualFormatError
        When ``params`` (from ``meta.json``), the file and the index disagree.
    """
    try:
        n_centroids = int(params["n_centroids"])
        source = str(params["centroids"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ResidualFormatError(f"invalid store parameters in meta.json: {exc!r}") from exc
    if source == "index":
        centroids = ivf_centroids(index)
        if centroids is None:
            raise ResidualFormatError(
                "the store reads its centroids from the index's coarse quantizer, but the "
                "index has none over the token vectors (not IVF, or IVF behind a "
                "pre-transform such as OPQ or PCA, where the store trains its own): "
                "rebuild the index"
            )
    elif source == "file":
        raw = np.fromfile(folder / CENTROIDS, dtype="<f4")
        if raw.size != n_centroids * dim:
            raise ResidualFormatError(f"{CENTROIDS}: {raw.size} values, not {n_centroids} x {dim}")
        centroids = raw.reshape(n_centroids, dim)
    else:
        raise ResidualFormatError(f"unknown centroid source {source!r}")
    if centroids.shape != (n_centroids, dim):
        raise ResidualFormatError(
            f"{centroids.shape[0]} centroids of dim {centroids.shape[1]}, meta.json says "
            f"{n_centroids} of dim {dim}"
        )
    return centroids.astype(np.float32)


#: Scales checked per block when a store is opened.
SCALE_CHECK_BLOCK = 1 << 24


def open_residual(folder: Path, codec: StoreCodec, n_tokens: int) -> ResidualStore:
    """Map the codes of a store folder (file sizes and hashes already checked) for
    ``codec``.

    Raises
    ------
    ResidualFormatError
        When a file's size does not fit ``n_tokens`` and the codec, a centroid id is out
        of range or a scale is not finite.
    """
    dtype = cid_dtype(codec.n_centroids)
    cids = _map(folder / CIDS, dtype, (n_tokens,))
    codes = _map(folder / CODES, np.dtype(np.uint8), (n_tokens, codec.code_bytes))
    scales = _map(folder / SCALES, np.dtype("<f2"), (n_tokens,))
    if n_tokens and int(cids.max()) >= codec.n_centroids:
        raise ResidualFormatError(f"{CIDS}: a centroid id is >= {codec.n_centroids}")
    # As cheap as the id check (one pass over 2 bytes per token, in blocks: no n-long
    # mask); catches a damaged file opened without hashing (verify=False) before it
    # scores NaN.
    for lo in range(0, n_tokens, SCALE_CHECK_BLOCK):
        if not np.isfinite(scales[lo : lo + SCALE_CHECK_BLOCK]).all():
            raise ResidualFormatError(f"{SCALES}: a scale is not finite")
    return ResidualStore(codec, cids, codes, scales)


def _map(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    expected = int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size != expected:
        raise ResidualFormatError(f"{path.name}: {size} bytes, expected {expected}")
    if expected == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def iter_chunks(tokens: np.ndarray, size: int = ENCODE_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows)`` chunks of a token matrix, as float32.

    A memory-mapped file is mapped again per chunk and unmapped once the chunk is copied:
    pages read through one long-lived mapping stay in the process's RSS, so compressing
    a 12.6 GB float16 store (303K documents at d=384) peaked at 13.6 GB; per-chunk
    mappings keep one chunk resident.
    """
    mapped = isinstance(tokens, np.memmap) and tokens.filename is not None and tokens.ndim == 2
    row_bytes = tokens.shape[-1] * tokens.dtype.itemsize
    for lo in range(0, len(tokens), size):
        part = tokens[lo : lo + size]
        if mapped:
            part = np.memmap(
                tokens.filename,
                dtype=tokens.dtype,
                mode="r",
                offset=tokens.offset + lo * row_bytes,
                shape=part.shape,
            )
        yield lo, np.array(part, dtype=np.float32)  # a copy: a chunk's mapping goes with it


#: Tokens sampled to fit the codec's cutoffs and weights: 65,536 x dim residual values
#: (25M at d=384) pin a handful of quantiles far below their effect on ranking, and keep
#: the build's extra memory to ~0.1 GB x dim/384.
CODEC_SAMPLE = 65_536

#: k-means sample per centroid for a store over a non-IVF index (the IVF rule's 40).
KMEANS_PER_CENTROID = 40


def sample_rows(tokens: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows drawn without replacement (seeded), in order, as float32, and their ids."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(tokens), size=min(n, len(tokens)), replace=False))
    return np.asarray(tokens[pick], dtype=np.float32), pick


#: Fits a codec to ``(centroids, sample, sample centroid ids)``.
CodecTrainer = Callable[[np.ndarray, np.ndarray, np.ndarray], StoreCodec]


def write_residual_store(
    folder: Path, tokens: np.ndarray, index: faiss.Index, train: CodecTrainer, seed: int
) -> tuple[dict[str, dict[str, int | str]], dict[str, Any]]:
    """Encode the float16 ``tokens`` ``(n_tokens, dim)`` into a residual store in ``folder``
    with the codec ``train`` fits (:func:`.store.codec_trainer`).

    Centroids and assignments come from ``index`` when it is IVF (its coarse quantizer
    and inverted lists); otherwise k-means (``4 sqrt(n)`` centroids, as IVF's rule) on a
    seeded sample and a nearest-centroid search per chunk. Returns the written files'
    ``{"bytes", "sha256"}`` entries and the parameters for ``meta.json``.
    """
    from ..index.spec import default_nlist  # the one nlist rule (index imports tokenstore)

    n = len(tokens)
    centroids = ivf_centroids(index)
    assignment = ivf_assignment(index) if centroids is not None else None
    if centroids is None:
        n_centroids = default_nlist(n)
        km_sample, _ = sample_rows(
            tokens, max(CODEC_SAMPLE, KMEANS_PER_CENTROID * n_centroids), seed
        )
        centroids = train_centroids(km_sample, n_centroids, seed)
        del km_sample
    # Cutoffs and weights from a second draw (ColBERT fits them on held-out vectors).
    sample, pick = sample_rows(tokens, CODEC_SAMPLE, seed + 1)
    sample_cids = nearest_centroids(centroids, sample) if assignment is None else assignment[pick]
    codec = train(centroids, sample, sample_cids)
    writer = ResidualStoreWriter(folder, codec, write_centroids=assignment is None)
    try:
        for lo, chunk in iter_chunks(tokens):
            cids = None if assignment is None else assignment[lo : lo + len(chunk)]
            writer.append(chunk, cids)
        entries = writer.close()
    except BaseException:
        writer.abort()
        raise
    params = codec.params()
    params["centroids"] = "index" if assignment is not None else "file"
    return entries, params
