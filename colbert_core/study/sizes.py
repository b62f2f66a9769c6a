"""The corpus at each size of a study: real prefixes, synthetic corpora, exact references.

* A real size ``N`` is the whole target corpus plus the first ``N - |target|`` distractors,
  read through an :class:`~colbert_core.embeddings.EmbeddingsView` of the two encode
  outputs: every size shares the same shards, nothing is re-encoded or copied.
* A synthetic size is a :class:`SyntheticEmbeddings`: documents whose lengths are drawn
  from the real documents' lengths and whose token vectors are real token vectors (a
  seeded sample of the largest real size) plus Gaussian noise, renormalised - a smoothed
  bootstrap of the real token distribution. Generated shard by shard, never stored; good
  for build time, memory, bytes/token and latency, not for quality (no judgments).
* The exact reference of every real size comes from one exhaustive MaxSim pass over the
  largest one (:func:`~colbert_core.search.exact.exact_search_prefixes`), stored per size
  in ``exact/size-<N>.parquet`` with the view's checksum, and reused while it matches.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..embeddings import EmbeddingsView, ShardData, ShardInfo, ViewPart
from ..embeddings.manifest import shard_name
from ..embeddings.view import ListedShards
from ..encoder import EncoderRecord
from ..index.build import sample_training_vectors
from ..search.exact import SearchResult, exact_search_prefixes
from ..storage import sha256_bytes, write_bytes_atomic

logger = logging.getLogger(__name__)

#: Token vectors sampled from the largest real size as the synthetic template.
TEMPLATE_TOKENS = 65_536
#: Noise per dimension of synthetic tokens, as a multiple of ``1/sqrt(dim)`` (the spread
#: of one coordinate of a random unit vector): 0.5 keeps a synthetic token at cosine ~0.9
#: of the real token it was drawn from, so the clusters IVF and HNSW see are the real ones.
NOISE = 0.5
#: Shards whose document lengths make the synthetic length distribution.
LENGTH_SHARDS = 32


def size_view(
    target_root: str, distractor_root: str | None, size: int, target_docs: int
) -> EmbeddingsView:
    """The corpus of ``size`` documents: all of the target, then the first distractors."""
    parts = [ViewPart(target_root)]
    if size > target_docs:
        if distractor_root is None:
            raise ValueError(f"size {size} needs distractors but none were given")
        parts.append(ViewPart(distractor_root, size - target_docs))
    return EmbeddingsView(parts)


# -- synthetic corpora ----------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticTemplate:
    """What synthetic documents are drawn from.

    Attributes
    ----------
    vectors
        ``(n, dim)`` float16 real token vectors.
    lengths
        ``(m,)`` int32 real document lengths in tokens.
    encoder
        The encoder that made the real vectors (recorded in the synthetic index).
    source_sha256
        The checksum of the real corpus they were drawn from.
    """

    vectors: np.ndarray
    lengths: np.ndarray
    encoder: EncoderRecord
    source_sha256: str

    @property
    def tokens_per_doc(self) -> float:
        return float(self.lengths.mean()) if self.lengths.size else 0.0


def make_template(
    view: EmbeddingsView, seed: int, n_tokens: int = TEMPLATE_TOKENS
) -> SyntheticTemplate:
    """A seeded sample of ``view``'s token vectors, and the document lengths of up to
    :data:`LENGTH_SHARDS` shards spread evenly over it."""
    vectors = sample_training_vectors(view, n_tokens, seed).astype(np.float16)
    step = max(1, len(view.shards) // LENGTH_SHARDS)
    picked = view.shards[::step]
    lengths = np.concatenate([np.diff(view.read(info).offsets) for info in picked])
    lengths = lengths.astype(np.int32)
    return SyntheticTemplate(vectors, lengths, view.encoder, view.manifest_sha256)


def template_path(folder: str | Path) -> Path:
    return Path(folder) / "synthetic" / "template.npz"


def save_template(folder: str | Path, template: SyntheticTemplate) -> None:
    """``synthetic/template.npz``: the sample, the lengths, the encoder and the source."""
    buf = io.BytesIO()
    np.savez(
        buf,
        vectors=template.vectors,
        lengths=template.lengths,
        meta=np.array(
            json.dumps(
                {"encoder": template.encoder.to_dict(), "source_sha256": template.source_sha256}
            )
        ),
    )
    path = template_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())


def load_template(folder: str | Path, source_sha256: str) -> SyntheticTemplate | None:
    """The stored template when it was drawn from ``source_sha256``, else ``None``."""
    path = template_path(folder)
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            vectors, lengths = z["vectors"], z["lengths"]
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("%s is unreadable (%s): drawing a new template", path, exc)
        return None
    if meta.get("source_sha256") != source_sha256:
        return None
    encoder = EncoderRecord.from_dict(meta["encoder"], str(path))
    return SyntheticTemplate(vectors, lengths, encoder, source_sha256)


class SyntheticEmbeddings(ListedShards):
    """``n_docs`` synthetic documents drawn from ``template`` (an embeddings source).

    Shard ``s`` holds documents ``[s*shard_size, (s+1)*shard_size)``; its lengths and
    vectors come from generators seeded by ``(seed, s)``, so any shard can be generated
    alone, in any process, identically.
    """

    def __init__(self, template: SyntheticTemplate, n_docs: int, shard_size: int, seed: int):
        self.template = template
        self.seed = seed
        self.shard_size = shard_size
        shards: list[ShardInfo] = []
        self._lengths: list[np.ndarray] = []
        for s, first in enumerate(range(0, n_docs, shard_size)):
            n = min(shard_size, n_docs - first)
            lengths = np.random.default_rng([seed, s, 0]).choice(template.lengths, n)
            self._lengths.append(lengths.astype(np.int64))
            shards.append(ShardInfo(s, shard_name(s), first, n, int(lengths.sum()), 0, "synthetic"))
        self._shards = tuple(shards)
        identity = {
            "template": template.source_sha256,
            "n_docs": n_docs,
            "shard_size": shard_size,
            "seed": seed,
            "noise": NOISE,
        }
        self.manifest_sha256 = sha256_bytes(json.dumps(identity, sort_keys=True).encode())
        self.root = f"synthetic:{n_docs}docs:seed{seed}"

    @property
    def dim(self) -> int:
        return int(self.template.vectors.shape[1])

    @property
    def encoder(self) -> EncoderRecord:
        return self.template.encoder

    def read(self, info: ShardInfo) -> ShardData:
        lengths = self._lengths[info.shard_id]
        rng = np.random.default_rng([self.seed, info.shard_id, 1])
        base = self.template.vectors[rng.integers(0, len(self.template.vectors), info.n_tokens)]
        noise = rng.standard_normal((info.n_tokens, self.dim), dtype=np.float32)
        tokens = base.astype(np.float32) + noise * (NOISE / np.sqrt(self.dim))
        tokens /= np.linalg.norm(tokens, axis=1, keepdims=True) + 1e-12
        offsets = np.zeros(info.n_docs + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        first = info.first_doc
        return ShardData(
            doc_ids=[f"synthetic-{first + i}" for i in range(info.n_docs)],
            doc_index=np.arange(first, first + info.n_docs, dtype=np.int64),
            offsets=offsets,
            tokens=tokens.astype(np.float16),
        )


# -- exact references --------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The exact top ``k`` of every query at one size.

    Attributes
    ----------
    size_docs
        The size.
    source_sha256
        The view's checksum (a reference is reused only for the same documents).
    queries_sha256
        Checksum of the query ids and vectors it was computed for.
    ranked
        Query id -> ``[(doc_id, score), ...]``, best first.
    """

    size_docs: int
    source_sha256: str
    queries_sha256: str
    ranked: dict[str, list[tuple[str, float]]]

    def top(self, query_id: str, n: int) -> list[str]:
        return [d for d, _ in self.ranked.get(query_id, [])[:n]]


