"""The study YAML: what to encode, which sizes, and the grid of index configs x search settings.

Example (``jobs/configs/study-scifact.yaml`` is the full one)::

    dataset: beir:scifact            # judged queries, qrels and the target corpus
    distractors: ../shared/datasets/distractors-en/corpus.jsonl.gz
    sizes: [10000, 30000, 100000, 303588]   # documents: the whole target + distractors
    synthetic_sizes: [1000000]       # build/memory/latency only, no quality columns
    model: minilm
    out: out/study-scifact
    encode: {shard_size: 1000, doc_maxlen: 256, dtype: bf16}
    latency_queries: 100             # one-at-a-time latency over the first N queries
    max_point_memory_gb: 16          # skip points predicted to need more (default: the
                                     # Ray memory resource of the largest node)
    search: [{k_prime: 64, max_candidates: 256}]   # settings of indexes without their own
    indexes:
      - {name: flat, type: flat, max_docs: 30000}
      - {name: ivfpq, type: ivfpq, search: [{nprobe: 4}, {nprobe: 8}, {nprobe: 32}]}
      - {name: ivfpq-hnswq, type: ivfpq, factory: "IVF{nlist}_HNSW32,PQ{pq_m}x8"}
      - {name: hnsw, type: hnsw, search: [{ef_search: 64}, {ef_search: 128}]}

Every key is checked before any work starts: an unknown key, an unknown index type, a size
smaller than the target corpus, or a factory placeholder other than ``{nlist}``/``{pq_m}``
is a :class:`StudyConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import check_positive, config_from_mapping, read_yaml_mapping
from ..embeddings import DEFAULT_SHARD_SIZE, EncodeConfig
from ..errors import ConfigError
from ..index import IndexConfig
from ..index.spec import default_nlist, default_pq_m
from ..search import SearchParams

TOP_LEVEL = (
    "name",
    "dataset",
    "corpus",
    "queries",
    "qrels",
    "split",
    "distractors",
    "sizes",
    "synthetic_sizes",
    "model",
    "out",
    "encode",
    "k",
    "latency_queries",
    "exact_memory_budget_mb",
    "keep_indexes",
    "max_point_memory_gb",
    "search",
    "indexes",
    "seed",
)
#: Encode options a study accepts (the rest is fixed by the study: corpus, out, max_docs).
ENCODE_KEYS = ("shard_size", "batch_size", "doc_maxlen", "dtype", "on_bad_record")
#: Search keys of one setting (``k`` is the study's, the same for every point).
SEARCH_KEYS = ("k_prime", "max_candidates", "nprobe", "ef_search", "full_scores")
#: Placeholders a factory string may use, filled per size by the index rules.
FACTORY_FIELDS = ("nlist", "pq_m")


class StudyConfigError(ConfigError):
    """The study YAML is unreadable, or a key is missing, unknown or invalid."""


@dataclass(frozen=True)
class IndexEntry:
    """One index config of the grid and its search settings.

    ``factory`` may hold ``{nlist}`` and ``{pq_m}``, filled per size by the rules of
    :mod:`colbert_core.index.spec` (e.g. ``IVF{nlist}_HNSW32,PQ{pq_m}x8``); ``max_docs``
    leaves this config out of larger sizes (reported as skipped, with that reason).
    """

    name: str
    index: IndexConfig
    settings: tuple[SearchParams, ...]
    max_docs: int | None = None

    def resolved(self, n_tokens: int, dim: int) -> IndexConfig:
        """The index options at ``n_tokens`` tokens (factory placeholders filled)."""
        if self.index.factory is None:
            return self.index
        values = {
            "nlist": self.index.nlist or default_nlist(n_tokens),
            "pq_m": self.index.pq_m or default_pq_m(dim),
        }
        return dataclasses.replace(self.index, factory=self.index.factory.format(**values))


@dataclass(frozen=True)
class StudyConfig:
    """A scaling study (see the module docstring for the YAML)."""

    path: str
    name: str
    corpus: str
    queries: str
    qrels: str | None
    split: str
    distractors: str | None
    sizes: tuple[int, ...]
    synthetic_sizes: tuple[int, ...]
    model: str
    out: str
    encode: dict[str, Any]
    indexes: tuple[IndexEntry, ...]
    k: int = 100
    latency_queries: int | None = None
    exact_memory_budget_mb: int = 512
    keep_indexes: bool = False
    max_point_memory_gb: float | None = None
    seed: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def shard_size(self) -> int:
        """Documents per shard of both encode outputs (and of synthetic corpora)."""
        return int(self.encode.get("shard_size", DEFAULT_SHARD_SIZE))

    def encode_config(self, which: str, out: str, max_docs: int | None = None) -> EncodeConfig:
        """The encode job of the target corpus (``which="target"``) or the distractors."""
        corpus = self.corpus if which == "target" else self.distractors
        return EncodeConfig(
            corpus=str(corpus), out=out, model=self.model, max_docs=max_docs, **self.encode
        )


def load_study(path: str) -> StudyConfig:
    """Read and validate a study YAML.

    Raises
    ------
    StudyConfigError
        Naming the file and the key (``indexes[1].type``, ``sizes``, ...).
    """
    raw = read_yaml_mapping(path, "study config", StudyConfigError)
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise StudyConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(TOP_LEVEL)}"
        )
    dataset = raw.get("dataset")
    corpus, queries = raw.get("corpus", dataset), raw.get("queries", dataset)
    if not corpus or not queries:
        raise StudyConfigError(f"{path}: set `dataset`, or both `corpus` and `queries`")
    sizes = _int_list(raw, "sizes", path, required=True)
    synthetic = _int_list(raw, "synthetic_sizes", path, required=False)
    distractors = raw.get("distractors")
    if not distractors and (len(sizes) > 1 or synthetic):
        raise StudyConfigError(
            f"{path}: distractors: needed to grow the corpus to several sizes (a corpus "
            "file or folder, e.g. ../shared/datasets/distractors-en/corpus.jsonl.gz)"
        )
    base = _settings(raw.get("search"), "search", path) or (SearchParams(),)
    indexes = _indexes(raw.get("indexes"), base, path)
    encode = _encode(raw.get("encode"), path)
    study = StudyConfig(
        path=path,
        name=str(raw.get("name") or _stem(path)),
        corpus=str(corpus),
        queries=str(queries),
        qrels=raw.get("qrels", dataset if queries == dataset else None),
        split=str(raw.get("split", "test")),
        distractors=str(distractors) if distractors else None,
        sizes=sizes,
        synthetic_sizes=synthetic,
        model=str(raw.get("model", "minilm")),
        out=str(raw.get("out", f"out/study-{_stem(path)}")),
        encode=encode,
        indexes=indexes,
        k=_scalar(raw, "k", int, 100, path),
        latency_queries=_scalar(raw, "latency_queries", int, None, path),
        exact_memory_budget_mb=_scalar(raw, "exact_memory_budget_mb", int, 512, path),
        keep_indexes=_scalar(raw, "keep_indexes", bool, False, path),
        max_point_memory_gb=_number(raw, "max_point_memory_gb", path),
        seed=_scalar(raw, "seed", int, 0, path),
        raw=raw,
    )
    for key in ("k", "latency_queries", "exact_memory_budget_mb", "max_point_memory_gb"):
        try:
            check_positive(study, key)
        except ConfigError as exc:
            raise StudyConfigError(f"{path}: {exc}") from exc
    return study


def check_sizes(study: StudyConfig, target_docs: int, distractor_docs: int | None) -> None:
    """Refuse sizes the corpora cannot make, before any work.

    Raises
    ------
    StudyConfigError
        When a size is smaller than the target corpus, or larger than the target plus
        every distractor (``distractor_docs``, when known).
    """
    small = [s for s in study.sizes if s < target_docs]
    if small:
        raise StudyConfigError(
            f"{study.path}: sizes: {small} smaller than the target corpus {study.corpus} "
            f"({target_docs} documents): every size searches the whole target corpus plus "
            f"distractors; use sizes >= {target_docs}"
        )
    if distractor_docs is not None and max(study.sizes) > target_docs + distractor_docs:
        raise StudyConfigError(
            f"{study.path}: sizes: {max(study.sizes)} needs {max(study.sizes) - target_docs} "
            f"distractors but {study.distractors} holds {distractor_docs}; the largest real "
            f"size is {target_docs + distractor_docs} (use synthetic_sizes beyond it)"
        )


def _stem(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] or "study"


def _scalar(raw: Mapping[str, Any], key: str, kind: type, default: Any, path: str) -> Any:
    value = raw.get(key, default)
    if value is None:
        return None
    if kind is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise StudyConfigError(f"{path}: {key} must be {kind.__name__}, got {value!r}")
    return value


def _number(raw: Mapping[str, Any], key: str, path: str) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StudyConfigError(f"{path}: {key} must be a number, got {value!r}")
    return float(value)


def _int_list(raw: Mapping[str, Any], key: str, path: str, *, required: bool) -> tuple[int, ...]:
    value = raw.get(key)
    if value is None:
        if required:
            raise StudyConfigError(f"{path}: {key}: missing; list the corpus sizes in documents")
        return ()
    if not isinstance(value, list) or not value:
        raise StudyConfigError(f"{path}: {key} must be a non-empty list of integers")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise StudyConfigError(f"{path}: {key}: {v!r} is not a positive integer")
    if len(set(value)) != len(value):
        raise StudyConfigError(f"{path}: {key}: {value} lists a size twice")
    return tuple(sorted(value))


def _encode(section: Any, path: str) -> dict[str, Any]:
    section = section or {}
    if not isinstance(section, dict):
        raise StudyConfigError(f"{path}: encode must be a mapping")
    unknown = sorted(set(section) - set(ENCODE_KEYS))
    if unknown:
        raise StudyConfigError(
            f"{path}: encode: unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(ENCODE_KEYS)}"
        )
    try:  # validated by the encode job's own rules
        EncodeConfig(corpus="-", out="-", **section)
    except (ConfigError, TypeError) as exc:
        raise StudyConfigError(f"{path}: encode: {exc}") from exc
    return dict(section)


def _settings(value: Any, where: str, path: str) -> tuple[SearchParams, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise StudyConfigError(f"{path}: {where} must be a list of mappings of search settings")
    settings = []
    for i, entry in enumerate(value):
        unknown = sorted(set(entry) - set(SEARCH_KEYS))
        if unknown:
            raise StudyConfigError(
                f"{path}: {where}[{i}]: unknown key(s) {', '.join(unknown)}; allowed: "
                f"{', '.join(SEARCH_KEYS)}"
            )
        try:
            settings.append(config_from_mapping(SearchParams, entry, f"{path}: {where}[{i}]"))
        except ConfigError as exc:
            raise StudyConfigError(str(exc)) from exc
    if len(set(settings)) != len(settings):
        raise StudyConfigError(f"{path}: {where}: a search setting is listed twice")
    return tuple(settings)


def _indexes(value: Any, base: tuple[SearchParams, ...], path: str) -> tuple[IndexEntry, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise StudyConfigError(
            f"{path}: indexes must be a non-empty list of index configs, e.g. "
            "[{type: ivfpq}, {type: hnsw}]"
        )
    entries: list[IndexEntry] = []
    for i, raw in enumerate(value):
        where = f"indexes[{i}]"
        options = {k: v for k, v in raw.items() if k not in ("name", "search", "max_docs")}
        try:
            index = config_from_mapping(IndexConfig, options, f"{path}: {where}")
        except ConfigError as exc:
            raise StudyConfigError(str(exc)) from exc
        if index.factory is not None:
            _check_factory(index.factory, f"{path}: {where}.factory")
        max_docs = raw.get("max_docs")
        if max_docs is not None and (not isinstance(max_docs, int) or max_docs <= 0):
            raise StudyConfigError(f"{path}: {where}.max_docs must be a positive integer")
        name = str(raw.get("name") or index.type)
        entries.append(
            IndexEntry(
                name=name,
                index=index,
                settings=_settings(raw.get("search"), f"{where}.search", path) or base,
                max_docs=max_docs,
            )
        )
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise StudyConfigError(
            f"{path}: indexes: the name(s) {', '.join(dupes)} are used twice; give each "
            "index config its own `name`"
        )
    for name in names:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise StudyConfigError(
                f"{path}: indexes: name {name!r} must be letters, digits, - and _ (it "
                "names a folder)"
            )
    return tuple(entries)


def _check_factory(factory: str, where: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(factory) if f is not None]
    except ValueError as exc:
        raise StudyConfigError(f"{where}: {factory!r}: {exc}") from exc
    bad = sorted(set(fields) - set(FACTORY_FIELDS))
    if bad:
        raise StudyConfigError(
            f"{where}: {factory!r} uses the placeholder(s) {bad}; only "
            f"{', '.join('{' + f + '}' for f in FACTORY_FIELDS)} are filled per size"
        )
