"""Park points for fault-injection tests: stop a worker (or the driver) at a known point so
a test can kill it there, deterministically, instead of racing a short-lived process.

Inactive unless ``COLBERT_BATCH_TEST_HOOKS`` names a folder (the test suite sets it for its
Ray cluster); then :func:`park_point` looks for a gate file ``park-<name>`` there. A gate
holding a number ``n`` parks only from the ``n``-th call of that point in the process on
(empty: the first); a gate holding ``once`` parks only the first process to reach it (a
retry in a new process - after the test killed the parked one or its node - runs on). A
parked process writes ``parked-<name>-<pid>`` holding its call count and its Ray node id,
and waits until the gate is removed - or until the test kills it.
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
        rule = gate.read_text().strip()
    except FileNotFoundError:
        return
    if rule == "once":
        try:  # O_EXCL: exactly one process, on any node, wins the claim
            os.close(os.open(Path(folder) / f"claimed-{name}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
    elif _calls[name] < int(rule or 1):
        return
    (Path(folder) / f"parked-{name}-{os.getpid()}").write_text(f"{_calls[name]} {_node_id()}")
    while gate.exists():
        time.sleep(0.02)


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # a hook must never fail the code it parks
        return ""
