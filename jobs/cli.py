"""The `colbert-batch` command line: parse arguments into a command's config, run it.

Exit status: 0 on success (``nightly``: 1 when a check regressed); 2 on an error the user
can fix (any
:class:`~colbert_core.errors.ColbertBatchError`: one line saying what and how); 1 on
anything else, which is a bug and is printed with its traceback; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from colbert_core.config import config_from_mapping
from colbert_core.errors import ColbertBatchError, ConfigError

from .cluster.actor_pool import cause_of
from .commands import COMMANDS
from .console import configure_logging, flag

logger = logging.getLogger("colbert_batch")

#: Namespace entries that are not command options.
_NOT_OPTIONS = frozenset({"command", "verbose"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="colbert-batch",
        description="Encode, index, search and evaluate ColBERT-style late-interaction retrieval.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        # Options the user leaves out stay out of the namespace, so the config
        # dataclass's defaults are the only defaults.
        p = sub.add_parser(name, help=module.HELP, argument_default=argparse.SUPPRESS)
        module.add_arguments(p)
    return parser


def parse(argv: list[str] | None = None) -> tuple[Any, Any, int]:
    """``(command module, its config, verbosity)`` from a command line.

    Raises
    ------
    SystemExit
        With status 2 and argparse's message for a malformed command line, including an
        option value the config refuses (named as the flag).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    module = COMMANDS[args.command]
    options = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}
    try:
        config = config_from_mapping(module.Config, options, f"colbert-batch {args.command}", flag)
    except ConfigError as exc:
        parser.error(str(exc))
    return module, config, args.verbose


def main(argv: list[str] | None = None) -> int:
    try:
        module, config, verbose = parse(argv)
    except SystemExit as exc:  # argparse has printed the usage and the message
        return int(exc.code or 0)
    configure_logging(verbose)
    try:
        return int(module.report(config, module.run(config)) or 0)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except ColbertBatchError as exc:
        # Our errors carry the fix in their message; a traceback adds nothing for users.
        # A Ray task's error arrives wrapped: report the original, not Ray's wrapper.
        cause = cause_of(exc)
        logger.debug("failed", exc_info=True)
        logger.error("%s: %s", type(cause).__name__, cause)
        return 2
    except Exception:
        logger.exception("colbert-batch failed unexpectedly (a bug: please report it)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
