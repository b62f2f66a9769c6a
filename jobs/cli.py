"""The `colbert-batch` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from . import encode_job, index_job, pipeline, rerank_job, search_job
from ._console import configure_logging

logger = logging.getLogger("colbert_batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colbert-batch",
        description="Encode, index, search and evaluate ColBERT-style late-interaction retrieval.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = [
        ("encode", "encode a corpus into token-embedding shards",
         encode_job.add_arguments, encode_job.run),
        ("index", "build a FAISS index over the token embeddings",
         index_job.add_arguments, index_job.run),
        ("search", "search encoded documents and evaluate the run",
         search_job.add_search_arguments, search_job.run_search),
        ("rerank", "exact MaxSim reranking of a given run (e.g. BM25)",
         rerank_job.add_rerank_arguments, rerank_job.run_rerank),
        ("bm25", "BM25 baseline run (bm25s, stemmed, stopworded)",
         rerank_job.add_bm25_arguments, rerank_job.run_bm25),
        ("pipeline", "encode -> index -> search -> evaluate from a YAML",
         pipeline.add_arguments, pipeline.run),
        ("evaluate", "evaluate any TREC run against qrels",
         search_job.add_evaluate_arguments, search_job.run_evaluate),
    ]  # fmt: skip
    for name, help_text, add_arguments, run in commands:
        p = sub.add_parser(name, help=help_text)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        # Our errors carry the fix in their message; a traceback adds nothing for users.
        logger.debug("failed", exc_info=True)
        logger.error("%s: %s", type(exc).__name__, exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
