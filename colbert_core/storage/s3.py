"""An S3 (or S3-compatible) prefix as a :class:`~colbert_core.storage.Storage`.

Credentials come from the standard AWS chain (environment, profile, instance role); the
endpoint of an S3-compatible store from ``AWS_ENDPOINT_URL``. Neither is ever logged: error
messages name the ``s3://`` object, the endpoint URL, the S3 error code and the server's
message only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..errors import ColbertBatchError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StorageError(ColbertBatchError, OSError):
    """A storage operation failed after its retries (the message says which object)."""


#: Endpoints this process has had an answer from. A connection error against one of them
#: is a restart or a network hiccup, worth riding out; against an endpoint never reached
#: it is almost always a wrong ``AWS_ENDPOINT_URL``, a mistyped host or a server that is
#: not running, and waiting minutes for it helps nobody.
_REACHED: set[str] = set()


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
    #: The retry window for connection errors against an endpoint this process has never
    #: reached: long enough for a blip, short enough that a wrong endpoint fails in seconds.
    first_contact_window_s = 5.0
    max_backoff_s = 5.0
    first_backoff_s = 0.25

    def __init__(self, uri: str):
        import boto3
        from botocore.config import Config

        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise StorageError(f"invalid S3 URI {uri!r}: expected s3://bucket/prefix")
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
        self.endpoint = _public_url(self._client.meta.endpoint_url)

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
            Any other failure: at once when retrying cannot help, after
            :attr:`first_contact_window_s` when the endpoint has never answered this
            process, else once :attr:`retry_window_s` has passed.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        start = time.monotonic()
        delay = self.first_backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                result = fn()
                _REACHED.add(self.endpoint)
                return result
            except (ClientError, BotoCoreError) as exc:
                err = exc
            if isinstance(err, ClientError):
                _REACHED.add(self.endpoint)  # the server answered, with an error
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
            never_reached = self.endpoint not in _REACHED
            window = (
                min(self.first_contact_window_s, self.retry_window_s)
                if never_reached
                else self.retry_window_s
            )
            if elapsed + delay > window:
                hint = (
                    f"; the S3 endpoint {self.endpoint} never answered: check that the server "
                    "is running and that AWS_ENDPOINT_URL points at it (unset it for AWS S3)"
                    if never_reached
                    else ""
                )
                raise StorageError(
                    f"{what} {self.describe(key)} failed {attempt} times over {elapsed:.0f} s: "
                    f"{reason}{hint}"
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

    def download(self, key: str, path: Path) -> None:
        """Stream an object into the file ``path`` (memory stays flat for any size).

        ``path`` is overwritten from the start on every attempt; make it a temp file and
        rename it once verified.
        """

        def fetch() -> None:
            from s3transfer.exceptions import RetriesExceededError

            with path.open("wb") as fh:
                try:
                    self._client.download_fileobj(self.bucket, self._key(key), fh)
                except RetriesExceededError as exc:
                    # s3transfer's own retries gave up: hand its (botocore) cause to our
                    # retry loop, which knows which errors outlast a restart.
                    raise exc.last_exception from exc

        self._call("GET", key, fetch)

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
        return [key for key, _, _ in self.list_objects(prefix)]

    def list_objects(self, prefix: str) -> list[tuple[str, int, str]]:
        """``(key, size, ETag)`` of every object under the folder ``prefix``, sorted."""
        found: list[tuple[str, int, str]] = []
        token: str | None = None
        folder = self._key(prefix.strip("/")) if prefix.strip("/") else self.prefix
        full = f"{folder}/" if folder else ""
        strip = len(self.prefix) + 1 if self.prefix else 0
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": full}
            if token:
                kwargs["ContinuationToken"] = token
            resp = self._call("LIST", prefix, lambda kw=kwargs: self._client.list_objects_v2(**kw))
            found += [
                (obj["Key"][strip:], int(obj["Size"]), str(obj.get("ETag", "")))
                for obj in resp.get("Contents", [])
            ]
            if not resp.get("IsTruncated"):
                return sorted(found)
            token = resp.get("NextContinuationToken")

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # already gone: what was asked for
            self._call(
                "DELETE",
                key,
                lambda: self._client.delete_object(Bucket=self.bucket, Key=self._key(key)),
            )


def _public_url(url: str | None) -> str:
    """The endpoint URL without any user:password part (never log credentials).

    >>> _public_url("http://user:secret@127.0.0.1:8333/")
    'http://127.0.0.1:8333/'
    """
    if not url:
        return "(default AWS endpoint)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
