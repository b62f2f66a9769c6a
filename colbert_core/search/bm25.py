"""BM25 baseline through bm25s, with Snowball stemming and stopwords.

Settings (recorded in ``metrics.json``): Lucene BM25 (k1=0.9, b=0.4 by default, as
Anserini's BEIR baselines), lower-casing, the language's stopword list and Snowball stemmer.
The corpus's tokens are held in memory (a baseline for collections that fit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from ..config import check_choice
from ..data import Document, Query
from ..errors import ConfigError
from .queries import Ranked

logger = logging.getLogger(__name__)

LANGUAGES = {"en": "english", "de": "german"}


@dataclass(frozen=True)
class BM25Settings:
    language: str = "en"
    k1: float = 0.9
    b: float = 0.4
    method: str = "lucene"

    def __post_init__(self) -> None:
        check_choice(self, "language", LANGUAGES)
        if self.k1 < 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={self.k1}, b={self.b}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"stemmer": LANGUAGES.get(self.language), "stopwords": self.language}


def bm25_search(
    corpus: Iterable[Document],
    queries: list[Query],
    *,
    k: int = 100,
    settings: BM25Settings = BM25Settings(),
) -> tuple[dict[str, Ranked], list[str]]:
    """Top-``k`` documents per query by BM25 (ties broken by corpus order), and the ids of
    every document indexed."""
    import bm25s
    import numpy as np
    import Stemmer

    # bm25s sets its own logger to DEBUG on import; hand the level back to the application.
    logging.getLogger("bm25s").setLevel(logging.NOTSET)

    stemmer = Stemmer.Stemmer(LANGUAGES[settings.language])
    ids: list[str] = []
    texts: list[str] = []
    for doc in corpus:
        ids.append(doc.doc_id)
        texts.append(doc.contents)
    logger.info("BM25: indexing %d documents", len(ids))
    corpus_tokens = bm25s.tokenize(
        texts, stopwords=settings.language, stemmer=stemmer, show_progress=False
    )
    retriever = bm25s.BM25(method=settings.method, k1=settings.k1, b=settings.b)
    retriever.index(corpus_tokens, show_progress=False)
    query_tokens = bm25s.tokenize(
        [q.text for q in queries], stopwords=settings.language, stemmer=stemmer, show_progress=False
    )
    kk = min(k, len(ids))
    docs, scores = retriever.retrieve(query_tokens, k=kk, show_progress=False, n_threads=0)
    out: dict[str, Ranked] = {}
    for i, q in enumerate(queries):
        order = np.lexsort((docs[i], -scores[i]))  # score desc, then corpus order
        out[q.query_id] = [
            (ids[int(docs[i][j])], float(scores[i][j])) for j in order if scores[i][j] > 0
        ]
    return out, ids
