"""Time PyLate's document encoder (run with the PyLate virtualenv's python).

Reads texts (one JSON string per line) from --texts, encodes them with
``pylate.models.ColBERT(...).encode(is_query=False)`` and prints a JSON line with the timing.
Not imported by the project.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from pylate import models


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--texts", required=True)
    p.add_argument("--document-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args()
    with open(args.texts, encoding="utf-8") as fh:
        texts = [json.loads(line) for line in fh]
    model = models.ColBERT(
        model_name_or_path=args.model, device="cpu", document_length=args.document_length
    )
    model.encode(texts[:64], is_query=False, batch_size=args.batch_size)  # warm-up
    start = time.perf_counter()
    out = model.encode(texts, is_query=False, batch_size=args.batch_size, show_progress_bar=False)
    seconds = time.perf_counter() - start
    tokens = sum(int(x.shape[0]) for x in out)
    print(
        json.dumps(
            {
                "docs": len(texts),
                "tokens_kept": tokens,
                "seconds": seconds,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
