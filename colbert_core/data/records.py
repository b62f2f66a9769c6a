"""Record types shared by every data reader, and the bad-record policy.

The readers turn heterogeneous on-disk formats into three plain record types
(:class:`Document`, :class:`Query`, :class:`Qrel`).  Input that cannot be turned
into a record is described by a :class:`BadRecord`; depending on the
:class:`OnBadRecord` policy it either aborts the read with a
:class:`BadRecordError` or is collected in a :class:`RejectLog`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from enum import StrEnum

from colbert_core.errors import ColbertBatchError, ConfigError

logger = logging.getLogger(__name__)

#: How many characters of an offending raw line a :class:`BadRecord` keeps.
EXCERPT_CHARS = 200

SKIP_HINT = "pass --on-bad-record skip to skip such records and write them to rejects.jsonl"


def id_problem(ident: str) -> str | None:
    """Why ``ident`` cannot serve as a document or query id, or ``None`` when it can.

    Ids end up in whitespace-separated files (TREC runs, TREC qrels), so an id must be
    non-empty and hold no whitespace; every reader and writer applies this one rule.

    >>> id_problem("MED-10"), id_problem("foldoc:peano arithmetic:0")
    (None, 'contains whitespace (ids are written to whitespace-separated TREC runs)')
    """
    if not ident:
        return "is empty"
    if any(c.isspace() for c in ident):
        return "contains whitespace (ids are written to whitespace-separated TREC runs)"
    return None


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus document.

    Parameters
    ----------
    doc_id : str
        Identifier, always a string (numeric ids are converted).
    text : str
        Body text; may be empty.
    title : str, optional
        Title, empty when the source has none.

    Examples
    --------
    >>> Document("d1", "body", title="Title").contents
    'Title body'
    >>> Document("d2", "body").contents
    'body'
    """

    doc_id: str
    text: str
    title: str = ""

    @property
    def contents(self) -> str:
        """Text to encode: ``title + " " + text`` if there is a title, else ``text``.

        This is the BEIR / MTEB convention, so scores stay comparable with
        published numbers.
        """
        if self.title:
            return f"{self.title} {self.text}"
        return self.text


@dataclass(frozen=True, slots=True)
class Query:
    """One query.

    Parameters
    ----------
    query_id : str
        Identifier, always a string.
    text : str
        Query text; may be empty (a warning is logged when read).
    """

    query_id: str
    text: str


@dataclass(frozen=True, slots=True)
class Qrel:
    """One relevance judgement.

    Parameters
    ----------
    query_id : str
        Judged query.
    doc_id : str
        Judged document.
    relevance : int
        Graded relevance; ``0`` means judged non-relevant.
    """

    query_id: str
    doc_id: str
    relevance: int


@dataclass(frozen=True, slots=True)
class BadRecord:
    """An input record that could not be read.

    Parameters
    ----------
    source : str
        File (or dataset id) the record came from.
    line : int
        1-based line number (row number for Parquet, item number for ir_datasets).
    reason : str
        What is wrong with it.
    excerpt : str
        The first :data:`EXCERPT_CHARS` characters of the raw record.
    """

    source: str
    line: int
    reason: str
    excerpt: str


class BadRecordError(ColbertBatchError, ValueError):
    """Raised for a bad input record when the policy is :attr:`OnBadRecord.ERROR`.

    Parameters
    ----------
    record : BadRecord
        The offending record; kept as ``.record``.
    hint : str, optional
        How to get past the error; defaults to the ``--on-bad-record skip`` hint.
    """

    def __init__(self, record: BadRecord, hint: str = SKIP_HINT) -> None:
        self.record = record
        self.hint = hint
        super().__init__(f"{record.source}:{record.line}: {record.reason} ({hint})")

    def __reduce__(self) -> tuple[type[BadRecordError], tuple[BadRecord, str]]:
        # The default pickling re-calls __init__ with the message only, which would
        # fail; workers may ship this error across processes.
        return (type(self), (self.record, self.hint))


class OnBadRecord(StrEnum):
    """What to do with a record that cannot be read."""

    ERROR = "error"
    SKIP = "skip"

    @classmethod
    def coerce(cls, value: OnBadRecord | str) -> OnBadRecord:
        """Accept the enum or its string value (as given on a command line).

        Parameters
        ----------
        value : OnBadRecord or str
            ``"error"`` or ``"skip"`` (case-insensitive) or an enum member.

        Returns
        -------
        OnBadRecord
            The matching member.

        Raises
        ------
        ConfigError
            If ``value`` names no policy.
        """
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError as exc:
            choices = ", ".join(repr(m.value) for m in cls)
            raise ConfigError(f"unknown bad-record policy {value!r}; use one of {choices}") from exc


class RejectLog:
    """Collects the records skipped under :attr:`OnBadRecord.SKIP`.

    A record already logged for the same ``(source, line)`` is ignored, so
    iterating a corpus several times does not count its rejects several times.
    Not thread-safe.
    """

    def __init__(self) -> None:
        self.records: list[BadRecord] = []
        self._seen: set[tuple[str, int]] = set()

    def add(self, rec: BadRecord) -> None:
        """Record a skipped input record and log a warning for it.

        Parameters
        ----------
        rec : BadRecord
            The record being skipped.
        """
        key = (rec.source, rec.line)
        if key in self._seen:
            return
        self._seen.add(key)
        self.records.append(rec)
        logger.warning("skipping bad record %s:%d: %s", rec.source, rec.line, rec.reason)

    def __len__(self) -> int:
        return len(self.records)

    def to_jsonl(self) -> str:
        """The rejects as JSON lines: ``source``, ``line``, ``reason`` and ``excerpt``."""
        return "".join(json.dumps(asdict(rec), ensure_ascii=False) + "\n" for rec in self.records)
