"""Ray search actors: each loads the index, token store and query encoder once, then
answers batches of queries; the driver merges the batches."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from colbert_core.ann_search import SearchParams

from .actor_pool import run_items

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryBatch:
    batch_id: int
    query_ids: tuple[str, ...]
    texts: tuple[str, ...]


class SearchWorker:
    def __init__(
        self, index: str, model: str | None, params: SearchParams, torch_threads: int | None
    ):
        import torch

        from colbert_core import load_encoder
        from colbert_core.ann_search import default_params
        from colbert_core.encoder import EncoderSettings
        from colbert_core.index import load_index
        from colbert_core.maxsim import CandidateScorer

        from ._console import quiet_third_party

        quiet_third_party()
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.loaded = load_index(index)
        recorded = self.loaded.meta["encoder"]
        settings = EncoderSettings.from_dict(recorded["settings"])
        self.encoder = load_encoder(
            model or recorded["model_path"],
            query_maxlen=settings.query_maxlen,
            doc_maxlen=settings.doc_maxlen,
        )
        self.params = default_params(self.loaded.meta, params)
        self.scorer = CandidateScorer()  # buffers reused by every batch of this actor

    def describe(self) -> dict[str, Any]:
        return {
            "fingerprint": self.encoder.fingerprint,
            "pid": os.getpid(),
            "params": self.params.__dict__,
            "encoder": self.encoder.describe(),
        }

    def search(self, batch: QueryBatch) -> list[dict[str, Any]]:
        import time

        from colbert_core.ann_search import search

        t0 = time.perf_counter()
        vecs = self.encoder.encode_queries(list(batch.texts))
        enc_each = (time.perf_counter() - t0) / max(1, len(batch.texts))
        overflow = self.encoder.overflow(list(batch.texts), is_query=True)
        out = []
        ids = self.loaded.doc_ids
        results = search(self.loaded, vecs, self.params, self.scorer)
        for qid, r, lost in zip(batch.query_ids, results, overflow, strict=True):
            out.append(
                {
                    "query_id": qid,
                    "ranked": [
                        (ids[d], float(s)) for d, s in zip(r.doc_index, r.scores, strict=True)
                    ],
                    "candidates": [ids[d] for d in r.candidates],
                    "truncated_tokens": lost,
                    "timings": {"query_encoding_s": enc_each, **r.timings},
                }
            )
        return out


def search_with_pool(
    index: str,
    model: str | None,
    params: SearchParams,
    queries: list[tuple[str, str]],
    *,
    workers: int,
    cpus_per_worker: float,
    torch_threads: int,
    batch_size: int = 32,
    on_batch: Any = None,
    expected_fingerprint: Any = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Answer every query exactly once on ``workers`` actors; returns results by query id
    and the first worker's description."""
    import ray

    actor_cls = ray.remote(SearchWorker).options(
        num_cpus=cpus_per_worker, max_restarts=0, max_task_retries=0
    )
    batches = [
        QueryBatch(
            i // batch_size,
            tuple(q for q, _ in queries[i : i + batch_size]),
            tuple(t for _, t in queries[i : i + batch_size]),
        )
        for i in range(0, len(queries), batch_size)
    ]
    results: dict[str, dict[str, Any]] = {}
    info: dict[str, Any] = {}

    def started(actors: list[Any]) -> None:
        descs = ray.get([a.describe.remote() for a in actors])
        info.update(descs[0])
        if len({d["fingerprint"] for d in descs}) != 1:
            raise RuntimeError("search workers loaded different query encoders")

    def done(batch: QueryBatch, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            if row["query_id"] in results:  # pragma: no cover - guarded by the pool
                raise RuntimeError(f"query {row['query_id']} answered twice")
            results[row["query_id"]] = row
        if on_batch is not None:
            on_batch(len(rows))

    run_items(
        lambda: actor_cls.remote(index, model, params, torch_threads),
        workers,
        "search",
        batches,
        describe=lambda b: (
            f"query batch {b.batch_id} ({len(b.query_ids)} queries, first {b.query_ids[0]!r})"
        ),
        on_result=done,
        check_started=started,
    )
    return results, info
