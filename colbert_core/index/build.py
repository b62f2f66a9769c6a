"""Train and fill a FAISS index from token-embedding shards, streaming shard by shard.

Peak memory is the index plus the working set of one shard (its bytes, its decoded tokens,
FAISS's buffers for one add chunk: about three times the shard) plus the training sample
while training, whatever the number of shards: the embeddings are never loaded at once.
IVF indices can also be filled in parallel: copies of the trained, empty index each take
a group of shards (with their global token ids), and the partial indices are merged with FAISS's own
``merge_from`` in shard order - which gives exactly the inverted lists a one-process build
gives.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..embeddings import Embeddings, EmbeddingSource, ShardInfo
from ..embeddings.manifest import now_iso
from ..storage import file_entry, is_s3, open_storage, replace_durably, write_bytes_atomic
from ..tokenstore import TOKENS, DocMappingWriter, Float16StoreWriter, open_float16
from ..tokenstore.residual import write_residual_store
from ..tokenstore.store import StoreSpec, codec_trainer, store_files
from .meta import INDEX_FILE, META, FileEntry, IndexMeta
from .spec import IndexSpec, IndexSpecError

logger = logging.getLogger(__name__)

#: Starts filling copies of a trained index with groups of shards and returns a function
#: that yields the serialised partial indices in group order (so the driver writes the
#: token store meanwhile, and merges one partial at a time). The Ray job supplies one;
#: ``None`` adds in this process.
ParallelAdd = Callable[[bytes, list[list[ShardInfo]]], Callable[[], Iterator[bytes]]]


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM).

    Not ``getrusage``: Linux carries ``ru_maxrss`` over ``fork`` + ``exec``, so a build
    started from a large parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def create_index(spec: IndexSpec) -> faiss.Index:
    index = faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.type == "ivfpq":
        # index_factory turns on polysemous training for PQ codes: a simulated-annealing
        # reordering of each sub-quantizer's centroids that only matters for Hamming
        # filtering (polysemous_ht), which search never uses. It cost ~2 s per
        # sub-quantizer whatever the sample size and leaves every distance unchanged.
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
    if spec.ef_construction is not None:
        hnsw = _hnsw(index)
        if hnsw is not None:
            hnsw.efConstruction = spec.ef_construction
    return index


def _hnsw(index: faiss.Index) -> Any:
    try:
        return faiss.downcast_index(index).hnsw
    except AttributeError:
        return None


def sample_training_vectors(store: EmbeddingSource, n: int, seed: int) -> np.ndarray:
    """``n`` token vectors drawn uniformly without replacement over all shards (seeded).

    Reads each shard at most once and keeps only the picked rows: memory is the sample plus
    one shard.
    """
    n = min(n, store.n_tokens)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(store.n_tokens, size=n, replace=False))
    out = np.empty((n, store.dim), dtype=np.float32)
    pos = base = 0
    for info in store.shards:
        lo, hi = np.searchsorted(picks, [base, base + info.n_tokens])
        if hi > lo:
            shard = store.read(info)
            out[pos : pos + hi - lo] = shard.tokens[picks[lo:hi] - base]
            pos += hi - lo
        base += info.n_tokens
    return out


#: Rows converted to float32 at a time while adding. FAISS's IVF-PQ add keeps a few
#: float32 copies of its input (residuals, assignments); 16k rows (25 MB at d=384) keeps
#: that well under one shard while each call is still large enough for BLAS.
ADD_CHUNK = 16_384


def add_float16(index: faiss.Index, tokens: np.ndarray, *, first_id: int | None = None) -> None:
    """Add float16 rows in float32 chunks; with ``first_id``, as explicit sequential ids."""
    for lo in range(0, tokens.shape[0], ADD_CHUNK):
        chunk = np.ascontiguousarray(tokens[lo : lo + ADD_CHUNK], dtype=np.float32)
        if first_id is None:
            index.add(chunk)
        else:
            ids = np.arange(first_id + lo, first_id + lo + chunk.shape[0], dtype=np.int64)
            index.add_with_ids(chunk, ids)


def train_index(index: faiss.Index, sample: np.ndarray) -> bool:
    """Train ``index`` on ``sample``; k-means runs on the GPU when FAISS has one.

    Returns whether a GPU was used.
    """
    if index.is_trained:
        return False
    ivf = faiss.try_extract_index_ivf(index)
    on_gpu = False
    if ivf is not None and faiss.get_num_gpus() > 0 and hasattr(faiss, "index_cpu_to_all_gpus"):
        # The coarse k-means is the expensive part; PQ training stays on the CPU.
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
        on_gpu = True
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return on_gpu


def add_shards_to_copy(
    trained: bytes, root: str, infos: list[ShardInfo], first_token: int
) -> bytes:
    """Add a group of shards (global ids from ``first_token``) to a copy of ``trained``.

    The unit of work of a parallel build; returns the serialised partial index.
    """
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    store = Embeddings(root)
    next_id = first_token
    for info in infos:
        shard = store.read(info)
        add_float16(index, shard.tokens, first_id=next_id)
        next_id += shard.n_tokens
        del shard
    return faiss.serialize_index(index).tobytes()


def merge_partials(index: faiss.Index, partials: Iterable[bytes]) -> None:
    """Append partial IVF indices to ``index`` in order (FAISS ``merge_from``)."""
    target = faiss.extract_index_ivf(index)
    for raw in partials:
        part = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8))
        target.merge_from(faiss.extract_index_ivf(part), 0)
    index.ntotal = target.ntotal


def shard_groups(infos: list[ShardInfo], n_groups: int) -> list[list[ShardInfo]]:
    """Split shards into ``min(n_groups, len(infos))`` consecutive, non-empty groups of
    similar token counts.

    A shard starts the next group when its middle lies past the current group's share of
    the tokens, or when every remaining shard is needed to give each group one.

    >>> from colbert_core.embeddings import ShardInfo
    >>> sizes = lambda gs: [[i.n_tokens for i in g] for g in gs]
    >>> sizes(shard_groups([ShardInfo(i, "", 0, 1, n, 0, "") for i, n in
    ...                     enumerate([422, 779])], 2))
    [[422], [779]]
    >>> sizes(shard_groups([ShardInfo(i, "", 0, 1, 10, 0, "") for i in range(6)], 3))
    [[10, 10], [10, 10], [10, 10]]
    """
    n_groups = max(1, min(n_groups, len(infos)))
    total = sum(i.n_tokens for i in infos)
    groups: list[list[ShardInfo]] = [[]]
    acc = 0
    for k, info in enumerate(infos):
        to_open = n_groups - len(groups)
        if (
            groups[-1]
            and to_open > 0
            and (
                len(infos) - k <= to_open
                or acc + info.n_tokens / 2 > total * len(groups) / n_groups
            )
        ):
            groups.append([])
        groups[-1].append(info)
        acc += info.n_tokens
    return groups


def build_index(
    embeddings: str | EmbeddingSource,
    out: str,
    spec: IndexSpec,
    *,
    parallel_add: ParallelAdd | None = None,
    n_groups: int = 1,
    progress: Callable[[str, int], None] | None = None,
    build: dict[str, Any] | None = None,
    token_store: StoreSpec | None = None,
) -> IndexMeta:
    """Build the index for ``embeddings`` into ``out`` (a folder or ``s3://``).

    ``embeddings`` is an encode output's location, or an opened one (an
    :class:`EmbeddingsView`: a corpus grown by prefixes, as a scaling study builds).

    ``progress(stage, n)`` is called with ``("train", 0)``, ``("add", tokens)`` and, for
    a residual token store, ``("compress", 0)``; ``build`` (the options the user asked
    for) is recorded in ``meta.json``; ``token_store`` defaults to float16.
    """
    token_store = token_store or StoreSpec()
    store = Embeddings(embeddings) if isinstance(embeddings, str) else embeddings
    if store.dim != spec.dim:
        raise IndexSpecError(f"index dim {spec.dim} differs from the embeddings' dim {store.dim}")
    token_store.check(store.dim, store.n_tokens)
    if is_s3(out):
        with tempfile.TemporaryDirectory(prefix="colbert-index-") as tmp:
            meta = _build_local(
                store, Path(tmp), spec, parallel_add, n_groups, progress, build, token_store
            )
            target = open_storage(out)
            target.delete(META)  # incomplete until the new meta.json lands
            # meta.json last: an index is complete exactly when its meta.json exists.
            for name in meta.files:
                target.put(name, (Path(tmp) / name).read_bytes())
            target.put(META, meta.to_json())
            return meta
    return _build_local(
        store, Path(out), spec, parallel_add, n_groups, progress, build, token_store
    )


def _train(store: EmbeddingSource, spec: IndexSpec, index: faiss.Index, progress: Any) -> bool:
    """Train ``index`` on a seeded sample when it needs training; returns whether on GPU."""
    if index.is_trained:
        return False
    sample = sample_training_vectors(store, spec.train_sample, spec.seed)
    logger.info("training %s on %d sampled token vectors", spec.factory, len(sample))
    if progress:
        progress("train", 0)
    return train_index(index, sample)


def _fill(
    store: EmbeddingSource,
    out: Path,
    index: faiss.Index,
    parallel_add: ParallelAdd | None,
    n_groups: int,
    progress: Callable[[str, int], None] | None,
) -> tuple[dict[str, FileEntry], int]:
    """Add every shard to ``index`` and write the token store and mapping files.

    Returns the written files' entries and the number of parallel groups used.
    """
    tokens = Float16StoreWriter(out, store.dim)
    mapping = DocMappingWriter()
    try:
        use_parallel = parallel_add is not None and n_groups > 1
        n_parallel = 1
        if use_parallel:
            groups = shard_groups(list(store.shards), n_groups)
            n_parallel = len(groups)
            logger.info("adding %d shards in %d parallel groups", len(store.shards), len(groups))
            collect = parallel_add(faiss.serialize_index(index).tobytes(), groups)
        for info in store.shards:
            shard = store.read(info)
            if not use_parallel:
                add_float16(index, shard.tokens)
            tokens.append(shard.tokens)
            mapping.append(shard.doc_ids, shard.offsets)
            if progress:
                progress("add", shard.n_tokens)
            del shard  # before the next read: peak is one shard, not two
        if use_parallel:
            merge_partials(index, collect())
        token_entry = tokens.close()
    except BaseException:
        tokens.abort()
        raise
    if index.ntotal != store.n_tokens or tokens.n_tokens != store.n_tokens:
        raise RuntimeError(
            f"index holds {index.ntotal} vectors and the token store {tokens.n_tokens}, but "
            f"the embeddings have {store.n_tokens} tokens"
        )
    files = {TOKENS: FileEntry(int(token_entry["bytes"]), str(token_entry["sha256"]))}
    for name, raw in mapping.close().items():
        write_bytes_atomic(out / name, raw)
        files[name] = FileEntry(**file_entry(out / name))  # type: ignore[arg-type]
    return files, n_parallel


def _compress(
    out: Path,
    index: faiss.Index,
    store: EmbeddingSource,
    token_store: StoreSpec,
    seed: int,
    files: dict[str, FileEntry],
) -> dict[str, Any]:
    """Replace the float16 store just written by a residual one; updates ``files``.

    The float16 file is the source (the shards are not read twice, and an S3 source is
    not downloaded twice); it is deleted once the residual files are in place.
    """
    tokens = open_float16(out / TOKENS, store.n_tokens, store.dim)
    train = codec_trainer(token_store, seed)
    entries, params = write_residual_store(out, tokens, index, train, seed)
    del tokens
    (out / TOKENS).unlink()
    del files[TOKENS]
    for name, entry in entries.items():
        files[name] = FileEntry(int(entry["bytes"]), str(entry["sha256"]))
    logger.info(
        "token store: %s, %d bytes/token",
        token_store,
        sum(e["bytes"] for e in entries.values()) // max(store.n_tokens, 1),
    )
    return params


def _build_local(
    store: EmbeddingSource,
    out: Path,
    spec: IndexSpec,
    parallel_add: ParallelAdd | None,
    n_groups: int,
    progress: Callable[[str, int], None] | None,
    build: dict[str, Any] | None,
    token_store: StoreSpec,
) -> IndexMeta:
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # incomplete until the new meta.json lands
    index = create_index(spec)
    t0 = time.perf_counter()
    gpu = _train(store, spec, index, progress)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    files, n_parallel = _fill(
        store, out, index, parallel_add if spec.is_ivf else None, n_groups, progress
    )
    add_s = time.perf_counter() - t0
    tmp_index = out / f".{INDEX_FILE}.tmp"
    faiss.write_index(index, str(tmp_index))
    replace_durably(tmp_index, out / INDEX_FILE)
    files = {INDEX_FILE: FileEntry(**file_entry(out / INDEX_FILE)), **files}  # type: ignore[arg-type]
    store_meta: dict[str, Any] = {"kind": "float16"}
    if token_store.kind != "float16":
        if progress:
            progress("compress", 0)
        t0 = time.perf_counter()
        store_meta = _compress(out, index, store, token_store, spec.seed, files)
        store_meta["encode_s"] = round(time.perf_counter() - t0, 3)
    store_bytes = sum(files[name].bytes for name in store_files(store_meta))
    n = max(store.n_tokens, 1)
    meta = IndexMeta(
        type=spec.type,
        factory=spec.factory,
        params=spec.to_dict(),
        build=dict(build or {}),
        store=store_meta,
        dim=store.dim,
        n_tokens=store.n_tokens,
        n_docs=store.n_docs,
        bytes_per_token={
            "index": round(files[INDEX_FILE].bytes / n, 3),
            "token_store": round(store_bytes / n, 3),
            "total": round(sum(f.bytes for f in files.values()) / n, 3),
        },
        train_s=round(train_s, 3),
        add_s=round(add_s, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
        gpu_training=gpu,
        parallel_groups=n_parallel,
        faiss_version=faiss.__version__,
        source_embeddings=str(store.root),
        source_manifest_sha256=store.manifest_sha256,
        encoder=store.encoder,
        files=files,
        created=now_iso(),
    )
    write_bytes_atomic(out / META, meta.to_json())
    logger.info(
        "built %s: %d tokens, %.1f bytes/token (index), train %.1fs, add %.1fs",
        spec.factory,
        store.n_tokens,
        meta.bytes_per_token["index"],
        train_s,
        add_s,
    )
    return meta
