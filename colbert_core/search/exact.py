"""Exhaustive MaxSim search over an encode output, in memory-bounded blocks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..embeddings import EmbeddingSource, ShardData
from ..errors import ConfigError
from .maxsim import consecutive_groups, maxsim_flat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """Top-k per query.

    Attributes
    ----------
    doc_index
        ``(n_q, k)`` int64 global document positions, best first (-1 where fewer than k
        documents exist).
    scores
        ``(n_q, k)`` float32 MaxSim scores.
    doc_ids
        Every document's external id, indexed by global position.
    """

    doc_index: np.ndarray
    scores: np.ndarray
    doc_ids: list[str]


def topk_merge(
    scores_a: np.ndarray, index_a: np.ndarray, scores_b: np.ndarray, index_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge two candidate lists per row into the top ``k``.

    Ties are broken by the smaller document index, so the result does not depend on the
    block order or size.

    >>> s, i = topk_merge(np.array([[1.0, 0.5]]), np.array([[7, 3]]),
    ...                   np.array([[0.5, 2.0]]), np.array([[1, 9]]), 3)
    >>> i.tolist(), s.tolist()
    ([[9, 7, 1]], [[2.0, 1.0, 0.5]])
    """
    scores = np.concatenate([scores_a, scores_b], axis=1)
    index = np.concatenate([index_a, index_b], axis=1)
    # Sort by document index first, then stably by descending score: equal scores keep
    # ascending document order. Padding (-1) carries -inf and sorts last.
    by_doc = np.argsort(np.where(index < 0, np.iinfo(np.int64).max, index), axis=1, kind="stable")
    scores = np.take_along_axis(scores, by_doc, 1)
    index = np.take_along_axis(index, by_doc, 1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(index, order, 1)


def exact_search(
    store: EmbeddingSource,
    queries: Sequence[np.ndarray],
    *,
    k: int = 100,
    memory_budget_bytes: int = 512 << 20,
    progress: Callable[[int], None] | None = None,
) -> SearchResult:
    """Score every document for every query by exact MaxSim; keep the top ``k``.

    Parameters
    ----------
    store
        The encode output to search.
    queries
        One ``(n_tokens, dim)`` array per query.
    k
        Results per query.
    memory_budget_bytes
        Upper bound for the similarity block (query tokens x document tokens, float32);
        the document side is cut into blocks that fit it.
    progress
        Called with the number of documents scored after each block.
    """
    return exact_search_prefixes(
        store,
        queries,
        [store.n_docs],
        k=k,
        memory_budget_bytes=memory_budget_bytes,
        progress=progress,
    )[0]


def exact_search_prefixes(
    store: EmbeddingSource,
    queries: Sequence[np.ndarray],
    stops: Sequence[int],
    *,
    k: int = 100,
    memory_budget_bytes: int = 512 << 20,
    progress: Callable[[int], None] | None = None,
) -> list[SearchResult]:
    """:func:`exact_search` over the first ``stops[i]`` documents, for every ``i``, in one pass.

    A corpus grown by prefixes (a scaling study) needs the exact top ``k`` at each size;
    the top ``k`` of a prefix is the running merge up to its last document, so one pass
    over the largest corpus gives them all (each document is scored once).

    Returns one :class:`SearchResult` per stop, in the order given; its ``doc_ids`` are the
    prefix's.
    """
    if k <= 0:
        raise ConfigError(f"k must be positive, got {k}")
    if any(s <= 0 or s > store.n_docs for s in stops):
        raise ConfigError(f"every stop must be in [1, {store.n_docs}] documents, got {stops}")
    n_q = len(queries)
    for i, q in enumerate(queries):
        if q.ndim != 2 or q.shape[1] != store.dim:
            raise ValueError(f"query {i} has shape {q.shape}; expected (n_tokens, {store.dim})")
    q_lengths = torch.tensor([q.shape[0] for q in queries], dtype=torch.long)
    q_tokens = torch.from_numpy(np.concatenate(queries).astype(np.float32))
    # Query groups keep the (query tokens x block tokens) matrix within budget even for
    # very large query sets; each group holds whole queries.
    group_rows = max(1, memory_budget_bytes // (4 * 2 * 8192))
    groups = consecutive_groups(q_lengths.tolist(), group_rows)
    # Always k columns: where fewer than k documents exist the tail stays (-inf, -1), so
    # the result's shape does not depend on the corpus size or the memory budget.
    best_s = np.full((n_q, k), -np.inf, dtype=np.float32)
    best_i = np.full((n_q, k), -1, dtype=np.int64)
    doc_ids: list[str] = []
    wanted = sorted(set(stops))
    snapshots: dict[int, SearchResult] = {}
    seen = 0
    for info in store.shards:
        if seen >= wanted[-1]:
            break
        shard = store.read(info)
        shard_scores = np.concatenate(
            [_group_scores(shard, q_tokens, q_lengths, g, memory_budget_bytes) for g in groups]
        )
        # Merge the shard in segments cut at the stops that fall inside it.
        cuts = [s - seen for s in wanted if seen < s < seen + shard.n_docs]
        lo = 0
        for hi in [*cuts, shard.n_docs]:
            idx = np.broadcast_to(shard.doc_index[lo:hi], (n_q, hi - lo))
            best_s, best_i = topk_merge(best_s, best_i, shard_scores[:, lo:hi], idx, k)
            doc_ids.extend(shard.doc_ids[lo:hi])
            if seen + hi in wanted:
                snapshots[seen + hi] = SearchResult(best_i.copy(), best_s.copy(), list(doc_ids))
            lo = hi
        seen += shard.n_docs
        if progress is not None:
            progress(shard.n_docs)
    return [snapshots[s] for s in stops]


def _group_scores(
    shard: ShardData,
    q_tokens: torch.Tensor,
    q_lengths: torch.Tensor,
    group: tuple[int, int],
    memory_budget_bytes: int,
) -> np.ndarray:
    """``(queries in group, shard docs)`` exact MaxSim, in blocks within the budget."""
    g_start, g_end = group
    tokens = torch.from_numpy(shard.tokens)
    offsets = shard.offsets
    rows = int(q_lengths[g_start:g_end].sum())
    # Per block token: its float32 copy (dim values) and its similarities with the
    # group's query tokens (rows values, twice while the maxima are taken).
    block_tokens = max(1, memory_budget_bytes // (4 * (2 * max(rows, 1) + shard.tokens.shape[1])))
    g_tokens = q_tokens[int(q_lengths[:g_start].sum()) : int(q_lengths[:g_end].sum())]
    g_scores: list[np.ndarray] = []
    t0, t_end = 0, shard.n_docs
    while t0 < t_end:
        # Largest run of whole documents whose tokens fit the block budget.
        t1 = int(np.searchsorted(offsets, offsets[t0] + block_tokens, side="right")) - 1
        t1 = min(max(t1, t0 + 1), t_end)
        lo, hi = int(offsets[t0]), int(offsets[t1])
        block = maxsim_flat(
            g_tokens,
            q_lengths[g_start:g_end],
            tokens[lo:hi].float(),
            torch.from_numpy(offsets[t0 : t1 + 1] - lo),
        )
        g_scores.append(block.numpy())
        t0 = t1
    if not g_scores:
        return np.zeros((g_end - g_start, 0), dtype=np.float32)
    return np.concatenate(g_scores, axis=1)
