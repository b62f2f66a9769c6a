"""Low-level file helpers for the data package (atomic writes, line reading)."""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so readers never see a partial file.

    Parameters
    ----------
    path : Path
        Destination; its parent folder is created if needed.
    text : str
        Full file content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file must live in the destination folder: os.replace is only
    # atomic within one filesystem.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_gzip(path: Path) -> bool:
    """Whether ``path`` names a gzip-compressed file (by suffix)."""
    return path.suffix.lower() == ".gz"


def iter_binary_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw_line)`` pairs, 1-based, line endings stripped.

    Lines are read as bytes so that each one can be decoded strictly on its own
    and an invalid byte is reported with its exact line number.

    Parameters
    ----------
    path : Path
        Plain or ``.gz`` file.

    Yields
    ------
    tuple of (int, bytes)
        Line number and the line without its ``\\n`` / ``\\r\\n`` ending.
    """
    opener = gzip.open if is_gzip(path) else open
    with opener(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.rstrip(b"\r\n")
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                # Editors on Windows prepend a UTF-8 byte-order mark; it is not data.
                line = line[3:]
            yield number, line
