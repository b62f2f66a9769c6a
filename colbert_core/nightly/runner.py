"""Run a nightly suite: check everything first, then each check in this process with warm
models and indexes, judge it, append the run to the history, write the report.

Checks that share an index or a model share one loaded copy (:class:`WarmCache`): a suite
pays start-up once, not once per check. Nothing is re-encoded: checks read stored indexes,
embeddings and runs, and checks with the same query encoder and queries share one encoding
(each query's latency still counts its share of the encoding time, see
:class:`SharedEncoding`).
"""

from __future__ import annotations

import functools
import logging
import secrets
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import colbert_core

from ..data import LoadedQueries, Query, open_corpus
from ..embeddings import Embeddings
from ..encoder import ColBERTEncoder, EncoderRecord
from ..errors import ColbertBatchError
from ..evaluation import (
    Evaluation,
    RunFormatError,
    RunMetrics,
    group_run,
    latency_percentiles,
    read_trec_run,
    write_run_folder,
)
from ..evaluation.history import History, HistoryRow
from ..evaluation.regression import MeasureVerdict, judge_latency, judge_measure, worst_queries
from ..index import LoadedIndex, load_index, read_index_meta_with_sha256
from ..search import (
    CandidateScorer,
    EncodedQueries,
    Ranked,
    default_params,
    encode_queries,
    exact_search,
    load_query_encoder,
    ranked_list,
    resolved_params,
    search,
    warm,
)
from ..search.bm25 import bm25_search
from ..search.maxsim import calibration_ms
from ..search.rerank import rerank_index, rerank_store
from ..storage import join_uri, sha256_file
from .suite import Check, Rerank, Suite, SuiteError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SharedEncoding:
    """A query set encoded once per run for every check that uses it, timed together with
    the calibration around it.

    A check adds each query's share of the encoding to its latency in the check's own
    calibration units, :meth:`share_ms`: a burst of load between the encoding and a later
    check then moves neither that check's ratio p50 / calibration nor its verdict.
    """

    queries: EncodedQueries
    calibration_ms: float

    def share_ms(self, calibration: float) -> float:
        """Each query's encoding time (ms), rescaled to a check timed at ``calibration``.

        >>> enc = EncodedQueries(["a", "b"], [], seconds=0.010)
        >>> SharedEncoding(enc, calibration_ms=2.0).share_ms(4.0)
        10.0
        """
        each = self.queries.seconds * 1000 / max(1, len(self.queries.query_ids))
        return each * calibration / self.calibration_ms if self.calibration_ms > 0 else each


class WarmCache:
    """Loaded query encoders, indexes and embeddings, shared by the checks of a run."""

    def __init__(self, model: str):
        self.model = model
        self._encoders: dict[tuple[str, str], ColBERTEncoder] = {}
        self._indexes: dict[str, LoadedIndex] = {}
        self._embeddings: dict[str, Embeddings] = {}
        self._encoded: dict[tuple[int, tuple[tuple[str, str], ...]], SharedEncoding] = {}
        self._warm_encoders: set[int] = set()

    def encoder(self, recorded: EncoderRecord) -> ColBERTEncoder:
        """The suite's model as the query encoder of ``recorded``'s documents (checked)."""
        key = (recorded.fingerprint, recorded.settings.to_json())
        if key not in self._encoders:
            self._encoders[key] = load_query_encoder(recorded, self.model)
        return self._encoders[key]

    def encoded(self, encoder: ColBERTEncoder, queries: list[Query]) -> SharedEncoding:
        """``queries`` encoded by ``encoder``, once per run for every check that asks for
        the same ids and texts with the same encoder."""
        key = (id(encoder), tuple((q.query_id, q.text) for q in queries))
        if key not in self._encoded:
            if id(encoder) not in self._warm_encoders:
                # A model's first forward pass pays one-off set-up: never time it.
                encode_queries(encoder, queries[:2])
                self._warm_encoders.add(id(encoder))
            before = calibration_ms()
            encoded = encode_queries(encoder, queries)
            calibration = float(np.median([before, calibration_ms()]))
            self._encoded[key] = SharedEncoding(encoded, calibration)
        return self._encoded[key]

    def index(self, path: str) -> LoadedIndex:
        if path not in self._indexes:
            self._indexes[path] = load_index(path)
        return self._indexes[path]

    def embeddings(self, path: str) -> Embeddings:
        if path not in self._embeddings:
            self._embeddings[path] = Embeddings(path)
        return self._embeddings[path]

    def source(self, path: str, is_index: bool) -> LoadedIndex | Embeddings:
        return self.index(path) if is_index else self.embeddings(path)


