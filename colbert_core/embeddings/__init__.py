"""The encode output (``ROOT``): its manifest, its shards, and the job that writes them.

* :mod:`.config` - :class:`EncodeConfig`, what defines an output;
* :mod:`.manifest` - :class:`Manifest`, the one owner of ``manifest.json``;
* :mod:`.shards` - the Parquet shard format;
* :mod:`.reader` - :class:`Embeddings`, verified reading of a complete output;
* :mod:`.view` - :class:`EmbeddingsView`, several outputs read as one, cut at a document
  count (a corpus grown by prefixes);
* :mod:`.encode` - the encode engine (shared by the in-process runner and the Ray job).
"""

from .config import DEFAULT_SHARD_SIZE, EncodeConfig
from .encode import (
    EncodeSummary,
    ManifestBook,
    ShardTask,
    corpus_shards,
    encode_shard,
    iter_shards,
    open_job_corpus,
    prepare_output,
    run_encode,
)
from .manifest import MANIFEST, REJECTS, SHARD_DIR, Manifest, ManifestError, ShardInfo, shard_name
from .reader import Embeddings, EmbeddingSource
from .shards import ShardData, ShardError, build_shard, read_shard, write_shard
from .view import EmbeddingsView, ViewPart

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "MANIFEST",
    "REJECTS",
    "SHARD_DIR",
    "EmbeddingSource",
    "Embeddings",
    "EmbeddingsView",
    "EncodeConfig",
    "EncodeSummary",
    "Manifest",
    "ManifestBook",
    "ManifestError",
    "ShardData",
    "ShardError",
    "ShardInfo",
    "ShardTask",
    "ViewPart",
    "build_shard",
    "corpus_shards",
    "encode_shard",
    "iter_shards",
    "open_job_corpus",
    "prepare_output",
    "read_shard",
    "run_encode",
    "shard_name",
    "write_shard",
]
