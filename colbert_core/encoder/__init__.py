"""ColBERT encoders for Stanford, PyLate and plain Hugging Face checkpoints."""

from .checkpoints import MODEL_ALIASES, detect_format, resolve_model_path
from .encoder import ColBERTEncoder, load_encoder
from .errors import CheckpointError
from .record import EncoderRecord
from .settings import EncoderSettings

__all__ = [
    "MODEL_ALIASES",
    "CheckpointError",
    "ColBERTEncoder",
    "EncoderRecord",
    "EncoderSettings",
    "detect_format",
    "load_encoder",
    "resolve_model_path",
]
