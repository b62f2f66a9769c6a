"""Park points for fault-injection tests: stop a worker (or the driver) at a known point so
a test can kill it there, deterministically, instead of racing a short-lived process.

Inactive unless ``COLBERT_BATCH_TEST_HOOKS`` names a folder (the test suite sets it for its
Ray cluster); then :func:`park_point` looks for a gate file ``park-<name>`` there. A gate
holding a number ``n`` parks only from the ``n``-th call of that point in the process on
(empty: the first). A parked process writes ``parked-<name>-<pid>`` and waits until the
gate is removed - or until the test kills it.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

ENV = "COLBERT_BATCH_TEST_HOOKS"
_calls: Counter[str] = Counter()


def park_point(name: str) -> None:
    """Park here while the test's gate ``park-<name>`` exists (a no-op in production)."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    _calls[name] += 1
    gate = Path(folder) / f"park-{name}"
    try:
        start_at = int(gate.read_text().strip() or 1)
    except (FileNotFoundError, ValueError):
        return
    if _calls[name] < start_at:
        return
    (Path(folder) / f"parked-{name}-{os.getpid()}").write_text(str(_calls[name]))
    while gate.exists():
        time.sleep(0.02)
