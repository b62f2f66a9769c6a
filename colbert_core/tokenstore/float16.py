"""The float16 token store: every token vector, contiguous, memory-mapped for exact MaxSim.

File::

    tokens.f16        (n_tokens, dim) float16, little-endian, row-major
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..storage.atomic import replace_durably

TOKENS = "tokens.f16"


class Float16StoreWriter:
    """Append shards' float16 tokens to ``tokens.f16`` (through a temp file) and hash them."""

    def __init__(self, folder: Path, dim: int):
        self.folder = folder
        self.dim = dim
        folder.mkdir(parents=True, exist_ok=True)
        self._tmp = folder / f".{TOKENS}.tmp"
        self._fh = self._tmp.open("wb")
        self.n_tokens = 0
        self._sha256 = hashlib.sha256()

    def append(self, tokens: np.ndarray) -> None:
        if tokens.dtype != np.float16 or tokens.ndim != 2 or tokens.shape[1] != self.dim:
            raise ValueError(
                f"expected (n, {self.dim}) float16 tokens, got {tokens.dtype} {tokens.shape}"
            )
        raw = np.ascontiguousarray(tokens, dtype="<f2").tobytes()
        self._fh.write(raw)
        self._sha256.update(raw)
        self.n_tokens += tokens.shape[0]

    def close(self) -> dict[str, int | str]:
        """Move the file into place; returns its ``{"bytes", "sha256"}`` entry."""
        self._fh.close()
        replace_durably(self._tmp, self.folder / TOKENS)
        return {"bytes": (self.folder / TOKENS).stat().st_size, "sha256": self._sha256.hexdigest()}

    def abort(self) -> None:
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def open_float16(path: Path, n_tokens: int, dim: int) -> np.ndarray:
    """Memory-map the token store read-only as ``(n_tokens, dim)`` float16.

    Raises
    ------
    ValueError
        When the file's size is not ``n_tokens x dim x 2`` bytes.
    """
    size = path.stat().st_size
    if size != n_tokens * dim * 2:
        raise ValueError(f"size is {size} bytes, not {n_tokens} x {dim} x 2")
    if n_tokens == 0:
        return np.zeros((0, dim), np.float16)
    return np.memmap(path, dtype="<f2", mode="r", shape=(n_tokens, dim))
