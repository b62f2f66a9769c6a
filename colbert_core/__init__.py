"""colbert-batch core library: encoders, storage, MaxSim scoring and evaluation.

This package never imports Ray; the Ray jobs live in :mod:`jobs`.
"""

from .encoder import CheckpointError, ColBERTEncoder, EncoderSettings, load_encoder

__all__ = ["CheckpointError", "ColBERTEncoder", "EncoderSettings", "load_encoder"]
__version__ = "0.1.0"