def queries_sha256(query_ids: Sequence[str], vectors: Sequence[np.ndarray]) -> str:
    """A checksum of encoded queries (ids and vectors)."""
    h = io.BytesIO()
    for qid, v in zip(query_ids, vectors, strict=True):
        h.write(qid.encode() + b"\0")
        h.write(np.ascontiguousarray(v, dtype=np.float32).tobytes())
    return sha256_bytes(h.getvalue())


def reference_path(folder: str | Path, size: int) -> Path:
    return Path(folder) / "exact" / f"size-{size}.parquet"


def save_reference(folder: str | Path, ref: Reference) -> Path:
    """``exact/size-<N>.parquet``: query_id, rank, doc_id, score; checksums in metadata."""
    qids, ranks, docs, scores = [], [], [], []
    for qid, ranked in ref.ranked.items():
        for r, (doc, score) in enumerate(ranked):
            qids.append(qid)
            ranks.append(r + 1)
            docs.append(doc)
            scores.append(score)
    table = pa.table(
        {"query_id": qids, "rank": ranks, "doc_id": docs, "score": pa.array(scores, pa.float32())},
        metadata={
            b"size_docs": str(ref.size_docs).encode(),
            b"source_sha256": ref.source_sha256.encode(),
            b"queries_sha256": ref.queries_sha256.encode(),
        },
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = reference_path(folder, ref.size_docs)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())
    return path


