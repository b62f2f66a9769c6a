"""colbert-batch core library: data, encoder, embeddings, token store, index, search,
evaluation.

This package never imports Ray; the Ray jobs live in :mod:`jobs`. Every error a user can
fix derives from :class:`ColbertBatchError`.
"""

from .encoder import CheckpointError, ColBERTEncoder, EncoderSettings, load_encoder
from .errors import ColbertBatchError, ConfigError

__all__ = [
    "CheckpointError",
    "ColBERTEncoder",
    "ColbertBatchError",
    "ConfigError",
    "EncoderSettings",
    "load_encoder",
]
__version__ = "0.1.0"
