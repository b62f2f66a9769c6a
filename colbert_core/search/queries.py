"""The query side, once for every search path: load the query encoder an artifact needs
(and check it is the model that encoded the documents), encode queries with a report of
what was truncated or empty, and turn scored documents into ranked lists.

Exact search, index search, the Ray search actors, rerank and the benchmarks all go
through these functions, so a query is encoded and checked the same way everywhere.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import Query
from ..encoder import ColBERTEncoder, EncoderRecord, load_encoder
from ..errors import ColbertBatchError

logger = logging.getLogger(__name__)

Ranked = list[tuple[str, float]]
"""One query's results: ``(doc_id, score)`` pairs, best first."""


class EncoderMismatchError(ColbertBatchError, ValueError):
    """The query encoder is not the model that encoded the documents."""


def load_query_encoder(
    recorded: EncoderRecord,
    model: str | None = None,
    *,
    device: str | torch.device | None = None,
) -> ColBERTEncoder:
    """The query encoder for documents encoded by ``recorded``; always checked.

    Parameters
    ----------
    recorded
        The encoder an artifact (manifest or index meta) records.
    model
        A checkpoint to load instead of the recorded path (e.g. the same model at another
        location); it must be byte-identical to the recorded one.
    device
        Where to run the encoder (default: CUDA when available).

    Raises
    ------
    EncoderMismatchError
        When the loaded model's fingerprint differs from the recorded one: queries and
        documents would live in different vector spaces and every score would be wrong.
    """
    settings = recorded.settings
    encoder = load_encoder(
        model or recorded.model_path,
        device=device,
        query_maxlen=settings.query_maxlen,
        doc_maxlen=settings.doc_maxlen,
    )
    if encoder.fingerprint != recorded.fingerprint:
        raise EncoderMismatchError(
            f"the query encoder {encoder.path} (fingerprint {encoder.fingerprint}) is not the "
            f"model that encoded the documents ({recorded.fingerprint}, {recorded.model_path}); "
            "pass --model with the original checkpoint"
        )
    return encoder


@dataclass
class EncodedQueries:
    """Queries as token vectors, with what the encoder had to do to them.

    Attributes
    ----------
    query_ids
        In input order.
    vectors
        One ``(n_tokens, dim)`` float32 array per query.
    truncated
        Query id -> tokens lost at ``query_maxlen`` (the query was searched truncated).
    empty
        Ids of queries with empty text.
    seconds
        Encoding time.
    """

    query_ids: list[str]
    vectors: list[np.ndarray]
    truncated: dict[str, int] = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def by_id(self) -> dict[str, np.ndarray]:
        return dict(zip(self.query_ids, self.vectors, strict=True))


def encode_queries(encoder: ColBERTEncoder, queries: Sequence[Query]) -> EncodedQueries:
    """Encode ``queries``; truncation and empty texts are reported, never silent."""
    texts = [q.text for q in queries]
    t0 = time.perf_counter()
    vectors = encoder.encode_queries(texts)
    seconds = time.perf_counter() - t0
    lost = encoder.overflow(texts, is_query=True)
    truncated = {q.query_id: n for q, n in zip(queries, lost, strict=True) if n}
    return EncodedQueries(
        [q.query_id for q in queries], vectors, truncated, empty_queries(queries), seconds
    )


def empty_queries(queries: Sequence[Query]) -> list[str]:
    """Ids of queries whose text is empty (searched anyway, reported)."""
    return [q.query_id for q in queries if not q.text.strip()]


def report_queries(truncated: dict[str, int], empty: list[str]) -> None:
    """Log what :func:`encode_queries` found, once per run (not once per batch)."""
    if empty:
        logger.warning("%d queries have empty text (e.g. %s)", len(empty), empty[:5])
    if truncated:
        logger.warning(
            "%d queries are longer than query_maxlen and were truncated (e.g. %s); "
            "metrics.json lists them with the tokens each lost",
            len(truncated),
            list(truncated)[:5],
        )


def ranked_list(doc_index: np.ndarray, scores: np.ndarray, doc_ids: Sequence[str]) -> Ranked:
    """``(doc_id, score)`` pairs for documents already in rank order; ``-1`` (no document)
    entries are dropped.

    >>> ranked_list(np.array([2, 0, -1]), np.array([0.9, 0.5, -np.inf]), ["a", "b", "c"])
    [('c', 0.9), ('a', 0.5)]
    """
    return [(doc_ids[int(d)], float(s)) for d, s in zip(doc_index, scores, strict=True) if d >= 0]
