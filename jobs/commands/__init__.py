"""One module per command. Each exposes ``HELP``, a frozen ``Config`` dataclass,
``add_arguments(parser)`` (flags named after the config's fields), ``run(config)`` (the
work; returns a result) and ``report(config, result)`` (console output; it may return the exit status)."""

from types import ModuleType

from . import bm25, encode, evaluate, index, nightly, pipeline, rerank, search, study

#: Sub-command name -> module, in the order ``--help`` lists them.
COMMANDS: dict[str, ModuleType] = {
    "encode": encode,
    "index": index,
    "search": search,
    "rerank": rerank,
    "bm25": bm25,
    "pipeline": pipeline,
    "evaluate": evaluate,
    "nightly": nightly,
    "study": study,
}

__all__ = ["COMMANDS"]