@dataclass
class CheckOutcome:
    """A check's result, judged."""

    check: Check
    row: HistoryRow
    verdicts: list[MeasureVerdict]
    latency_reasons: list[str]
    baseline: HistoryRow | None
    worst: list[tuple[str, float, float]] = field(default_factory=list)
    folder: str = ""

    @property
    def regressed(self) -> bool:
        return any(v.regressed for v in self.verdicts) or bool(self.latency_reasons)


@dataclass
class NightlyResult:
    run_id: str
    suite: Suite
    outcomes: list[CheckOutcome]
    folder: str
    accepted: bool

    @property
    def regressed(self) -> bool:
        return any(o.regressed for o in self.outcomes)


@dataclass
class _Prepared:
    """What a check needs, loaded and validated before any check runs."""

    queries: LoadedQueries
    encoder: ColBERTEncoder
    source_sha256: str
    #: A rerank check's candidates per query (the run file's, or BM25's top ``depth``),
    #: computed once: they are the check's input, not what it times.
    given: dict[str, list[str]] | None = None


def new_run_id() -> str:
    """Sortable by time, unique across runs started in the same second."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@functools.cache
def git_commit() -> str | None:
    """The commit of the colbert-batch checkout in use, when it is one (asked once per
    process, not once per check)."""
    repo = Path(colbert_core.__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def prepare(suite: Suite, cache: WarmCache) -> dict[str, _Prepared]:
    """Load and check every check's inputs before any work.

    Raises
    ------
    SuiteError
        Naming the check: a missing file, an unreadable artifact, a model other than the
        suite's.
    """
    prepared = {}
    for check in suite.checks:
        try:
            prepared[check.name] = _prepare(check, cache)
        except ColbertBatchError as exc:
            raise SuiteError(f"{suite.path}: check {check.name!r}: {exc}") from exc
    return prepared


def _prepare(check: Check, cache: WarmCache) -> _Prepared:
    queries = check.query_set.load()
    if queries.qrels is None:
        raise SuiteError("no qrels: give `qrels`, or queries from a dataset with judgements")
    is_index = check.index is not None or (check.rerank is not None and bool(check.rerank.index))
    if is_index:
        meta, sha = read_index_meta_with_sha256(check.source)
        recorded = meta.encoder
    else:
        store = cache.embeddings(check.source)
        recorded, sha = store.encoder, store.manifest_sha256
    given = None
    if check.rerank is not None:
        if check.rerank.run and not Path(check.rerank.run).is_file():
            raise RunFormatError(f"run file {check.rerank.run} not found")
        if check.rerank.run:
            sha = sha256_file(check.rerank.run)
        given = _candidates(check.rerank, queries.queries)
    return _Prepared(queries, cache.encoder(recorded), sha, given)


def _candidates(spec: Rerank, queries: list[Query]) -> dict[str, list[str]]:
    """The documents to rerank per query: the run file's, or BM25's, top ``depth``."""
    if spec.run:
        grouped = group_run(read_trec_run(spec.run))
        return {
            q: [sd.doc_id for sd in sorted(docs, key=lambda s: -s.score)[: spec.depth]]
            for q, docs in grouped.items()
        }
    ranked, _ = bm25_search(open_corpus(str(spec.bm25)), queries, k=spec.depth)
    return {q: [d for d, _ in docs] for q, docs in ranked.items()}


def run_suite(
    suite: Suite,
    *,
    accept: bool = False,
    baseline_run: str | None = None,
    on_check: Callable[[str], None] | None = None,
) -> NightlyResult:
    """Run every check, judge it against its expected values and its baseline, record it."""
    cache = WarmCache(suite.model)
    prepared = prepare(suite, cache)
    history = History(suite.history)
    past = history.rows()
    if baseline_run is not None and baseline_run not in history.run_ids(past):
        raise SuiteError(f"--baseline {baseline_run}: no such run in {suite.history}")
    run_id, started = new_run_id(), datetime.now(UTC).isoformat(timespec="seconds")
    folder = join_uri(suite.out, "runs", run_id)
    outcomes = []
    for check in suite.checks:
        if on_check is not None:
            on_check(check.name)
        baseline = history.baseline(check.name, baseline_run, past)
        outcome = _run_check(check, prepared[check.name], cache, suite, baseline, folder)
        outcome.row.run_id, outcome.row.timestamp, outcome.row.accepted = run_id, started, accept
        outcomes.append(outcome)
    history.append(run_id, [o.row for o in outcomes])  # last: a killed run records nothing
    return NightlyResult(run_id, suite, outcomes, folder, accept)


def _run_check(
    check: Check,
    prep: _Prepared,
    cache: WarmCache,
    suite: Suite,
    baseline: HistoryRow | None,
    folder: str,
) -> CheckOutcome:
    encoded = cache.encoded(prep.encoder, prep.queries.queries)
    _search(check, prep, encoded.queries, cache, slice(0, 2))  # warm-up: pages, buffers
    ranked, latency, calibration = _timed_search(check, prep, encoded, cache)
    check_folder = join_uri(folder, "checks", check.name)
    _, ev = write_run_folder(
        check_folder,
        ranked,
        RunMetrics(params=check.settings(), source={"sha256": prep.source_sha256}),
        tag=f"nightly-{check.kind}",
        queries=prep.queries,
        measures=check.measures,
        per_query={"latency_ms": latency},
    )
    if ev is None:  # prepare() refuses checks without qrels
        raise SuiteError(f"check {check.name!r}: nothing to evaluate (no qrels)")
    verdicts = _judge(check, ev, suite.alpha, baseline)
    lat = latency_percentiles(latency[q] for q in ev.per_query)
    ratio = lat["p50"] / calibration if lat["p50"] is not None and calibration > 0 else None
    latency_reasons = judge_latency(
        ratio, baseline.latency_ratio if baseline else None, check.latency_factor
    )
    row = HistoryRow(
        run_id="",
        timestamp="",
        check=check.name,
        accepted=False,
        verdict="pass",
        version=colbert_core.__version__,
        git_commit=git_commit(),
        model_fingerprint=prep.encoder.fingerprint,
        source_sha256=prep.source_sha256,
        settings=check.settings(),
        measures=dict(ev.measures),
        per_query=_per_measure(ev),
        latency_ms=lat,
        calibration_ms=round(calibration, 4),
        latency_ratio=None if ratio is None else round(ratio, 4),
        reasons=[r for v in verdicts for r in v.reasons] + latency_reasons,
    )
    row.verdict = "regressed" if row.reasons else "pass"
    worst = []
    if baseline is not None:
        measure = next((v.measure for v in verdicts if v.regressed), "nDCG@10")
        worst = worst_queries(row.per_query.get(measure, {}), baseline.per_query.get(measure, {}))
    return CheckOutcome(check, row, verdicts, latency_reasons, baseline, worst, check_folder)


#: Queries of an index check searched between two calibration samples.
CALIBRATION_EVERY = 32


def _timed_search(
    check: Check, prep: _Prepared, encoded: SharedEncoding, cache: WarmCache
) -> tuple[dict[str, Ranked], dict[str, float], float]:
    """The check's ranked lists, each query's latency in ms (its share of the encoding,
    :meth:`SharedEncoding.share_ms`, plus its search), and the calibration in ms.

    The calibration is sampled before the search and again after every
    :data:`CALIBRATION_EVERY` queries, and its median is used: on a shared machine a burst
    of load then slows the calibration as often as it slows the queries, and the ratio
    p50 / calibration stays put. (One sample before the search made the ratio jump 5x in
    CI when the load changed during the search.) Exact and rerank checks are one batched
    call each, timed as a whole, so they get a sample before and one after.
    """
    if check.index is not None and check.rerank is None and not check.embeddings:
        loaded = cache.index(str(check.index))
        # Reported once per check here; each chunk's search resolves them silently.
        default_params(loaded.meta, check.params)
        warm(loaded, check.params)
    samples = [calibration_ms()]
    n = len(prep.queries.queries)
    step = n if check.rerank is not None or check.embeddings else CALIBRATION_EVERY
    ranked: dict[str, Ranked] = {}
    latency: dict[str, float] = {}
    for start in range(0, n, max(1, step)):
        chunk = slice(start, start + step)
        chunk_ranked, chunk_latency = _search(check, prep, encoded.queries, cache, chunk)
        ranked.update(chunk_ranked)
        latency.update(chunk_latency)
        samples.append(calibration_ms())
    calibration = float(np.median(samples))
    share = encoded.share_ms(calibration)
    return ranked, {q: ms + share for q, ms in latency.items()}, calibration


def _per_measure(ev: Evaluation) -> dict[str, dict[str, float]]:
    return {m: {q: v[m] for q, v in ev.per_query.items() if m in v} for m in ev.measures}


def _judge(
    check: Check, ev: Evaluation, alpha: float, baseline: HistoryRow | None
) -> list[MeasureVerdict]:
    per_measure = _per_measure(ev)
    return [
        judge_measure(
            m,
            per_measure[m],
            tolerance=check.tolerance_of(m),
            alpha=alpha,
            expected=check.results.get(m),
            baseline=baseline.per_query.get(m) if baseline else None,
        )
        for m in ev.measures
    ]


def _search(
    check: Check, prep: _Prepared, encoded: EncodedQueries, cache: WarmCache, chunk: slice
) -> tuple[dict[str, Ranked], dict[str, float]]:
    """The ranked lists of the check's queries ``chunk`` (``encoded`` holds all of the
    check's queries, in order) and each one's search latency in ms."""
    query_ids, vectors = encoded.query_ids[chunk], encoded.vectors[chunk]
    n = max(1, len(query_ids))
    t0 = time.perf_counter()
    if check.rerank is not None:
        by_id = dict(zip(query_ids, vectors, strict=True))
        ranked = _rerank(check, by_id, prep.given or {}, cache)
        each = (time.perf_counter() - t0) * 1000 / n
        return ranked, dict.fromkeys(query_ids, each)
    if check.embeddings:
        store = cache.embeddings(check.embeddings)
        result = exact_search(store, vectors, k=check.params.k)
        each = (time.perf_counter() - t0) * 1000 / n
        ranked = {
            qid: ranked_list(result.doc_index[i], result.scores[i], result.doc_ids)
            for i, qid in enumerate(query_ids)
        }
        return ranked, dict.fromkeys(query_ids, each)
    loaded = cache.index(str(check.index))
    params = resolved_params(loaded.meta, check.params)
    results = search(loaded, vectors, params, CandidateScorer())
    ranked, latency = {}, {}
    for qid, r in zip(query_ids, results, strict=True):
        ranked[qid] = ranked_list(r.doc_index, r.scores, loaded.doc_ids)
        latency[qid] = 1000 * sum(r.timings.values())
    return ranked, latency


def _rerank(
    check: Check, vectors: dict[str, np.ndarray], given: dict[str, list[str]], cache: WarmCache
) -> dict[str, Ranked]:
    spec = check.rerank
    if spec is None:
        raise SuiteError(f"check {check.name!r} is not a rerank check")
    given = {q: docs for q, docs in given.items() if q in vectors}
    if spec.index:
        out, _ = rerank_index(cache.index(spec.index), vectors, given)
    else:
        out, _ = rerank_store(cache.embeddings(str(spec.embeddings)), vectors, given)
    return {q: docs[: spec.k] for q, docs in out.items()}
