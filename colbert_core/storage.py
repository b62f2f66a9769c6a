"""Where outputs live: a local folder or an S3 prefix, behind one small interface.

Keys are ``/``-separated paths relative to the root (``manifest.json``,
``embeddings/shard-00000.parquet``). Every ``put`` is atomic: a temp file + ``os.replace``
locally, a single PUT on S3 (an object is never visible half-written).

S3 credentials come from the standard AWS chain (environment, profile, instance role);
the endpoint of an S3-compatible store from ``AWS_ENDPOINT_URL``. Neither is ever logged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from .atomic import write_bytes_atomic

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StorageError(OSError):
    """A storage operation failed after its retries (the message says which object)."""


class Storage(Protocol):
    """A root under which keys are read and written."""

    uri: str

    def describe(self, key: str) -> str:
        """A human-readable location of ``key`` (no secrets)."""
        ...

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def size(self, key: str) -> int | None:
        """Byte size of ``key``, or None when it does not exist."""
        ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def open_storage(uri: str | Path) -> Storage:
    """A :class:`Storage` for a local path or an ``s3://bucket/prefix`` URI."""
    uri = str(uri)
    if is_s3(uri):
        return S3Storage(uri)
    return LocalStorage(uri)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStorage:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def describe(self, key: str) -> str:
        return str(self.path(key))

    def put(self, key: str, data: bytes) -> None:
        write_bytes_atomic(self.path(key), data)

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


class S3Storage:
    """An S3 (or S3-compatible) prefix, via boto3 with retries that outlast a restart."""

    #: Attempts and the cap of the exponential backoff between them, in seconds: long
    #: enough to ride out an S3-compatible server restarting mid-job.
    attempts = 8
    max_backoff_s = 8.0

    def __init__(self, uri: str):
        import boto3
        from botocore.config import Config

        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"invalid S3 URI {uri!r}: expected s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = boto3.client(
            "s3",
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=120,
            ),
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _retry(self, what: str, key: str, fn: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError

        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code in {"NoSuchKey", "404", "NoSuchBucket", "AccessDenied", "403"} or (
                    400 <= int(status or 0) < 500 and status not in (408, 429)
                ):
                    raise
                err: Exception = exc
            except BotoCoreError as exc:
                err = exc
            if attempt == self.attempts:
                raise StorageError(
                    f"{what} {self.describe(key)} failed after {attempt} attempts: {err}"
                ) from err
            logger.warning(
                "%s %s failed (%s); retrying in %.1fs",
                what,
                self.describe(key),
                type(err).__name__,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def put(self, key: str, data: bytes) -> None:
        # One PUT: S3 makes the object visible only once it is complete.
        self._retry(
            "PUT",
            key,
            lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data),
        )

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            resp = self._retry(
                "GET", key, lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise FileNotFoundError(self.describe(key)) from exc
            raise StorageError(f"GET {self.describe(key)}: {exc}") from exc
        return resp["Body"].read()

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            resp = self._retry(
                "HEAD",
                key,
                lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)),
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise StorageError(f"HEAD {self.describe(key)}: {exc}") from exc
        return int(resp["ContentLength"])

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: str | None = None
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._retry("LIST", prefix, lambda kw=kwargs: self._client.list_objects_v2(**kw))
            keys += [obj["Key"][strip:] for obj in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return sorted(keys)
            token = resp.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        self._retry(
            "DELETE",
            key,
            lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)),
        )
