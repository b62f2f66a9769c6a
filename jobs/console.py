"""Logging and progress bars for the command line (library code only logs)."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


class _TqdmHandler(logging.StreamHandler):
    """Route log records through tqdm so they do not break a live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_logging(verbose: int = 0) -> None:
    level = logging.DEBUG if verbose > 0 else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    quiet_third_party()


def quiet_third_party() -> None:
    """Third-party chatter (weight-loading bars, INFO lines) drowns our own progress."""
    for noisy in ("transformers", "urllib3", "filelock", "huggingface_hub", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


@contextmanager
def progress_bar(total: int | None, desc: str, unit: str = "doc") -> Iterator[tqdm]:
    """A tqdm bar on stderr; disabled when stderr is not a terminal and CI is set."""
    disable = bool(os.environ.get("CI")) and not sys.stderr.isatty()
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        dynamic_ncols=True,
        disable=disable,
        smoothing=0.1,
        file=sys.stderr,
    )
    try:
        yield bar
    finally:
        bar.close()


def print_json(obj: object) -> None:
    """A result summary on stdout (what scripts parse), indented for people."""
    print(json.dumps(obj, indent=2, default=str))


def flag(name: str) -> str:
    """The command-line flag of a config field: ``k_prime`` -> ``--k-prime``."""
    return "--" + name.replace("_", "-")
