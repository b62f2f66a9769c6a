"""A nightly suite: the YAML file of checks, parsed into validated dataclasses.

Example (``jobs/configs/nightly-scifact.yaml`` is a working one)::

    name: scifact-nightly
    model: minilm                      # every check's artifact must be this model's
    out: out/nightly                   # run folders; history in out/nightly/history.parquet
    alpha: 0.05                        # paired tests
    latency_factor: 1.5                # p50/calibration may grow this much vs the baseline
    tolerance: {nDCG@10: 0.005}        # default per measure (else DEFAULT_TOLERANCE)
    checks:
      - name: ivfpq
        index: out/demo/index-ivfpq    # or `embeddings: ROOT` (exact search), or `rerank:`
        queries: beir:scifact
        search: {k: 100, k_prime: 64, max_candidates: 256}
        results: {nDCG@10: 0.7072}     # expected values (optional)
        tolerance: {nDCG@10: 0.005}
      - name: bm25-rerank
        queries: beir:scifact
        rerank: {bm25: beir:scifact, index: out/demo/index-ivfpq, depth: 100}

A check searches exactly one thing: ``index`` (ANN search), ``embeddings`` (exact MaxSim) or
``rerank`` (``run: FILE`` or ``bm25: CORPUS`` reranked from ``index`` or ``embeddings``).
Unknown keys, a check without a source, and duplicate names are errors naming the check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import config_from_mapping, read_yaml_mapping
from ..data import QuerySet
from ..errors import ConfigError
from ..evaluation import DEFAULT_MEASURES, parse_measures
from ..search import SearchParams
from ..storage import join_uri

#: Tolerance of a measure the suite does not list.
DEFAULT_TOLERANCE = 0.005
DEFAULT_ALPHA = 0.05
DEFAULT_LATENCY_FACTOR = 1.5
#: The history's name under ``out`` unless the suite gives ``history:``.
HISTORY_NAME = "history.parquet"

_SUITE_KEYS = {"name", "model", "out", "history", "alpha", "latency_factor", "tolerance", "checks"}
_CHECK_KEYS = {
    "name", "queries", "qrels", "split", "index", "embeddings", "rerank", "search",
    "measures", "results", "tolerance", "latency_factor",
}  # fmt: skip
_RERANK_KEYS = {"run", "bm25", "index", "embeddings", "depth", "k"}


class SuiteError(ConfigError):
    """The suite YAML is unreadable or a key is missing, unknown or invalid."""


@dataclass(frozen=True)
class Rerank:
    """Rerank a run (a file, or BM25 over a corpus) from an index or embeddings."""

    run: str | None = None
    bm25: str | None = None
    index: str | None = None
    embeddings: str | None = None
    depth: int = 100
    k: int = 100


@dataclass(frozen=True)
class Check:
    """One check of a suite."""

    name: str
    query_set: QuerySet
    index: str | None = None
    embeddings: str | None = None
    rerank: Rerank | None = None
    params: SearchParams = field(default_factory=SearchParams)
    measures: tuple[str, ...] = ()
    results: dict[str, float] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    latency_factor: float = DEFAULT_LATENCY_FACTOR

    @property
    def kind(self) -> str:
        return "index" if self.index else "exact" if self.embeddings else "rerank"

    @property
    def source(self) -> str:
        """The artifact whose model the check's queries must be encoded with."""
        if self.rerank is not None:
            return str(self.rerank.index or self.rerank.embeddings)
        return str(self.index or self.embeddings)

    def measure_names(self) -> list[str]:
        return [str(m) for m in parse_measures(self.measures)]

    def tolerance_of(self, measure: str) -> float:
        return float(self.tolerance.get(measure, DEFAULT_TOLERANCE))

    def settings(self) -> dict[str, Any]:
        """What the history records as the check's settings."""
        out: dict[str, Any] = {"kind": self.kind, "source": self.source}
        out |= {"queries": self.query_set.queries, "qrels": self.query_set.qrels_source}
        if self.rerank is not None:
            out |= {"run": self.rerank.run, "bm25": self.rerank.bm25, "depth": self.rerank.depth}
        else:
            out |= {k: v for k, v in vars(self.params).items() if v is not None}
        return out


@dataclass(frozen=True)
class Suite:
    name: str
    model: str
    out: str
    history: str
    checks: tuple[Check, ...]
    alpha: float = DEFAULT_ALPHA
    path: str = ""


