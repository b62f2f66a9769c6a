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

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from ..config import check_positive
from ..index import IndexMeta, LoadedIndex
from ..tokenstore import token_to_doc
from .maxsim import CandidateScorer, rank_candidates


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
    """Apply nprobe / efSearch to the index where they mean something."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and params.nprobe is not None:
        ivf.nprobe = params.nprobe
    if params.ef_search is not None:
        with contextlib.suppress(AttributeError):
            faiss.downcast_index(index).hnsw.efSearch = params.ef_search


def default_params(meta: IndexMeta, params: SearchParams) -> SearchParams:
    """Fill unset nprobe / efSearch from the index type (documented defaults).

    IVF: ``nprobe = nlist / 512`` (at least 1): with ~40-300 tokens per list, the ``k'``
    nearest tokens of a query token sit in its few nearest lists, and the exact MaxSim
    stage absorbs the rest (on SciFact and MIRACL-de nDCG@10 is flat from nprobe 1 to
    64 while the FAISS time grows 4x). HNSW: ``efSearch = max(64, 2 k')``.

    >>> default_nprobe(4096), default_ef_search(SearchParams(k_prime=64))
    (8, 128)
    """
    nprobe, ef = params.nprobe, params.ef_search
    if nprobe is None and meta.nlist:
        nprobe = default_nprobe(meta.nlist)
    if ef is None and meta.type == "hnsw":
        ef = default_ef_search(params)
    return dataclasses.replace(params, nprobe=nprobe, ef_search=ef)


def default_nprobe(nlist: int) -> int:
    return max(1, nlist // 512)


def default_ef_search(params: SearchParams) -> int:
    return max(64, params.k_prime * 2)


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
