"""`colbert-batch encode`: corpus -> token-embedding shards + manifest."""

from __future__ import annotations

import argparse
import json
import logging

from colbert_core import load_encoder
from colbert_core.encode import EncodeConfig, run_encode

from ._console import progress_bar

logger = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--corpus",
        required=True,
        help="BEIR folder, beir:<name>, irds:<id>, or a .jsonl/.tsv/.parquet file",
    )
    p.add_argument(
        "--model",
        default="minilm",
        help="checkpoint directory or alias (default: minilm, the packaged all-MiniLM-L6-v2)",
    )
    p.add_argument("--out", required=True, help="output folder (ROOT)")
    p.add_argument("--shard-size", type=int, default=10_000, help="documents per shard")
    p.add_argument("--batch-size", type=int, default=32, help="documents per forward pass")
    p.add_argument(
        "--doc-maxlen", type=int, default=None, help="override the checkpoint's document length"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output made with another model or config",
    )
    p.add_argument(
        "--on-bad-record",
        choices=["error", "skip"],
        default="error",
        help="stop at a bad record (default) or skip it into rejects.jsonl",
    )


def run(args: argparse.Namespace) -> int:
    config = EncodeConfig(
        corpus=args.corpus,
        model=args.model,
        out=args.out,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        doc_maxlen=args.doc_maxlen,
        on_bad_record=args.on_bad_record,
    )
    encoder = load_encoder(args.model, device=args.device, doc_maxlen=args.doc_maxlen)
    logger.info("encoding %s with %s on %s", args.corpus, encoder.path, encoder.device)
    with progress_bar(None, "encode") as bar:
        tokens = 0

        def progress(docs: int, n_tokens: int) -> None:
            nonlocal tokens
            tokens += n_tokens
            elapsed = bar.format_dict.get("elapsed") or 0.0
            bar.set_postfix(
                tokens=tokens, tok_s=f"{tokens / elapsed:,.0f}" if elapsed else "-", refresh=False
            )
            bar.update(docs)

        manifest = run_encode(config, encoder, overwrite=args.overwrite, progress=progress)
    summary = manifest["summary"]
    print(json.dumps({"out": args.out, **manifest["totals"], **summary}, indent=2))
    return 0
