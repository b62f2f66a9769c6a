"""The settings that define an encode job's output (written into the manifest)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ..config import check_choice, check_positive
from ..data import OnBadRecord

#: Documents per shard. Small enough that a corpus of a few thousand documents (SciFact's
#: 5,183) is several shards and every worker gets work; large enough that per-shard
#: overhead (one Parquet file, one manifest update) stays negligible. Shard ``k`` holds
#: documents ``[k*N, (k+1)*N)`` whatever the number of workers, so the shards' content
#: never depends on the cluster.
DEFAULT_SHARD_SIZE = 1000

DTYPES = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True, kw_only=True)
class EncodeConfig:
    """Everything that determines an encode job's output (written into the manifest).

    Attributes
    ----------
    corpus
        Corpus spec (BEIR folder, ``beir:<name>``, ``irds:<id>``, a JSONL/TSV/Parquet file).
    model
        Checkpoint directory or alias.
    out
        The output ``ROOT``: a folder or ``s3://bucket/prefix``.
    shard_size
        Documents per shard (see :data:`DEFAULT_SHARD_SIZE`).
    batch_size
        Documents per forward pass.
    doc_maxlen
        Override of the checkpoint's document length.
    on_bad_record
        ``error`` (stop at the first bad record) or ``skip`` (into ``rejects.jsonl``).
    dtype
        Encoder precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
    max_docs
        Encode only the first ``max_docs`` documents (bad records skipped under ``skip``
        take no position). Not output-defining: the shards are a prefix of the whole
        corpus's shards, so a later run with a larger limit keeps them and encodes only
        the rest (a last shard cut short by the limit is re-encoded whole).
    """

    corpus: str
    out: str
    model: str = "minilm"
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = 32
    doc_maxlen: int | None = None
    on_bad_record: str = "error"
    dtype: str = "auto"
    max_docs: int | None = None

    def __post_init__(self) -> None:
        check_positive(self, "shard_size", "batch_size", "doc_maxlen", "max_docs")
        check_choice(self, "on_bad_record", [m.value for m in OnBadRecord])
        check_choice(self, "dtype", DTYPES)

    def output_defining(self) -> dict[str, Any]:
        """The fields that must match for an existing output to be resumed."""
        d = dataclasses.asdict(self)
        d.pop("out")
        d.pop("batch_size")  # batching does not change the vectors beyond float noise
        # Shards finished before an `error` stop hold the same documents at the same
        # positions under `skip`, so switching policy may resume.
        d.pop("on_bad_record")
        d.pop("max_docs")  # how far, not what: see the class docstring
        return d

    def recorded(self) -> dict[str, Any]:
        """What the manifest records: the output-defining fields and how the job ran."""
        return self.output_defining() | {
            "batch_size": self.batch_size,
            "on_bad_record": self.on_bad_record,
            "max_docs": self.max_docs,
        }


def same_setting(key: str, recorded: Any, wanted: Any) -> bool:
    """Whether a recorded output-defining setting equals the wanted one.

    A corpus is the same when both specs name one local file or folder, however spelled:
    a study run once with ``../shared/x`` and once with ``/work/shared/x`` re-encoded (and
    so discarded) 30 minutes of complete embeddings over the spelling alone.

    >>> same_setting("corpus", ".", os.getcwd()), same_setting("corpus", "beir:a", "beir:b")
    (True, False)
    """
    if recorded == wanted:
        return True
    if key != "corpus" or not isinstance(recorded, str) or not isinstance(wanted, str):
        return False
    try:  # a spec that is no local path (beir:, irds:, s3://) raises here
        return os.path.samefile(recorded, wanted)
    except (OSError, ValueError):
        return False
