"""Search a FAISS token index: candidate generation, then exact MaxSim over candidates.

Per query:

1. one FAISS search for all its token vectors (batched across queries): top ``k_prime``
   tokens per query token;
2. token ids -> documents through the offsets (one ``searchsorted``);
3. candidate rule: each candidate document gets an *approximate* score, the sum over query
   tokens of the best similarity FAISS returned for that document (0 where a query token
   retrieved none of its tokens), and the ``max_candidates`` best are kept (ties: lower
   document index). This is the late-interaction analogue of PLAID's candidate generation;
4. with a residual store and ``full_scores`` set, PLAID's centroid interaction: the
   candidates ranked by MaxSim over their tokens' centroids, and the best
   ``max(k, full_scores)`` kept;
5. exact MaxSim over the (kept) candidates from the token store; top ``k`` by score.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from ..config import check_positive
from ..index import IndexMeta, LoadedIndex
from ..tokenstore import token_to_doc
from ..tokenstore.residual import ResidualStore
from .maxsim import CandidateScorer, rank_candidates

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchParams:
    """Search settings; the defaults are the measured trade-off in bench/RESULTS.md.

    ``nprobe``/``ef_search`` left as ``None`` are filled per index by
    :func:`default_params`.
    """

    k: int = 100
    k_prime: int = 64
    max_candidates: int = 256
    nprobe: int | None = None
    ef_search: int | None = None
    #: Residual stores: candidates scored exactly after PLAID's centroid interaction
    #: (at least ``k``, so every returned document has its exact score); ``None``: all.
    full_scores: int | None = None

    def __post_init__(self) -> None:
        check_positive(self, "k", "k_prime", "max_candidates", "nprobe", "ef_search", "full_scores")

    @property
    def exact_count(self) -> int | None:
        """How many candidates the exact stage scores at most (``None``: all).

        >>> SearchParams(k=10, full_scores=64).exact_count, SearchParams(full_scores=64).exact_count
        (64, 100)
        """
        return None if self.full_scores is None else max(self.k, self.full_scores)


@dataclass
class QueryResult:
    doc_index: np.ndarray  # (<= k,) int64, best first
    scores: np.ndarray  # (<= k,) float32
    candidates: np.ndarray  # (<= max_candidates,) int64 candidate documents
    timings: dict[str, float] = field(default_factory=dict)


def configure(index: faiss.Index, params: SearchParams) -> None:
    """Apply nprobe / efSearch to the index where they mean something: ``efSearch`` to
    every HNSW graph in it (the index itself, behind a pre-transform, or an IVF's coarse
    quantizer, as in ``IVF4096_HNSW32,PQ24x8``)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and params.nprobe is not None:
        ivf.nprobe = params.nprobe
    if params.ef_search is not None:
        for graph in hnsw_graphs(index):
            graph.hnsw.efSearch = params.ef_search


