"""Which FAISS index to build, and the documented rules that size it from the token count.

Every index searches by inner product over L2-normalised token vectors (cosine).

Rules (each overridable):

* ``flat``: ``Flat`` - exact inner product, no training.
* ``ivfpq``: ``IVF{nlist},PQ{m}x{nbits}`` with PQ on residuals (FAISS's default).
  ``nlist`` = the power of two nearest to ``4 * sqrt(n_tokens)`` (FAISS's guideline is
  4-16 x sqrt(N)), clamped to ``[16, 65536]`` and to at most ``n_tokens / 39`` so k-means
  has its 39 points per centroid. ``m`` = ``dim / 16`` sub-quantizers of ``nbits = 8``:
  ``dim / 16`` bytes of code per token, plus the 8-byte id FAISS keeps per entry, so
  d=128 costs 16 bytes/token (the float16 token store for exact MaxSim is separate).
  No polysemous training (``index_factory``'s default for PQ): it only serves Hamming
  filtering, which search does not use, and cost seconds per sub-quantizer.
* ``hnsw``: ``HNSW{M},Flat`` (or ``HNSW{M},SQ8`` with ``hnsw_storage="sq8"``), ``M = 32``,
  ``efConstruction = 80``.
* any FAISS ``index_factory`` string via ``factory``.

Training sample (seeded, drawn uniformly over all tokens of all shards): IVF types use
``clamp(40 * nlist, 39 * nlist, 1_000_000)`` vectors (k-means needs 39 points per
centroid; more sample buys little and training time grows linearly with it), other trainable indices (SQ, a
custom factory) ``min(n_tokens, 200_000)``; never more than ``n_tokens``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..config import check_choice, check_positive
from ..errors import ColbertBatchError, ConfigError
from ..tokenstore.store import StoreSpec

IndexType = Literal["flat", "ivfpq", "hnsw", "factory"]

MIN_POINTS_PER_CENTROID = 39
TRAIN_PER_CENTROID = 40
MAX_TRAIN = 1_000_000
DEFAULT_OTHER_TRAIN = 200_000


@dataclass(frozen=True)
class IndexSpec:
    """A resolved index configuration (written into ``meta.json``)."""

    type: IndexType
    factory: str
    dim: int
    train_sample: int
    seed: int = 0
    nlist: int | None = None
    pq_m: int | None = None
    pq_nbits: int | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None

    @property
    def is_ivf(self) -> bool:
        return self.factory.upper().startswith("IVF") or ",IVF" in self.factory.upper()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class IndexSpecError(ColbertBatchError, ValueError):
    """The requested index parameters are inconsistent with the data."""


INDEX_TYPES = ("flat", "ivfpq", "hnsw")


@dataclass(frozen=True)
class IndexConfig:
    """The index options a user asks for (command line or pipeline YAML), before the
    rules above size them for the data (:meth:`resolve`); recorded in ``meta.json``.
    """

    type: str = "ivfpq"
    factory: str | None = None
    nlist: int | None = None
    pq_m: int | None = None
    pq_nbits: int | None = None
    hnsw_m: int | None = None
    ef_construction: int | None = None
    hnsw_storage: str = "flat"
    train_sample: int | None = None
    seed: int = 0
    store: str = "float16"

    def __post_init__(self) -> None:
        check_choice(self, "type", INDEX_TYPES)
        try:
            spec = StoreSpec.parse(self.store)
        except ConfigError as exc:
            raise ConfigError.invalid("store", f"is invalid: {exc}") from exc
        # One spelling per store ("residual" is "residual:2", "PQ:64" is "pq:64"), so the
        # recorded build options of equal stores compare equal (no needless rebuild).
        object.__setattr__(self, "store", str(spec))
        check_choice(self, "hnsw_storage", ("flat", "sq8"))
        check_positive(self, "nlist", "pq_m", "pq_nbits", "hnsw_m", "ef_construction")
        check_positive(self, "train_sample")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def resolve(self, *, n_tokens: int, dim: int) -> IndexSpec:
        """The :class:`IndexSpec` these options give for ``n_tokens`` vectors of ``dim``."""
        options = self.to_dict()
        del options["store"]  # the token store is not part of the FAISS index
        return resolve_spec(n_tokens=n_tokens, dim=dim, **options)

    @property
    def store_spec(self) -> StoreSpec:
        """The token store these options ask for."""
        return StoreSpec.parse(self.store)


def default_nlist(n_tokens: int) -> int:
    """Power of two nearest to ``4 * sqrt(n_tokens)``, within k-means' needs.

    >>> default_nlist(1_242_251), default_nlist(10_000_000), default_nlist(5_000)
    (4096, 16384, 128)
    """
    target = 4 * math.sqrt(max(n_tokens, 1))
    nlist = 2 ** round(math.log2(target))
    nlist = min(nlist, 65536, max(1, n_tokens // MIN_POINTS_PER_CENTROID))
    return max(16, nlist) if n_tokens >= 16 * MIN_POINTS_PER_CENTROID else max(1, nlist)


def default_pq_m(dim: int) -> int:
    """``dim / 16`` sub-quantizers, adjusted down to a divisor of ``dim``.

    >>> default_pq_m(128), default_pq_m(384), default_pq_m(96)
    (8, 24, 6)
    """
    m = max(1, dim // 16)
    while dim % m:
        m -= 1
    return m


def resolve_spec(
    type: IndexType,
    *,
    n_tokens: int,
    dim: int,
    factory: str | None = None,
    nlist: int | None = None,
    pq_m: int | None = None,
    pq_nbits: int | None = None,
    hnsw_m: int | None = None,
    ef_construction: int | None = None,
    hnsw_storage: str = "flat",
    train_sample: int | None = None,
    seed: int = 0,
) -> IndexSpec:
    """Apply the rules above; explicit arguments win.

    Raises
    ------
    IndexSpecError
        For parameters FAISS would reject or that the data cannot support.
    """
    if n_tokens <= 0:
        raise IndexSpecError("the embeddings hold no tokens: nothing to index")
    if factory is not None:
        type = "factory"
    if type == "flat":
        spec = IndexSpec("flat", "Flat", dim, 0, seed)
    elif type == "ivfpq":
        nlist = nlist or default_nlist(n_tokens)
        pq_m = pq_m or default_pq_m(dim)
        pq_nbits = pq_nbits or 8
        if dim % pq_m:
            raise IndexSpecError(f"--pq-m {pq_m} must divide the dimension {dim}")
        if not 1 <= nlist <= n_tokens:
            raise IndexSpecError(f"--nlist {nlist} must be between 1 and the {n_tokens} tokens")
        sample = train_sample or min(MAX_TRAIN, max(TRAIN_PER_CENTROID * nlist, 2**pq_nbits * 39))
        if min(sample, n_tokens) < 2**pq_nbits:
            raise IndexSpecError(
                f"PQ with {pq_nbits}-bit codes trains {2**pq_nbits} centroids per sub-quantizer "
                f"but only {min(sample, n_tokens)} training vectors are available; lower "
                "--pq-nbits or use --type flat"
            )
        spec = IndexSpec(
            "ivfpq",
            f"IVF{nlist},PQ{pq_m}x{pq_nbits}",
            dim,
            min(sample, n_tokens),
            seed,
            nlist=nlist,
            pq_m=pq_m,
            pq_nbits=pq_nbits,
        )
    elif type == "hnsw":
        hnsw_m = hnsw_m or 32
        storage = {"flat": "Flat", "sq8": "SQ8"}.get(hnsw_storage.lower())
        if storage is None:
            raise IndexSpecError(f"hnsw storage must be flat or sq8, got {hnsw_storage!r}")
        sample = 0 if storage == "Flat" else min(train_sample or DEFAULT_OTHER_TRAIN, n_tokens)
        spec = IndexSpec(
            "hnsw",
            f"HNSW{hnsw_m},{storage}",
            dim,
            sample,
            seed,
            hnsw_m=hnsw_m,
            ef_construction=ef_construction or 80,
        )
    elif type == "factory":
        if not factory:
            raise IndexSpecError("--factory needs an index_factory string, e.g. 'IVF1024,SQ8'")
        import faiss

        try:
            probe = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexSpecError(f"FAISS rejects the factory string {factory!r}: {exc}") from exc
        ivf = faiss.try_extract_index_ivf(probe)
        if ivf is not None and not 1 <= ivf.nlist <= n_tokens:
            raise IndexSpecError(
                f"--factory {factory!r}: {ivf.nlist} IVF lists for {n_tokens} tokens "
                f"(k-means needs 1 <= nlist <= n_tokens)"
            )
        sample = 0
        if not probe.is_trained:
            if ivf is not None:
                sample = min(MAX_TRAIN, TRAIN_PER_CENTROID * ivf.nlist)
            else:
                sample = DEFAULT_OTHER_TRAIN
        spec = IndexSpec(
            "factory",
            factory,
            dim,
            min(train_sample or sample, n_tokens),
            seed,
            ef_construction=ef_construction,
        )
    else:
        raise IndexSpecError(f"unknown index type {type!r}: use flat, ivfpq, hnsw or --factory")
    return spec
