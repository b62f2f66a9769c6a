"""A local (or mounted) folder as a :class:`~colbert_core.storage.Storage`."""

from __future__ import annotations

from pathlib import Path

from .atomic import write_bytes_atomic
from .s3 import StorageError


class LocalStorage:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStorage({self.uri!r})"

    def path(self, key: str) -> Path:
        return self.root / key

    def describe(self, key: str) -> str:
        return str(self.path(key))

    def put(self, key: str, data: bytes) -> None:
        try:
            write_bytes_atomic(self.path(key), data)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path(key)}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot read {self.path(key)}: {exc}") from exc

    def size(self, key: str) -> int | None:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def remove_stale_temps(self, prefix: str) -> int:
        """Delete temp files a killed writer left behind (never a complete object)."""
        base = self.path(prefix)
        n = 0
        if base.is_dir():
            for p in base.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
        return n
