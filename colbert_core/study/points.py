"""One grid point of a study: predict its memory, build its index, sweep its search settings.

A *point* here is one (size, index config): the index is built once and every search
setting of that config is measured on it, giving one :class:`~.results.ResultRow` per
setting. Its memory is predicted before it runs (:func:`predict_memory_bytes`) so the
runner can declare it to the scheduler, or skip a point that no node could hold.

Measured per setting: queries/s with all queries in one call (after a two-query
warm-up), p50/p95/p99 with one query at a time, and, when an exact reference exists,
nDCG@10, R@10, R@100 (ir_measures), candidate recall (share of the exact top 10 among the
candidates scored by exact MaxSim) and overlap@10 (share of the exact top 10 in the top
10). Latencies exclude query encoding, which is the same for every index.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..data import Qrel
from ..embeddings import EmbeddingSource
from ..embeddings.manifest import now_iso
from ..evaluation.measures import evaluate, latency_percentiles
from ..evaluation.rundir import scored_docs
from ..index import IndexConfig, IndexSpec, build_index, index_exists, load_index, read_index_meta
from ..index.build import peak_rss_mb
from ..search import SearchParams
from ..search.ann import default_params, search, warm
from ..search.maxsim import CandidateScorer
from ..search.queries import ranked_list
from ..tokenstore.store import StoreSpec
from .config import IndexEntry
from .results import ResultRow, point_key
from .sizes import Reference

logger = logging.getLogger(__name__)

#: What a worker process holds before any data: Python, torch, FAISS, pyarrow.
BASE_BYTES = 600 << 20
QUALITY = ("nDCG@10", "R@10", "R@100")


@dataclass(frozen=True)
class QueryBundle:
    """Encoded queries and their judgments, shared by every point of a study."""

    query_ids: list[str]
    vectors: list[np.ndarray]
    qrels: list[Qrel]


@dataclass(frozen=True)
class PointSpec:
    """Everything a point task needs besides its corpus, queries and reference."""

    study: str
    size_docs: int
    n_tokens: int
    dim: int
    synthetic: bool
    entry: IndexEntry
    index: IndexConfig  # resolved for this size (factory placeholders filled)
    index_dir: str
    k: int
    latency_queries: int | None
    keep_index: bool
    predicted_bytes: int
    source_sha256: str
    queries_sha256: str

    @property
    def spec(self) -> IndexSpec:
        return self.index.resolve(n_tokens=self.n_tokens, dim=self.dim)

    def setting_params(self, setting: SearchParams) -> SearchParams:
        return dataclasses.replace(setting, k=self.k)

    def key(self, setting: SearchParams) -> str:
        """The point key of one setting (what resuming compares)."""
        return point_key(
            {
                "size_docs": self.size_docs,
                "synthetic": self.synthetic,
                "source": self.source_sha256,
                "index": self.index.to_dict(),
                "setting": setting_key(self.setting_params(setting)),
                "queries": self.queries_sha256,
                "latency_queries": self.latency_queries,
            }
        )


# -- memory prediction ---------------------------------------------------------------------

_IVF = re.compile(r"IVF(\d+)(?:_HNSW(\d+))?")
_PQ = re.compile(r"PQ(\d+)(?:x(\d+))?")
_HNSW = re.compile(r"^HNSW(\d+)")


def index_bytes_per_token(spec: IndexSpec) -> float:
    """Predicted bytes per token of the FAISS index in memory (codes, ids, graph links).

    >>> from colbert_core.index import IndexConfig
    >>> spec = lambda **kw: IndexConfig(**kw).resolve(n_tokens=1_000_000, dim=128)
    >>> index_bytes_per_token(spec(type="flat")), index_bytes_per_token(spec(type="ivfpq"))
    (512.0, 16.0)
    >>> index_bytes_per_token(spec(type="hnsw"))
    800.0
    """
    factory, d = spec.factory.upper(), spec.dim
    pq = _PQ.search(factory)
    if pq:
        codes = int(pq.group(1)) * int(pq.group(2) or 8) / 8
    elif "SQ4" in factory:
        codes = d / 2
    elif "SQ8" in factory:
        codes = float(d)
    elif "SQFP16" in factory or "SQ16" in factory:
        codes = 2.0 * d
    else:
        codes = 4.0 * d
    ids = 8.0 if _IVF.search(factory) else 0.0
    hnsw = _HNSW.search(factory)
    # Level 0 holds 2M neighbour ids of 4 bytes; upper levels add ~1/M of that.
    links = 2 * int(hnsw.group(1)) * 4 * 1.125 if hnsw else 0.0
    return codes + ids + links


def fixed_index_bytes(spec: IndexSpec) -> int:
    """Bytes that do not grow with the tokens: IVF centroids (and their HNSW graph)."""
    ivf = _IVF.search(spec.factory.upper())
    if not ivf:
        return 0
    nlist = int(ivf.group(1))
    graph = nlist * 2 * int(ivf.group(2)) * 4 if ivf.group(2) else 0
    return nlist * spec.dim * 4 + graph


def store_bytes_per_token(store: str, dim: int) -> float:
    """Bytes per token of the token store (float16: ``2 dim``; residual: ``dim b / 8 + 4``;
    pq: ``M + 4``)."""
    return StoreSpec.parse(store).bytes_per_token(dim)


def predict_memory_bytes(index: IndexConfig, n_tokens: int, dim: int, shard_tokens: int) -> int:
    """Peak memory of a point: index + token store + training sample + one shard + base.

    The token store is memory-mapped; it is counted whole because an exact stage that
    visits every document (Flat, large candidate sets) makes it resident.
    """
    spec = index.resolve(n_tokens=n_tokens, dim=dim)
    per_token = index_bytes_per_token(spec) + store_bytes_per_token(index.store, dim)
    # k-means holds the float32 sample and its assignment copies (~2x the sample).
    train = 2 * spec.train_sample * dim * 4
    # A shard is read as float16 and decoded next to its file bytes (~2x).
    shard = 2 * shard_tokens * dim * 2
    return int(per_token * n_tokens + fixed_index_bytes(spec) + train + shard + BASE_BYTES)


# -- running a point -----------------------------------------------------------------------


def run_point(
    source: EmbeddingSource,
    point: PointSpec,
    queries: QueryBundle,
    reference: Reference | None,
    progress: Callable[[str, int], None] | None = None,
) -> list[ResultRow]:
    """Build (or reuse) the point's index, measure every setting; one row per setting.

    ``progress(stage, n)`` hears the build's stages (``build_index``'s ``train``, ``add``
    with the tokens added, ``compress``) and ``("search <setting>", 0)`` per setting.
    """
    say = progress or (lambda _stage, _n: None)
    t0 = time.perf_counter()
    out = Path(point.index_dir)
    build = point.index.to_dict()
    if index_exists(out) and read_index_meta(out).is_complete_for(build, source.manifest_sha256):
        # Left by a killed run: its recorded stage times stand for the build.
        logger.info("reusing the index in %s", out)
        meta = read_index_meta(out)
        build_s = meta.train_s + meta.add_s + float(meta.store.get("encode_s", 0.0))
    else:
        build_index(
            source,
            str(out),
            point.spec,
            progress=say,
            build=build,
            token_store=point.index.store_spec,
        )
        build_s = time.perf_counter() - t0
    loaded = load_index(out)
    scorer = CandidateScorer()
    rows = []
    for setting in point.entry.settings:
        say(f"search {setting_label(point.setting_params(setting))}", 0)
        params = default_params(loaded.meta, point.setting_params(setting))
        measured = _measure(loaded, params, queries, point.latency_queries, scorer)
        quality = _quality(loaded, measured.pop("results"), queries, reference)
        rows.append(_row(point, setting, params, loaded.meta, build_s, measured | quality))
    del loaded
    if not point.keep_index:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def _measure(
    loaded: Any,
    params: SearchParams,
    queries: QueryBundle,
    latency_queries: int | None,
    scorer: CandidateScorer,
) -> dict[str, Any]:
    vectors = queries.vectors
    warm(loaded, params)
    search(loaded, vectors[:2], params, scorer)  # warm-up: first-touch of pages, buffers
    t0 = time.perf_counter()
    results = search(loaded, vectors, params, scorer)
    qps = len(vectors) / max(time.perf_counter() - t0, 1e-9)
    n_lat = len(vectors) if latency_queries is None else min(latency_queries, len(vectors))
    latency = []
    for q in vectors[:n_lat]:
        t1 = time.perf_counter()
        search(loaded, [q], params, scorer)
        latency.append((time.perf_counter() - t1) * 1000)
    pct = latency_percentiles(latency)
    return {
        "results": results,
        "qps": round(qps, 2),
        "p50_ms": pct["p50"],
        "p95_ms": pct["p95"],
        "p99_ms": pct["p99"],
        "queries": len(vectors),
        "latency_queries": n_lat,
    }


def _quality(
    loaded: Any, results: Sequence[Any], queries: QueryBundle, reference: Reference | None
) -> dict[str, Any]:
    if reference is None:
        return {}
    ranked = {
        qid: ranked_list(r.doc_index, r.scores, loaded.doc_ids)
        for qid, r in zip(queries.query_ids, results, strict=True)
    }
    ev = evaluate(scored_docs(ranked), queries.qrels, list(QUALITY))
    exact_ev = evaluate(scored_docs(reference.ranked), queries.qrels, ["nDCG@10"])
    cand_recall, overlap = [], []
    for qid, r in zip(queries.query_ids, results, strict=True):
        exact_top = set(reference.top(qid, 10))
        if not exact_top:
            continue
        cands = {loaded.doc_ids[int(d)] for d in r.candidates}
        top = {d for d, _ in ranked[qid][:10]}
        cand_recall.append(len(exact_top & cands) / len(exact_top))
        overlap.append(len(exact_top & top) / len(exact_top))
    return {
        "ndcg10": round(ev.measures["nDCG@10"], 4),
        "r10": round(ev.measures["R@10"], 4),
        "r100": round(ev.measures["R@100"], 4),
        "exact_ndcg10": round(exact_ev.measures["nDCG@10"], 4),
        "candidate_recall": round(float(np.mean(cand_recall)), 4) if cand_recall else None,
        "overlap10": round(float(np.mean(overlap)), 4) if overlap else None,
    }


def setting_key(params: SearchParams) -> dict[str, Any]:
    """A setting as its point key hashes it: ``full_scores`` only when set, so points
    measured before that setting existed keep their keys (and are not re-measured).

    >>> "full_scores" in setting_key(SearchParams()), setting_key(SearchParams(full_scores=64))["full_scores"]
    (False, 64)
    """
    key = dataclasses.asdict(params)
    if key["full_scores"] is None:
        del key["full_scores"]
    return key


def setting_label(params: SearchParams) -> str:
    """A short label of a search setting, e.g. ``k'=64 cand=256 nprobe=8``.

    >>> setting_label(SearchParams(k_prime=32, max_candidates=128, ef_search=64))
    "k'=32 cand=128 ef=64"
    """
    label = f"k'={params.k_prime} cand={params.max_candidates}"
    if params.nprobe is not None:
        label += f" nprobe={params.nprobe}"
    if params.ef_search is not None:
        label += f" ef={params.ef_search}"
    if params.full_scores is not None:
        label += f" full={params.full_scores}"
    return label


def versions() -> dict[str, str]:
    """Software versions recorded in every row."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        ours = version("colbert-batch")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ours = "unknown"
    return {
        "colbert_batch": ours,
        "faiss": faiss.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _row(
    point: PointSpec,
    setting: SearchParams,
    params: SearchParams,
    meta: Any,
    build_s: float,
    measured: dict[str, Any],
) -> ResultRow:
    bpt = meta.bytes_per_token
    return ResultRow(
        **base_row(point, setting, params),
        status="ok",
        reason=None,
        train_s=meta.train_s,
        add_s=meta.add_s,
        build_s=round(build_s, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
        index_bytes_per_token=bpt.get("index"),
        store_bytes_per_token=bpt.get("token_store"),
        total_bytes_per_token=bpt.get("total"),
        **measured,
    )


def base_row(point: PointSpec, setting: SearchParams, params: SearchParams) -> dict[str, Any]:
    """The columns every row of ``point`` has, whatever its status."""
    return {
        "point_key": point.key(setting),
        "study": point.study,
        "size_docs": point.size_docs,
        "n_tokens": point.n_tokens,
        "synthetic": point.synthetic,
        "index_name": point.entry.name,
        "index_type": point.spec.type,
        "factory": point.spec.factory,
        "setting": setting_label(params),
        "k": params.k,
        "k_prime": params.k_prime,
        "max_candidates": params.max_candidates,
        "nprobe": params.nprobe,
        "ef_search": params.ef_search,
        "store": point.index.store,
        "predicted_memory_gb": round(point.predicted_bytes / 2**30, 3),
        "config": json.dumps(
            {
                "index": point.index.to_dict(),
                "spec": point.spec.to_dict(),
                "search": dataclasses.asdict(params),
            },
            sort_keys=True,
        ),
        "versions": json.dumps(versions(), sort_keys=True),
        "created": now_iso(),
    }


def not_run_row(point: PointSpec, setting: SearchParams, status: str, reason: str) -> ResultRow:
    """A ``skipped`` or ``failed`` row: the point's identity and why it has no numbers."""
    params = point.setting_params(setting)
    return ResultRow(**base_row(point, setting, params), status=status, reason=reason)


def gib(n: float) -> str:
    """``n`` bytes in GiB for messages.

    >>> gib(3 * 2**30)
    '3.0 GiB'
    """
    return f"{n / 2**30:.1f} GiB" if math.isfinite(n) else "?"
