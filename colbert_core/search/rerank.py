"""Exact MaxSim reranking of a given run (e.g. BM25 top-100), without any ANN search.

Candidates come from the run; their token vectors from an index's float16 token store or
straight from the encode shards. Scoring runs on the GPU when one is present.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..embeddings import Embeddings
from ..index import LoadedIndex
from .maxsim import CandidateScorer, rank_candidates
from .queries import Ranked, ranked_list

logger = logging.getLogger(__name__)


def rerank_index(
    loaded: LoadedIndex,
    query_vectors: Mapping[str, np.ndarray],
    run: Mapping[str, Sequence[str]],
    *,
    device: torch.device | None = None,
) -> tuple[dict[str, Ranked], list[str]]:
    """Rerank ``run`` (query id -> candidate doc ids) with the index's token store.

    Returns the reranked lists and the candidate ids absent from the index.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer = CandidateScorer(device=device)
    position = {d: i for i, d in enumerate(loaded.doc_ids)}
    unknown: set[str] = set()
    out: dict[str, Ranked] = {}
    for qid, docs in run.items():
        if qid not in query_vectors:
            continue
        cand = np.array(sorted({position[d] for d in docs if d in position}), dtype=np.int64)
        unknown.update(d for d in docs if d not in position)
        scores = scorer.score(query_vectors[qid], loaded.store, loaded.doc_offsets, cand)
        order = rank_candidates(cand, scores)
        out[qid] = ranked_list(cand[order], scores[order], loaded.doc_ids)
    return out, sorted(unknown)


def rerank_store(
    store: Embeddings,
    query_vectors: Mapping[str, np.ndarray],
    run: Mapping[str, Sequence[str]],
    *,
    device: torch.device | None = None,
) -> tuple[dict[str, Ranked], list[str]]:
    """Rerank ``run`` reading the encode shards once, one shard at a time."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scorer = CandidateScorer(device=device)
    wanted: dict[str, set[str]] = {q: set(d) for q, d in run.items() if q in query_vectors}
    needed = set().union(*wanted.values()) if wanted else set()
    found: set[str] = set()
    # Per query: global document index, id and score of every candidate found so far.
    scored: dict[str, tuple[list[int], list[str], list[float]]] = {q: ([], [], []) for q in wanted}
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
            positions, ids, values = scored[qid]
            positions += shard.doc_index[idx].tolist()
            ids += [shard.doc_ids[i] for i in idx]
            values += scores.tolist()
    out: dict[str, Ranked] = {}
    for qid, (positions, ids, values) in scored.items():
        score_arr = np.asarray(values, dtype=np.float32)
        order = rank_candidates(np.asarray(positions, dtype=np.int64), score_arr)
        out[qid] = ranked_list(order, score_arr[order], ids)
    return out, sorted(needed - found)