def load_suite(path: str) -> Suite:
    """Parse and validate a suite YAML (files and models are checked by the runner).

    Raises
    ------
    SuiteError
        Naming the file, the check and the key.
    """
    raw = _read_yaml(path)
    _refuse_unknown(raw, _SUITE_KEYS, path)
    checks = raw.get("checks")
    if not isinstance(checks, list) or not checks:
        raise SuiteError(f"{path}: `checks` must be a non-empty list of checks")
    defaults = {
        "tolerance": _number_map(raw.get("tolerance") or {}, f"{path}: tolerance"),
        "latency_factor": raw.get("latency_factor", DEFAULT_LATENCY_FACTOR),
    }
    parsed = tuple(_check(c, i, path, defaults) for i, c in enumerate(checks))
    names = [c.name for c in parsed]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SuiteError(f"{path}: check names must be unique; repeated: {dup}")
    out = str(raw.get("out", "out/nightly"))
    alpha = raw.get("alpha", DEFAULT_ALPHA)
    if not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise SuiteError(f"{path}: alpha must be a number between 0 and 1, got {alpha!r}")
    return Suite(
        name=str(raw.get("name") or Path(path).stem),
        model=str(raw.get("model", "minilm")),
        out=out,
        history=str(raw.get("history") or join_uri(out, HISTORY_NAME)),
        checks=parsed,
        alpha=float(alpha),
        path=path,
    )


def _read_yaml(path: str) -> dict[str, Any]:
    return read_yaml_mapping(path, "suite", SuiteError)


def _refuse_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise SuiteError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def _number_map(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    ):
        raise SuiteError(f"{where} must map measure names to numbers, e.g. {{nDCG@10: 0.7}}")
    parse_measures(list(value))  # names must be ir_measures measures
    return {str(k): float(v) for k, v in value.items()}


def _check(raw: Any, i: int, path: str, defaults: dict[str, Any]) -> Check:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise SuiteError(f"{path}: checks[{i}] must be a mapping with a `name`")
    where = f"{path}: check {raw['name']!r}"
    _refuse_unknown(raw, _CHECK_KEYS, where)
    sources = [k for k in ("index", "embeddings", "rerank") if raw.get(k)]
    if len(sources) != 1:
        raise SuiteError(f"{where}: give exactly one of index, embeddings, rerank")
    if not raw.get("queries"):
        raise SuiteError(f"{where}: missing `queries`")
    try:
        query_set = QuerySet(
            queries=str(raw["queries"]),
            qrels=raw.get("qrels"),
            split=str(raw.get("split", "test")),
        )
        params = config_from_mapping(SearchParams, raw.get("search") or {}, f"{where}: search")
        measures = tuple(raw.get("measures") or ())
        parse_measures(measures)
    except ConfigError as exc:
        raise SuiteError(f"{where}: {exc}") from exc
    rerank = None
    if raw.get("rerank"):
        rerank = _rerank(raw["rerank"], where)
    return Check(
        name=str(raw["name"]),
        query_set=query_set,
        index=raw.get("index"),
        embeddings=raw.get("embeddings"),
        rerank=rerank,
        params=params,
        measures=measures,
        results=_number_map(raw.get("results") or {}, f"{where}: results"),
        tolerance=defaults["tolerance"]
        | _number_map(raw.get("tolerance") or {}, f"{where}: tolerance"),
        latency_factor=float(raw.get("latency_factor", defaults["latency_factor"])),
    )


def _rerank(raw: Any, where: str) -> Rerank:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: `rerank` must be a mapping")
    _refuse_unknown(raw, _RERANK_KEYS, f"{where}: rerank")
    if bool(raw.get("run")) == bool(raw.get("bm25")):
        raise SuiteError(f"{where}: rerank needs exactly one of run (a TREC file) or bm25")
    if bool(raw.get("index")) == bool(raw.get("embeddings")):
        raise SuiteError(f"{where}: rerank needs exactly one of index or embeddings")
    try:
        return config_from_mapping(Rerank, raw, f"{where}: rerank")
    except ConfigError as exc:
        raise SuiteError(str(exc)) from exc


__all__ = ["DEFAULT_MEASURES", "Check", "Rerank", "Suite", "SuiteError", "load_suite"]