def load_reference(folder: str | Path, size: int) -> Reference | None:
    """The stored reference of ``size``, or ``None`` when absent or unreadable."""
    path = reference_path(folder, size)
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        logger.warning("%s is unreadable (%s): recomputing it", path, exc)
        return None
    meta = table.schema.metadata or {}
    ranked: dict[str, list[tuple[str, float]]] = {}
    for qid, doc, score in zip(
        table["query_id"].to_pylist(),
        table["doc_id"].to_pylist(),
        table["score"].to_pylist(),
        strict=True,
    ):
        ranked.setdefault(qid, []).append((doc, float(score)))
    return Reference(
        size_docs=int(meta.get(b"size_docs", b"0")),
        source_sha256=meta.get(b"source_sha256", b"").decode(),
        queries_sha256=meta.get(b"queries_sha256", b"").decode(),
        ranked=ranked,
    )


def compute_references(
    largest: EmbeddingsView,
    views: dict[int, EmbeddingsView],
    query_ids: Sequence[str],
    vectors: Sequence[np.ndarray],
    *,
    k: int,
    memory_budget_bytes: int,
    progress: Callable[[int], None] | None = None,
) -> list[Reference]:
    """The exact references of ``views`` (size -> view, each a prefix of ``largest``) in
    one exhaustive pass over ``largest``'s first ``max(views)`` documents."""
    sizes = sorted(views)
    results = exact_search_prefixes(
        largest,
        vectors,
        [views[s].n_docs for s in sizes],
        k=k,
        memory_budget_bytes=memory_budget_bytes,
        progress=progress,
    )
    q_sha = queries_sha256(query_ids, vectors)
    return [
        Reference(size, views[size].manifest_sha256, q_sha, _ranked(query_ids, result))
        for size, result in zip(sizes, results, strict=True)
    ]


def _ranked(query_ids: Sequence[str], result: SearchResult) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for qid, idx, scores in zip(query_ids, result.doc_index, result.scores, strict=True):
        out[qid] = [
            (result.doc_ids[int(d)], float(s)) for d, s in zip(idx, scores, strict=True) if d >= 0
        ]
    return out


# -- what a worker opens -------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """How a worker process opens the corpus of one size (small, picklable).

    A real size names the two encode outputs and the document counts; a synthetic size
    carries its template (a few MB) and its generator settings.
    """

    size_docs: int
    target_root: str
    distractor_root: str | None
    target_docs: int
    template: SyntheticTemplate | None = None
    shard_size: int = 1000
    seed: int = 0

    @property
    def synthetic(self) -> bool:
        return self.template is not None

    def open(self) -> EmbeddingsView | SyntheticEmbeddings:
        if self.template is not None:
            return SyntheticEmbeddings(self.template, self.size_docs, self.shard_size, self.seed)
        return size_view(self.target_root, self.distractor_root, self.size_docs, self.target_docs)


@dataclass(frozen=True)
class SizeInfo:
    """A size as the planner sees it: how to open it, and what it holds."""

    source: SourceSpec
    n_tokens: int
    shard_tokens: int
    source_sha256: str

    @classmethod
    def of(cls, source: SourceSpec) -> SizeInfo:
        opened = source.open()
        shard_tokens = max((s.n_tokens for s in opened.shards), default=0)
        return cls(source, opened.n_tokens, shard_tokens, opened.manifest_sha256)
