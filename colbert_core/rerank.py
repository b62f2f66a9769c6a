"""Exact MaxSim reranking of a given run (e.g. BM25 top-100), without any ANN search.

Candidates come from the run; their token vectors from an index's float16 token store or
straight from the encode shards. Scoring runs on the GPU when one is present.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .index.loader import LoadedIndex
from .maxsim import CandidateScorer
from .store import EmbeddingStore

logger = logging.getLogger(__name__)


def rerank_index(
    loaded: LoadedIndex,
    query_vectors: Mapping[str, np.ndarray],
    run: Mapping[str, Sequence[str]],
    *,
    device: torch.device | None = None,
) -> tuple[dict[str, list[tuple[str, float]]], list[str]]:
    """Rerank ``run`` (query id -> candidate doc ids) with the index's token store.

    Returns the reranked lists and the candidate ids absent from the index.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer = CandidateScorer(device=device)
    position = {d: i for i, d in enumerate(loaded.doc_ids)}
    unknown: set[str] = set()
    out: dict[str, list[tuple[str, float]]] = {}
    for qid, docs in run.items():
        if qid not in query_vectors:
            continue
        cand = np.array(sorted({position[d] for d in docs if d in position}), dtype=np.int64)
        unknown.update(d for d in docs if d not in position)
        scores = scorer.score(query_vectors[qid], loaded.tokens, loaded.doc_offsets, cand)
        order = np.lexsort((cand, -scores))
        out[qid] = [(loaded.doc_ids[cand[j]], float(scores[j])) for j in order]
    return out, sorted(unknown)


def rerank_store(
    store: EmbeddingStore,
    query_vectors: Mapping[str, np.ndarray],
    run: Mapping[str, Sequence[str]],
    *,
    device: torch.device | None = None,
) -> tuple[dict[str, list[tuple[str, float]]], list[str]]:
    """Rerank ``run`` reading the encode shards once, one shard at a time."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer = CandidateScorer(device=device)
    wanted: dict[str, set[str]] = {q: set(d) for q, d in run.items() if q in query_vectors}
    needed = set().union(*wanted.values()) if wanted else set()
    found: set[str] = set()
    scored: dict[str, list[tuple[int, str, float]]] = {q: [] for q in wanted}
    for shard in store:
        local = {d: i for i, d in enumerate(shard.doc_ids) if d in needed}
        if not local:
            continue
        found.update(local)
        for qid, docs in wanted.items():
            idx = np.array(sorted(local[d] for d in docs if d in local), dtype=np.int64)
            if idx.size == 0:
                continue
            scores = scorer.score(query_vectors[qid], shard.tokens, shard.offsets, idx)
            scored[qid] += [
                (int(shard.doc_index[i]), shard.doc_ids[i], float(s))
                for i, s in zip(idx, scores, strict=True)
            ]
    out = {
        q: [(d, s) for _, d, s in sorted(v, key=lambda x: (-x[2], x[0]))] for q, v in scored.items()
    }
    return out, sorted(needed - found)
