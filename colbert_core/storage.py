"""Where outputs live: a local folder or an S3 prefix, behind one small interface.

Keys are ``/``-separated paths relative to the root (``manifest.json``,
``embeddings/shard-00000.parquet``). Every ``put`` is atomic: a temp file + ``os.replace``
locally, a single PUT on S3 (an object is never visible half-written).

S3 credentials come from the standard AWS chain (environment, profile, instance role);
the endpoint of an S3-compatible store from ``AWS_ENDPOINT_URL``. Neither is ever logged.
"""

from __future__ import annotations

import contextlib
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


#: Error codes S3 (and S3-compatible stores) send for a missing object. A HEAD request has
#: no body, so a missing bucket reads as a bare 404 there too.
_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound"})

#: Error codes worth retrying whatever their HTTP status (RequestTimeout is a 400).
_TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "InternalError",
        "ServiceUnavailable",
        "PriorRequestNotComplete",
    }
)


def _client_error_parts(exc: Exception) -> tuple[str, int, str]:
    """(code, HTTP status, message) of a botocore ``ClientError``."""
    response = getattr(exc, "response", {}) or {}
    error = response.get("Error", {}) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return str(error.get("Code", "")), status, str(error.get("Message", "") or "")


def _is_transient(exc: Exception) -> bool:
    """Whether a failed S3 call may succeed if simply tried again."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        code, status, _ = _client_error_parts(exc)
        return code in _TRANSIENT_CODES or status >= 500 or status in (408, 429)
    if isinstance(exc, bx.SSLError):
        return False  # a certificate or protocol mismatch does not fix itself
    # Connection refused/reset/closed, timeouts, a body cut short, a checksum mismatch
    # on the way: the server restarting or the network hiccuping. Credentials and
    # parameter errors are not.
    return isinstance(
        exc,
        bx.ConnectionError
        | bx.HTTPClientError
        | bx.IncompleteReadError
        | bx.ChecksumError
        | bx.FlexibleChecksumError,
    )


class S3Storage:
    """An S3 (or S3-compatible) prefix, via boto3 with retries that outlast a restart.

    Transient failures (connection refused or reset, timeouts, 5xx, throttling) are retried
    with exponential backoff for up to :attr:`retry_window_s` seconds; anything else
    fails at once with a :class:`StorageError` naming the ``s3://`` object. Messages never
    include credentials: only the URI, the S3 error code and the server's message.
    """

    #: How long one operation keeps retrying transient failures before it fails, and the
    #: cap of the exponential backoff between its attempts. A restarting S3-compatible
    #: server is unreachable for a few seconds to tens of seconds (SeaweedFS: ~5-15 s
    #: until its volumes are writable again); a job must ride that out, not fail.
    retry_window_s = 90.0
    max_backoff_s = 5.0
    first_backoff_s = 0.25

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
        # A session of its own: boto3's default session is not safe to create clients
        # from in several threads at once.
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
            config=Config(
                # One retry layer, ours (below): botocore's own would multiply attempts
                # and make the time an operation may take unpredictable.
                retries={"total_max_attempts": 1},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def __repr__(self) -> str:
        return f"S3Storage({self.uri!r})"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run one S3 call with retries.

        Raises
        ------
        FileNotFoundError
            The object does not exist.
        StorageError
            Any other failure, transient ones once :attr:`retry_window_s` has passed.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        start = time.monotonic()
        delay = self.first_backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except (ClientError, BotoCoreError) as exc:
                err = exc
            if isinstance(err, ClientError):
                code, status, message = _client_error_parts(err)
                if code in _NOT_FOUND:
                    raise FileNotFoundError(f"{self.describe(key)} does not exist") from err
                reason = f"{code or status}: {message}" if message else (code or str(status))
            else:
                reason = f"{type(err).__name__}: {err}"
            if not _is_transient(err):
                hint = ""
                if isinstance(err, ClientError) and status == 403:
                    hint = " (check the credentials in the AWS chain and AWS_ENDPOINT_URL)"
                raise StorageError(f"{what} {self.describe(key)} failed: {reason}{hint}") from err
            elapsed = time.monotonic() - start
            if elapsed + delay > self.retry_window_s:
                raise StorageError(
                    f"{what} {self.describe(key)} failed {attempt} times over {elapsed:.0f} s: "
                    f"{reason}"
                ) from err
            logger.warning(
                "%s %s failed (%s); retrying in %.1fs", what, self.describe(key), reason, delay
            )
            time.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)

    def put(self, key: str, data: bytes) -> None:
        # One PUT: S3 makes the object visible only once it is complete. Repeating it
        # after a failure is safe (same key, same bytes).
        self._call(
            "PUT",
            key,
            lambda: self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data),
        )

    def get(self, key: str) -> bytes:
        def fetch() -> bytes:
            # The body is read inside the retried call: a connection cut mid-body is a
            # transient failure like any other.
            resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read()

        return self._call("GET", key, fetch)

    def size(self, key: str) -> int | None:
        try:
            resp = self._call(
                "HEAD",
                key,
                lambda: self._client.head_object(Bucket=self.bucket, Key=self._key(key)),
            )
        except FileNotFoundError:
            return None
        return int(resp["ContentLength"])

    def list(self, prefix: str) -> list[str]:
        """Keys under the folder ``prefix`` (``embeddings`` never matches ``embeddings2/``)."""
        keys: list[str] = []
        token: str | None = None
        folder = self._key(prefix.strip("/")) if prefix.strip("/") else self.prefix
        full = f"{folder}/" if folder else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call("LIST", prefix, lambda kw=kwargs: self._client.list_objects_v2(**kw))
            keys += [obj["Key"][strip:] for obj in resp.get("Contents", [])]
            if not resp.get("IsTruncated"):
                return sorted(keys)
            token = resp.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # already gone: what was asked for
            self._call(
                "DELETE",
                key,
                lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)),
            )
