"""Ray search actors: each loads the index, token store and query encoder once, then
answers batches of queries; the driver merges the batches."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from colbert_core.data import Query
from colbert_core.search import Ranked, SearchParams

from .actor_pool import PoolStats, WorkerStartError, run_items
from .hooks import park_point
from .runtime import Placement, node_identity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueryBatch:
    batch_id: int
    queries: tuple[Query, ...]


@dataclass
class QueryAnswer:
    """One query's answer from a search actor."""

    query_id: str
    ranked: Ranked
    candidates: list[str]
    truncated_tokens: int
    timings: dict[str, float]
    worker: int = 0
    node_id: str = ""


@dataclass
class PoolResult:
    """Every query's answer, the actors' settings and who answered how many."""

    answers: dict[str, QueryAnswer]
    params: SearchParams
    encoder: dict[str, Any]
    per_worker: dict[str, int] = field(default_factory=dict)
    pool: PoolStats = field(default_factory=PoolStats)
    #: Per node: queries answered, actors started, index files each node's actors
    #: downloaded into the node cache and reused from it (an ``s3://`` index).
    per_node: dict[str, dict[str, Any]] = field(default_factory=dict)


class SearchWorker:
    """Loads in :meth:`start` (typed errors reach the driver; see ``EncoderWorker``)."""

    def __init__(
        self, index: str, model: str | None, params: SearchParams, torch_threads: int | None
    ):
        self.index_path = index
        self.model = model
        self.requested = params
        self.torch_threads = torch_threads
        self.loaded: Any = None

    def start(self) -> dict[str, Any]:
        """Load the index and the query encoder it needs (checked), once; describe them."""
        if self.loaded is None:
            from colbert_core.index import load_index
            from colbert_core.search import (
                CandidateScorer,
                load_query_encoder,
                resolved_params,
                warm,
            )

            from .worker import start_worker_process

            start_worker_process(self.torch_threads)
            loaded = load_index(self.index_path)
            self.encoder = load_query_encoder(loaded.meta.encoder, self.model)
            # The driver reported what the index cannot use; every actor would repeat it.
            self.params = resolved_params(loaded.meta, self.requested)
            warm(loaded, self.params)  # before the first batch, whose queries are timed
            self.scorer = CandidateScorer()  # buffers reused by every batch of this actor
            self.node = node_identity()
            self.loaded = loaded
        fetched = self.loaded.fetched
        return {
            "fingerprint": self.encoder.fingerprint,
            "pid": os.getpid(),
            "params": dataclasses.asdict(self.params),
            "encoder": self.encoder.describe().to_dict(),
            **self.node,
            "cache": fetched.to_dict() if fetched is not None else None,
        }

    def search(self, batch: QueryBatch) -> list[QueryAnswer]:
        from colbert_core.search import encode_queries, ranked_list, search

        self.start()
        park_point("search-batch")
        encoded = encode_queries(self.encoder, batch.queries)
        enc_each = encoded.seconds / max(1, len(batch.queries))
        ids = self.loaded.doc_ids
        results = search(self.loaded, encoded.vectors, self.params, self.scorer)
        return [
            QueryAnswer(
                query_id=q.query_id,
                ranked=ranked_list(r.doc_index, r.scores, ids),
                candidates=[ids[d] for d in r.candidates],
                truncated_tokens=encoded.truncated.get(q.query_id, 0),
                timings={"query_encoding_s": enc_each, **r.timings},
                worker=os.getpid(),
                node_id=self.node["node_id"],
            )
            for q, r in zip(batch.queries, results, strict=True)
        ]


def search_with_pool(
    index: str,
    model: str | None,
    params: SearchParams,
    queries: list[Query],
    placement: Placement,
    *,
    batch_size: int,
    max_retries: int,
    on_batch: Callable[[int], None] | None = None,
) -> PoolResult:
    """Answer every query exactly once on a pool of search actors."""
    import ray

    actor_cls = ray.remote(SearchWorker).options(
        num_cpus=placement.num_cpus, max_restarts=0, max_task_retries=0
    )
    batches = [
        QueryBatch(i // batch_size, tuple(queries[i : i + batch_size]))
        for i in range(0, len(queries), batch_size)
    ]
    book = _Book(on_batch)
    stats = run_items(
        lambda: actor_cls.remote(index, model, params, placement.torch_threads),
        placement.workers,
        "search",
        batches,
        describe=lambda b: (
            f"query batch {b.batch_id} ({len(b.queries)} queries, first {b.queries[0].query_id!r})"
        ),
        on_result=book.done,
        max_retries=max_retries,
        on_started=book.started,
        what="search",
    )
    resolved = SearchParams(**book.info["params"])
    return PoolResult(
        book.answers, resolved, book.info["encoder"], book.per_worker, stats, book.per_node
    )


class _Book:
    """The driver's record of a search pool: answers, and who started and answered what."""

    def __init__(self, on_batch: Callable[[int], None] | None):
        self.on_batch = on_batch
        self.answers: dict[str, QueryAnswer] = {}
        self.per_worker: dict[str, int] = {}
        self.per_node: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}  # the first actor's description

    def started(self, description: dict[str, Any]) -> None:
        """Every actor (replacements too) must load the first one's query encoder."""
        if not self.info:
            self.info.update(description)
        elif description["fingerprint"] != self.info["fingerprint"]:
            raise WorkerStartError(
                "search workers loaded different query encoders (fingerprints "
                f"{self.info['fingerprint']} vs {description['fingerprint']}); make the "
                "model identical on every node"
            )
        node = self.per_node.setdefault(
            description["node_id"], {"node_ip": description["node_ip"], "actors": 0, "queries": 0}
        )
        node["actors"] += 1
        for key, n in (description["cache"] or {}).items():
            node[f"cache_{key}"] = node.get(f"cache_{key}", 0) + n

    def done(self, batch: QueryBatch, rows: list[QueryAnswer]) -> None:
        for row in rows:
            if row.query_id in self.answers:  # pragma: no cover - guarded by the pool
                raise RuntimeError(f"query {row.query_id} answered twice")
            self.answers[row.query_id] = row
            who = f"{row.node_id[:12]}:{row.worker}"  # pids repeat across nodes
            self.per_worker[who] = self.per_worker.get(who, 0) + 1
            self.per_node[row.node_id]["queries"] += 1
        if self.on_batch is not None:
            self.on_batch(len(rows))
