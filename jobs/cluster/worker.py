"""What every Ray worker process does before its first item: quiet third-party logging and
fix its torch thread count (results are bit-identical only at a fixed count)."""

from __future__ import annotations

import os


def start_worker_process(torch_threads: int | None) -> None:
    """Prepare this actor's process; call first in an actor's ``__init__``."""
    import torch

    from ..console import quiet_third_party

    quiet_third_party()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if torch_threads:
        torch.set_num_threads(torch_threads)
