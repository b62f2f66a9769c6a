"""Low-level file helpers for the data package (line reading)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from pathlib import Path

from colbert_core.data.sources import DataSourceError


def is_gzip(path: Path) -> bool:
    """Whether ``path`` names a gzip-compressed file (by suffix)."""
    return path.suffix.lower() == ".gz"


def count_lines(path: Path) -> int:
    """Lines of a plain or ``.gz`` file (a last line without ``\\n`` counts), read in
    1 MiB blocks.

    Raises
    ------
    DataSourceError
        When a compressed file is truncated or corrupt.
    """
    opener = gzip.open if is_gzip(path) else open
    n = 0
    last = b"\n"
    try:
        with opener(path, "rb") as fh:
            while block := fh.read(1 << 20):
                n += block.count(b"\n")
                last = block[-1:]
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataSourceError(
            f"{path}: the compressed file is truncated or corrupt ({exc}); "
            "download or copy it again"
        ) from exc
    return n + (last != b"\n")


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
    number = 0
    try:
        with opener(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                line = raw.rstrip(b"\r\n")
                if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                    # Editors on Windows prepend a UTF-8 byte-order mark; it is not data.
                    line = line[3:]
                yield number, line
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        # Not a bad record: everything after this point is unreadable, so skipping cannot
        # help and going on would silently lose the rest of the file.
        raise DataSourceError(
            f"{path}: the compressed file is truncated or corrupt after line {number} "
            f"({type(exc).__name__}: {exc}); download or copy it again"
        ) from exc
