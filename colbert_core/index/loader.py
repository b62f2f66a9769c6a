"""Load an index folder, validating everything before FAISS reads a byte.

A missing, truncated or corrupt file, or a dimension or count mismatch, is an
:class:`IndexLoadError` naming the file and the fix - never a wrong answer, a hang or a
segfault (FAISS is only handed files whose size and sha256 match ``meta.json``).

The FAISS index is read into memory (``faiss.read_index`` without ``IO_FLAG_MMAP``: in FAISS
1.15 memory-mapping a merged on-disk index crashed at search time); the float16 token
store is memory-mapped with numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from ..encoder import EncoderRecord
from ..storage import (
    Expected,
    FetchReport,
    S3Storage,
    default_cache_dir,
    entry_folder,
    fetch_verified,
    is_s3,
    local_disk_errors,
    locked,
    open_storage,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
)
from ..tokenstore import (
    DOC_IDS,
    OFFSETS,
    TOKENS,
    DocMapping,
    MappingError,
    open_float16,
    read_doc_ids,
    read_offsets,
)
from ..tokenstore.residual import ResidualFormatError
from ..tokenstore.store import STORE_KINDS, TokenStore, open_compressed, store_files, store_kind
from .meta import INDEX_FILE, META, FileEntry, IndexLoadError, IndexMeta

logger = logging.getLogger(__name__)


# Small files whose corruption can exhaust memory while parsing; hashing them costs
# milliseconds even for millions of documents.
_ALWAYS_VERIFIED = frozenset({OFFSETS, DOC_IDS})


@dataclass
class LoadedIndex:
    """A validated index: FAISS index, token store and token -> document mapping.

    ``store`` is what the exact stage reads: the float16 ``(n_tokens, dim)`` matrix or a
    :class:`~colbert_core.tokenstore.residual.ResidualStore` (``meta.store`` says which).
    """

    folder: Path
    meta: IndexMeta
    index: faiss.Index
    store: TokenStore
    mapping: DocMapping
    #: For an ``s3://`` index: what this process downloaded into the node cache and what
    #: it reused (another process on the node had fetched it); None for a local folder.
    fetched: FetchReport | None = None

    @property
    def dim(self) -> int:
        return self.meta.dim

    @property
    def store_kind(self) -> str:
        return store_kind(self.store)

    @property
    def n_tokens(self) -> int:
        return self.meta.n_tokens

    @property
    def n_docs(self) -> int:
        return self.meta.n_docs

    @property
    def doc_offsets(self) -> np.ndarray:
        return self.mapping.offsets

    @property
    def doc_ids(self) -> list[str]:
        return self.mapping.doc_ids

    @property
    def model_fingerprint(self) -> str:
        return self.meta.model_fingerprint

    @property
    def encoder(self) -> EncoderRecord:
        return self.meta.encoder


def read_index_meta(path: str | Path) -> IndexMeta:
    """The ``meta.json`` of an index folder or ``s3://`` prefix, without loading the index.

    Raises
    ------
    IndexLoadError
        When ``meta.json`` is missing (not a complete index) or invalid.
    """
    return read_index_meta_with_sha256(path)[0]


def read_index_meta_with_sha256(path: str | Path) -> tuple[IndexMeta, str]:
    """:func:`read_index_meta` and the sha256 of ``meta.json`` (what a run records as
    its source: a rebuilt index makes every run of it stale)."""
    storage = open_storage(path)
    try:
        raw = storage.get(META)
    except FileNotFoundError as exc:
        raise IndexLoadError(
            f"{storage.describe(META)} not found: {storage.uri} is not a complete index "
            "(run `colbert-batch index`)"
        ) from exc
    return IndexMeta.from_json(raw, storage.describe(META)), sha256_bytes(raw)


def index_exists(path: str | Path) -> bool:
    """Whether ``path`` holds a complete index (its ``meta.json``)."""
    return open_storage(path).size(META) is not None


def read_index_mapping(path: str | Path, meta: IndexMeta | None = None) -> DocMapping:
    """The documents of an index (offsets and ids), validated, without the FAISS index or
    the token store. For an ``s3://`` index only the two mapping files are fetched, into
    the node cache's entry for the index (a later :func:`load_index` there reuses them):
    a search driver that only checks run ids does not download gigabytes it never reads.
    """
    meta = meta or read_index_meta(path)
    if not is_s3(str(path)):
        return _read_mapping(Path(path), meta, verify=True)
    storage = S3Storage(str(path))
    with _cache_entry(storage, None) as folder:
        expected = {}
        for name in (OFFSETS, DOC_IDS):
            entry = _entry(meta, folder, name)
            expected[name] = Expected(entry.bytes, entry.sha256)
        fetch_verified(folder, expected, storage.download, storage.describe)
        return _parse_mapping(folder, meta)


def load_index(
    path: str | Path, *, verify: bool = True, cache_dir: Path | None = None
) -> LoadedIndex:
    """Open and validate an index folder (or ``s3://`` prefix, downloaded to a cache).

    Parameters
    ----------
    path
        The folder ``colbert-batch index --out`` wrote, or its ``s3://`` copy: downloaded
        once per node into ``cache_dir`` (default :func:`default_cache_dir`) and shared by
        every process on the node (see :mod:`colbert_core.storage.cache`).
    verify
        Check the sha256 of the FAISS index and the token store against ``meta.json``.
        Sizes are always checked, and so are the checksums of the two small mapping
        files (offsets, document ids): a damaged Parquet footer can make pyarrow allocate
        hundreds of GB, which no exception handler can catch once the kernel kills us.

    Whether the index's model matches a query encoder is checked where the encoder is
    loaded (:func:`colbert_core.search.queries.load_query_encoder`).
    """
    if not is_s3(str(path)):
        return _open_folder(Path(path), None, verify)
    storage = S3Storage(str(path))
    with _cache_entry(storage, cache_dir) as folder:
        # Opened under the entry's lock: another process on this node fetching a rebuilt
        # index at the same URI replaces files (by rename) only after we hold our copies
        # (read, or memory-mapped by inode), so meta.json and every file are one version.
        return _open_folder(folder, _download(storage, folder), verify)


@contextmanager
def _cache_entry(storage: S3Storage, cache_dir: Path | None) -> Iterator[Path]:
    """The node-cache folder of an S3 index, held under its lock (one entry per URI)."""
    folder = entry_folder(cache_dir or default_cache_dir(), "indexes", storage.uri)
    with local_disk_errors(storage.uri, folder), locked(folder):
        yield folder


def _open_folder(folder: Path, fetched: FetchReport | None, verify: bool) -> LoadedIndex:
    """:func:`load_index` of a local folder; ``fetched``: what the cache fetch just did."""
    meta = read_index_meta(folder)
    # Files the cache fetch just hashed against this meta.json are not hashed again.
    hashed = set(fetched.downloaded + fetched.reused) if fetched is not None else set()
    for name in (INDEX_FILE, *_store_files(meta, folder), OFFSETS, DOC_IDS):
        check = (verify or name in _ALWAYS_VERIFIED) and name not in hashed
        _check_file(folder / name, _entry(meta, folder, name), check)
    try:
        index = faiss.read_index(str(folder / INDEX_FILE))
    except (RuntimeError, MemoryError) as exc:
        raise IndexLoadError(f"{folder / INDEX_FILE}: FAISS cannot read it: {exc}") from exc
    if index.d != meta.dim or index.ntotal != meta.n_tokens:
        raise IndexLoadError(
            f"{folder / INDEX_FILE}: holds {index.ntotal} vectors of dim {index.d}, "
            f"meta.json says {meta.n_tokens} of dim {meta.dim}; rebuild the index"
        )
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexLoadError(
            f"{folder / INDEX_FILE}: metric is not inner product (MaxSim needs it; the "
            "index was not written by `colbert-batch index`): rebuild the index"
        )
    mapping = _parse_mapping(folder, meta)
    return LoadedIndex(folder, meta, index, _open_store(folder, meta, index), mapping, fetched)


def _store_files(meta: IndexMeta, folder: Path) -> tuple[str, ...]:
    kind = meta.store.get("kind")
    if kind not in STORE_KINDS:
        raise IndexLoadError(
            f"{folder / META}: unknown token store {kind!r} (written by a newer "
            "colbert-batch?); upgrade or rebuild the index"
        )
    return store_files(meta.store)


def _open_store(folder: Path, meta: IndexMeta, index: faiss.Index) -> TokenStore:
    """The token store (its files' sizes and hashes already checked)."""
    kind = meta.store.get("kind")
    if kind != "float16":
        try:
            return open_compressed(folder, meta.store, meta.n_tokens, meta.dim, index)
        except ResidualFormatError as exc:
            raise IndexLoadError(f"{folder}: {kind} token store: {exc}; rebuild the index") from exc
    try:
        return open_float16(folder / TOKENS, meta.n_tokens, meta.dim)
    except ValueError as exc:
        raise IndexLoadError(f"{folder / TOKENS}: {exc}; rebuild the index") from exc


def _entry(meta: IndexMeta, folder: Path, name: str) -> FileEntry:
    entry = meta.files.get(name)
    if entry is None:
        raise IndexLoadError(f"{folder / META}: no entry for {name}; rebuild the index")
    return entry


def _read_mapping(folder: Path, meta: IndexMeta, *, verify: bool) -> DocMapping:
    for name in (OFFSETS, DOC_IDS):
        _check_file(folder / name, _entry(meta, folder, name), verify or name in _ALWAYS_VERIFIED)
    return _parse_mapping(folder, meta)


def _parse_mapping(folder: Path, meta: IndexMeta) -> DocMapping:
    """The mapping files (already size- and sha256-checked), validated against ``meta``."""
    try:
        offsets = read_offsets((folder / OFFSETS).read_bytes(), meta.n_docs, meta.n_tokens)
    except MappingError as exc:
        raise IndexLoadError(f"{folder / OFFSETS}: {exc}; rebuild the index") from exc
    try:
        doc_ids = read_doc_ids((folder / DOC_IDS).read_bytes(), meta.n_docs)
    except MappingError as exc:
        raise IndexLoadError(f"{folder / DOC_IDS}: {exc}; rebuild the index") from exc
    return DocMapping(offsets, doc_ids)


def _check_file(path: Path, entry: FileEntry, verify: bool) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise IndexLoadError(f"missing index file {path}; rebuild the index") from exc
    if size != entry.bytes:
        raise IndexLoadError(
            f"{path}: {size} bytes, meta.json says {entry.bytes} (truncated or replaced); "
            "rebuild the index"
        )
    if verify and sha256_file(path) != entry.sha256:
        raise IndexLoadError(f"{path}: sha256 differs from meta.json (corrupt); rebuild the index")


def _download(storage: S3Storage, folder: Path) -> FetchReport:
    """Copy an S3 index into its node-cache entry ``folder`` (the caller holds the
    entry's :func:`locked`), once per node, and return what was done.

    Every file is checked against the sizes and sha256 of the index's own ``meta.json``;
    the cached ``meta.json`` is replaced last.
    """
    try:
        raw_meta = storage.get(META)
    except FileNotFoundError as exc:
        raise IndexLoadError(f"{storage.describe(META)} not found: not a complete index") from exc
    meta = IndexMeta.from_json(raw_meta, storage.describe(META))
    expected = {name: Expected(e.bytes, e.sha256) for name, e in meta.files.items()}
    report = fetch_verified(folder, expected, storage.download, storage.describe)
    write_bytes_atomic(folder / META, raw_meta)
    return report
