"""What an artifact records about the encoder that made its vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .settings import EncoderSettings


@dataclass(frozen=True)
class EncoderRecord:
    """The encoder behind an artifact's vectors: enough to load the same query encoder.

    Attributes
    ----------
    model_path
        The checkpoint directory (or alias) as the encoding job resolved it.
    fingerprint
        Content hash of the model files and settings (:func:`~.checkpoints.fingerprint`).
    settings
        How text was turned into vectors.
    device, dtype
        Where and in which precision the documents were encoded.
    """

    model_path: str
    fingerprint: str
    settings: EncoderSettings
    device: str = "cpu"
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "fingerprint": self.fingerprint,
            "settings": self.settings.to_dict(),
            "device": self.device,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> EncoderRecord:
        """Parse the ``encoder`` entry of an artifact; ``where`` names it in errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: 'encoder' must be an object")
        try:
            return cls(
                model_path=str(d["model_path"]),
                fingerprint=str(d["fingerprint"]),
                settings=EncoderSettings.from_dict(d["settings"]),
                device=str(d.get("device", "cpu")),
                dtype=str(d.get("dtype", "float32")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: invalid 'encoder' entry ({exc}); rewrite it") from exc
