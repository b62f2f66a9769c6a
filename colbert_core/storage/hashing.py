"""SHA-256 of bytes and of files: the one checksum every artifact records and verifies."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 22


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``.

    >>> sha256_bytes(b"abc")[:16]
    'ba7816bf8f01cfea'
    """
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (memory stays flat for any size)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: str | Path) -> dict[str, int | str]:
    """``{"bytes": size, "sha256": hex}`` of a file, as artifact metadata records it."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}