def hnsw_graphs(index: faiss.Index) -> list[faiss.IndexHNSW]:
    """The HNSW indexes inside ``index`` whose ``efSearch`` governs a search."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return hnsw_graphs(index.index)
    if isinstance(index, faiss.IndexHNSW):
        return [index]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        quantizer = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            return [quantizer]
    return []


def default_params(meta: IndexMeta, params: SearchParams) -> SearchParams:
    """Fill unset nprobe / efSearch from the index type (documented defaults), drop the
    settings this index cannot use, and log both kinds of problem (:func:`param_problems`),
    so that what a run records is what was applied.

    IVF: ``nprobe = nlist / 512`` (at least 1): with ~40-300 tokens per list, the ``k'``
    nearest tokens of a query token sit in its few nearest lists, and the exact MaxSim
    stage absorbs the rest (on SciFact and MIRACL-de nDCG@10 is flat from nprobe 1 to
    64 while the FAISS time grows 4x). HNSW: ``efSearch = max(64, 2 k')``.

    >>> default_nprobe(4096), default_ef_search(SearchParams(k_prime=64))
    (8, 128)
    """
    for problem in param_problems(meta, params):
        logger.warning("%s", problem)
    return resolved_params(meta, params)


def param_problems(meta: IndexMeta, params: SearchParams) -> list[str]:
    """Settings that do not do what they say on this index, each with what happens."""
    problems = []
    if params.nprobe is not None and not meta.nlist:
        problems.append(
            f"nprobe={params.nprobe} is ignored: the {meta.factory or meta.type} index has "
            "no IVF lists"
        )
    if params.ef_search is not None and not _has_hnsw(meta):
        problems.append(
            f"ef_search={params.ef_search} is ignored: the {meta.factory or meta.type} index "
            "has no HNSW graph"
        )
    if params.full_scores is not None and _store_kind(meta) == "float16":
        problems.append(
            f"full_scores={params.full_scores} is ignored: the index's token store is "
            "float16, and the centroid interaction needs a residual or pq store "
            "(--store at index time); every candidate is scored exactly"
        )
    if params.k > params.max_candidates:
        problems.append(
            f"k={params.k} is more than max_candidates={params.max_candidates}: at most "
            f"{params.max_candidates} documents per query come back; raise max_candidates "
            f"to at least {params.k} for a full top {params.k}"
        )
    return problems


def resolved_params(meta: IndexMeta, params: SearchParams) -> SearchParams:
    """:func:`default_params` without the logging: defaults filled, inapplicable
    settings dropped, and ``k_prime`` capped at the index's token count (more hits than
    tokens are only FAISS's -1 padding, 12 bytes each per query token: a k_prime of
    100,000 over 20,000 tokens would allocate them)."""
    params = dataclasses.replace(params, k_prime=min(params.k_prime, max(1, meta.n_tokens)))
    nprobe, ef, full = params.nprobe, params.ef_search, params.full_scores
    if not meta.nlist:
        nprobe = None
    elif nprobe is None:
        nprobe = default_nprobe(meta.nlist)
    if not _has_hnsw(meta):
        ef = None
    elif ef is None and meta.type == "hnsw":
        ef = default_ef_search(params)
    if _store_kind(meta) == "float16":
        full = None
    return dataclasses.replace(params, nprobe=nprobe, ef_search=ef, full_scores=full)


def _has_hnsw(meta: IndexMeta) -> bool:
    return meta.type == "hnsw" or "HNSW" in (meta.factory or "").upper()


def _store_kind(meta: IndexMeta) -> str:
    return str(meta.store.get("kind", "float16"))


def default_nprobe(nlist: int) -> int:
    return max(1, nlist // 512)


def default_ef_search(params: SearchParams) -> int:
    return max(64, params.k_prime * 2)


def warm(loaded: LoadedIndex, params: SearchParams) -> None:
    """Build now what the first :func:`search` with ``params`` would otherwise build on
    the clock: with ``full_scores``, each document's distinct centroids
    (:meth:`.ResidualStore.document_centroids`, ~2 s per 10M tokens).

    Everything that times queries calls this once after loading (the Ray search actors,
    nightly, study points, the benchmarks): a warm-up search collects them only when it
    happens to have more candidates than ``full_scores``.
    """
    store, p = loaded.store, resolved_params(loaded.meta, params)
    # The centroid interaction only runs when more candidates than it keeps can arrive.
    pruning = p.exact_count is not None and p.exact_count < p.max_candidates
    if pruning and isinstance(store, ResidualStore):
        store.document_centroids(loaded.doc_offsets)


def search(
    loaded: LoadedIndex,
    queries: Sequence[np.ndarray],
    params: SearchParams,
    scorer: CandidateScorer | None = None,
) -> list[QueryResult]:
    """Search ``queries`` (each ``(n_tokens, dim)``) against ``loaded``.

    ``scorer`` carries reusable buffers for the exact stage; pass one to share it across
    calls.
    """
    scorer = scorer or CandidateScorer()
    # Callers resolve (and report) once; this makes a direct call as deterministic,
    # instead of searching with whatever nprobe the FAISS object last had.
    params = resolved_params(loaded.meta, params)
    configure(loaded.index, params)
    lengths = [q.shape[0] for q in queries]
    if not queries:
        return []
    flat = np.ascontiguousarray(np.concatenate(queries), dtype=np.float32)
    t0 = time.perf_counter()
    sims, token_ids = loaded.index.search(flat, params.k_prime)
    ann_s = time.perf_counter() - t0
    docs = token_to_doc(loaded.doc_offsets, token_ids)
    results: list[QueryResult] = []
    row = 0
    per_query_ann = ann_s / max(1, len(queries))
    tables = scorer.tables(loaded.store, queries)
    for q, n in zip(queries, lengths, strict=True):
        t1 = time.perf_counter()
        cand = candidates(docs[row : row + n], sims[row : row + n], params.max_candidates)
        row += n
        scored, scores = scorer.score_best(
            q, loaded.store, loaded.doc_offsets, cand, params.exact_count, next(tables)
        )
        order = rank_candidates(scored, scores, params.k)
        results.append(
            QueryResult(
                doc_index=scored[order],
                scores=scores[order],
                candidates=cand,
                timings={"ann_s": per_query_ann, "maxsim_s": time.perf_counter() - t1},
            )
        )
    return results


def candidates(docs: np.ndarray, sims: np.ndarray, max_candidates: int) -> np.ndarray:
    """Candidate documents of one query from its ``(n_tokens, k_prime)`` FAISS hits.

    >>> candidates(np.array([[3, 3, 5], [5, -1, -1]]), np.array([[.9, .8, .5], [.7, 0, 0]]), 1)
    array([5])
    """
    valid = docs >= 0
    q_rows = np.broadcast_to(np.arange(docs.shape[0])[:, None], docs.shape)[valid]
    d = docs[valid]
    s = sims[valid].astype(np.float64)
    if d.size == 0:
        return np.zeros(0, dtype=np.int64)
    # Best similarity per (query token, document), then summed over query tokens.
    key = q_rows.astype(np.int64) * (int(d.max()) + 1) + d
    order = np.lexsort((-s, key))
    first = np.ones(order.size, dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    best_docs, best_s = d[order][first], s[order][first]
    uniq, inv = np.unique(best_docs, return_inverse=True)
    approx = np.zeros(uniq.size)
    np.add.at(approx, inv, best_s)
    keep = rank_candidates(uniq, approx, max_candidates)
    return np.sort(uniq[keep]).astype(np.int64)
