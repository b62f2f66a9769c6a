"""The one root of every error a user can fix.

Every error raised for bad input, a bad configuration or an unusable environment derives
from :class:`ColbertBatchError` and says in its message what to do about it; the command
line prints that message and exits 2. Any other exception is a bug in colbert-batch: the
command line prints its traceback and exits 1.
"""

from __future__ import annotations


class ColbertBatchError(Exception):
    """Bad input, configuration or environment; the message names the culprit and the fix."""


class ConfigError(ColbertBatchError, ValueError):
    """A configuration value is invalid or unknown (the message names the key).

    ``key`` and ``detail`` let a caller name the key as its user wrote it (``--k-prime``
    on a command line, ``search.k_prime`` in a YAML file).
    """

    def __init__(self, message: str, *, key: str | None = None, detail: str | None = None):
        super().__init__(message)
        self.key = key
        self.detail = detail

    @classmethod
    def invalid(cls, key: str, detail: str) -> ConfigError:
        """``key`` has a value that ``detail`` says is wrong (``"must be positive, got 0"``)."""
        return cls(f"{key} {detail}", key=key, detail=detail)

    def __reduce__(self):  # type: ignore[override]
        # Errors travel between Ray processes; the default would drop key and detail.
        return (_rebuild_config_error, (str(self), self.key, self.detail))


def _rebuild_config_error(message: str, key: str | None, detail: str | None) -> ConfigError:
    return ConfigError(message, key=key, detail=detail)


class EmptyInputError(ColbertBatchError, ValueError):
    """An input holds nothing to work on (e.g. a corpus without a readable document)."""
