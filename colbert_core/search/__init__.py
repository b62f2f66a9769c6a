"""Searching encoded documents: exact MaxSim, candidates from a FAISS index, reranking, BM25.

* :mod:`.maxsim` - MaxSim scoring kernels (padded, flat, candidates of a token store);
* :mod:`.queries` - the query side: encoder loading with the model check, query encoding
  with its truncation report, ranked lists;
* :mod:`.exact` - exhaustive MaxSim over an encode output, memory-bounded;
* :mod:`.ann` - FAISS candidate generation + exact MaxSim over the candidates;
* :mod:`.rerank` - exact MaxSim over a given run's documents;
* :mod:`.bm25` - the BM25 baseline.
"""

from .ann import QueryResult, SearchParams, default_params, resolved_params, search, warm
from .exact import SearchResult, exact_search, exact_search_prefixes
from .maxsim import CandidateScorer
from .queries import (
    EncodedQueries,
    EncoderMismatchError,
    Ranked,
    empty_queries,
    encode_queries,
    load_query_encoder,
    ranked_list,
    report_queries,
)

__all__ = [
    "CandidateScorer",
    "EncodedQueries",
    "EncoderMismatchError",
    "QueryResult",
    "Ranked",
    "SearchParams",
    "SearchResult",
    "default_params",
    "empty_queries",
    "encode_queries",
    "exact_search",
    "exact_search_prefixes",
    "load_query_encoder",
    "ranked_list",
    "report_queries",
    "resolved_params",
    "search",
    "warm",
]
