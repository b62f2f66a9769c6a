"""Several encode outputs read as one, cut at a document count: a corpus grown by prefixes.

A scaling study searches a target corpus plus the first ``N`` documents of a distractor
corpus, for several ``N``. Each corpus is encoded once; an :class:`EmbeddingsView` reads
"all of ROOT A, then the first ``m`` documents of ROOT B" as if it were one
:class:`~colbert_core.embeddings.Embeddings`: shards in order, documents renumbered
consecutively, the last shard cut short where the count ends. Nothing is copied; every
shard is verified against its own manifest when read.

The view's identity (:attr:`EmbeddingsView.manifest_sha256`) is the sha256 of its parts'
manifest checksums and document counts, so an index built from a view records which
documents it holds exactly as an index built from a ROOT does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..encoder import EncoderRecord
from ..storage import sha256_bytes
from .manifest import ManifestError, ShardInfo
from .reader import Embeddings
from .shards import ShardData


@dataclass(frozen=True)
class ViewPart:
    """One encode output and how many of its first documents the view takes (``None``:
    all)."""

    root: str
    docs: int | None = None


class ListedShards:
    """Totals and iteration of a source whose shards are listed up front (``_shards``);
    subclasses provide ``dim``, ``encoder`` and ``read``."""

    _shards: tuple[ShardInfo, ...]

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        return self._shards

    @property
    def n_docs(self) -> int:
        return sum(s.n_docs for s in self._shards)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self._shards)

    def read(self, info: ShardInfo) -> ShardData:
        raise NotImplementedError

    def __iter__(self) -> Iterator[ShardData]:
        for info in self._shards:
            yield self.read(info)


class EmbeddingsView(ListedShards):
    """The concatenation of ``parts``, each cut at its document count.

    Parameters
    ----------
    parts
        Encode outputs in view order; they must share the encoder (same fingerprint).
    verify
        Check each shard's size and sha256 against its manifest while reading it.

    Raises
    ------
    ManifestError
        When a part is incomplete, has fewer documents than the view asks for, or was
        encoded by another model than the first part.
    """

    def __init__(self, parts: Sequence[ViewPart], *, verify: bool = True):
        if not parts:
            raise ValueError("a view needs at least one part")
        self.parts = tuple(parts)
        self._sources = [Embeddings(p.root, verify=verify) for p in self.parts]
        first = self._sources[0]
        for part, src in zip(self.parts, self._sources, strict=True):
            if src.encoder.fingerprint != first.encoder.fingerprint or src.dim != first.dim:
                raise ManifestError(
                    f"{src.root} was encoded by {src.encoder.model_path} (fingerprint "
                    f"{src.encoder.fingerprint}, dim {src.dim}) but {first.root} by "
                    f"{first.encoder.model_path} ({first.encoder.fingerprint}, dim "
                    f"{first.dim}): encode both with the same model and settings"
                )
            if part.docs is not None and part.docs > src.n_docs:
                raise ManifestError(
                    f"{src.root} holds {src.n_docs} documents but the view needs its first "
                    f"{part.docs}: encode more of that corpus (encode --max-docs)"
                )
        self._map: dict[int, tuple[int, ShardInfo, int]] = {}
        shards: list[ShardInfo] = []
        first_doc = 0
        for p, (part, src) in enumerate(zip(self.parts, self._sources, strict=True)):
            left = src.n_docs if part.docs is None else part.docs
            for info in src.shards:
                if left <= 0:
                    break
                keep = min(left, info.n_docs)
                n_tokens = info.n_tokens
                if keep < info.n_docs:
                    n_tokens = int(src.read(info).offsets[keep])
                view_info = dataclasses.replace(
                    info,
                    shard_id=len(shards),
                    name=f"{p}:{info.name}[:{keep}]",
                    first_doc=first_doc,
                    n_docs=keep,
                    n_tokens=n_tokens,
                )
                self._map[view_info.shard_id] = (p, info, keep)
                shards.append(view_info)
                first_doc += keep
                left -= keep
        self._shards = tuple(shards)
        identity = [
            {"manifest_sha256": s.manifest_sha256, "docs": p.docs}
            for p, s in zip(self.parts, self._sources, strict=True)
        ]
        self.manifest_sha256 = sha256_bytes(json.dumps(identity, sort_keys=True).encode())
        self.root = " + ".join(
            s.root if p.docs is None else f"{s.root}[:{p.docs}]"
            for p, s in zip(self.parts, self._sources, strict=True)
        )

    @property
    def dim(self) -> int:
        return self._sources[0].dim

    @property
    def encoder(self) -> EncoderRecord:
        return self._sources[0].encoder

    def read(self, info: ShardInfo) -> ShardData:
        """The view's shard ``info``: its source shard, cut and renumbered."""
        p, source_info, keep = self._map[info.shard_id]
        data = self._sources[p].read(source_info)
        end = int(data.offsets[keep])
        return ShardData(
            doc_ids=data.doc_ids[:keep],
            doc_index=data.doc_index[:keep] - source_info.first_doc + info.first_doc,
            offsets=data.offsets[: keep + 1],
            tokens=data.tokens[:end],
        )
