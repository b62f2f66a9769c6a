"""The index folder (``IDX``): a FAISS index over every token vector, the token store and
the token -> document mapping, described by ``meta.json``.

* :mod:`.spec` - :class:`IndexConfig` (what a user asks for) and the sizing rules that
  resolve it into an :class:`IndexSpec`;
* :mod:`.meta` - :class:`IndexMeta`, the one owner of ``meta.json``;
* :mod:`.build` - streaming (and parallel) build;
* :mod:`.loader` - validated loading.
"""

from .build import build_index, shard_groups
from .loader import (
    LoadedIndex,
    index_exists,
    load_index,
    read_index_mapping,
    read_index_meta,
    read_index_meta_with_sha256,
)
from .meta import INDEX_FILE, META, FileEntry, IndexLoadError, IndexMeta
from .spec import IndexConfig, IndexSpec, IndexSpecError, resolve_spec

__all__ = [
    "INDEX_FILE",
    "META",
    "FileEntry",
    "IndexConfig",
    "IndexLoadError",
    "IndexMeta",
    "IndexSpec",
    "IndexSpecError",
    "LoadedIndex",
    "build_index",
    "index_exists",
    "load_index",
    "read_index_mapping",
    "read_index_meta",
    "read_index_meta_with_sha256",
    "resolve_spec",
    "shard_groups",
]
