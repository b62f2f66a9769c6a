"""FAISS indices over token embeddings, with token -> document mapping and a token store."""

from .build import INDEX_FILE, META, build_index, shard_groups
from .loader import IndexLoadError, LoadedIndex, load_index
from .spec import IndexSpec, IndexSpecError, resolve_spec
from .tokenstore import token_to_doc

__all__ = [
    "INDEX_FILE",
    "META",
    "IndexLoadError",
    "IndexSpec",
    "IndexSpecError",
    "LoadedIndex",
    "build_index",
    "load_index",
    "resolve_spec",
    "shard_groups",
    "token_to_doc",
]
