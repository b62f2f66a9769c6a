"""`colbert-batch pipeline CONFIG.yaml`: encode -> index -> search -> evaluate.

Each stage is skipped when its output is complete for the same inputs and settings:
encode when the manifest is complete for the same configuration (the encode job would
only re-verify it), index when ``meta.json`` was built from the current manifest with the
same factory, search when ``metrics.json`` records the same index and parameters.

Example config (every key but ``dataset``/``corpus``+``queries`` is optional)::

    dataset: beir:scifact        # corpus, queries and qrels from one BEIR source
    model: minilm
    out: out/demo
    encode: {shard_size: 10000, doc_maxlen: 256}
    index: {type: ivfpq}
    search: {k: 100, k_prime: 64, max_candidates: 256}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

STAGE_STAMP = "pipeline_stage.json"


class PipelineConfigError(ValueError):
    """The pipeline YAML is missing a key or has one of the wrong type."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline YAML file")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--force", action="store_true", help="re-run every stage")


def load_config(path: str) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PipelineConfigError(f"pipeline config {path} not found") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PipelineConfigError(f"{path}{line}: invalid YAML ({exc})") from exc
    if not isinstance(cfg, dict):
        raise PipelineConfigError(f"{path}: expected a mapping at the top level")
    known = {
        "dataset",
        "corpus",
        "queries",
        "qrels",
        "split",
        "model",
        "out",
        "encode",
        "index",
        "search",
    }
    unknown = set(cfg) - known
    if unknown:
        raise PipelineConfigError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    dataset = cfg.get("dataset")
    cfg.setdefault("corpus", dataset)
    cfg.setdefault("queries", dataset)
    cfg.setdefault("qrels", dataset if cfg.get("queries") == dataset else None)
    if not cfg.get("corpus") or not cfg.get("queries"):
        raise PipelineConfigError(f"{path}: set `dataset`, or both `corpus` and `queries`")
    cfg.setdefault("split", "test")
    cfg.setdefault("model", "minilm")
    cfg.setdefault("out", "out/pipeline")
    for section in ("encode", "index", "search"):
        value = cfg.get(section) or {}
        if not isinstance(value, dict):
            raise PipelineConfigError(f"{path}: `{section}` must be a mapping")
        cfg[section] = value
    return cfg


def _flags(options: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def run(args: argparse.Namespace) -> int:
    from .cli import build_parser

    cfg = load_config(args.config)
    out = Path(cfg["out"])
    emb, idx_type = out / "embeddings", cfg["index"].get("type", "ivfpq")
    idx, rundir = out / f"index-{idx_type}", out / f"run-{idx_type}"
    ray = ["--ray-address", args.ray_address] if args.ray_address else []
    parser = build_parser()

    def call(argv: list[str]) -> None:
        ns = parser.parse_args(argv)
        rc = ns.func(ns)
        if rc:
            raise RuntimeError(f"stage `{argv[0]}` failed with exit status {rc}")

    enc_opts = {"shard_size": 10_000, **cfg["encode"]}
    if args.force or not _encode_complete(emb, cfg, enc_opts):
        logger.info("stage encode -> %s", emb)
        call(
            [
                "encode",
                "--corpus",
                cfg["corpus"],
                "--model",
                cfg["model"],
                "--out",
                str(emb),
                *_flags(enc_opts),
                *ray,
            ]
        )
    else:
        logger.info("stage encode: %s is complete, skipping", emb)

    idx_opts = {"type": idx_type, **{k: v for k, v in cfg["index"].items() if k != "type"}}
    manifest_sha = hashlib.sha256((emb / "manifest.json").read_bytes()).hexdigest()
    stamp = {"index": idx_opts, "manifest_sha256": manifest_sha}
    if args.force or _stamp(idx) != stamp or not (idx / "meta.json").exists():
        logger.info("stage index -> %s", idx)
        call(["index", "--embeddings", str(emb), "--out", str(idx), *_flags(idx_opts), *ray])
        _write_stamp(idx, stamp)
    else:
        logger.info("stage index: %s is complete, skipping", idx)

    s_opts = {"k": 100, **cfg["search"]}
    meta_sha = hashlib.sha256((idx / "meta.json").read_bytes()).hexdigest()
    stamp = {
        "search": s_opts,
        "index_meta_sha256": meta_sha,
        "queries": cfg["queries"],
        "qrels": cfg["qrels"],
        "split": cfg["split"],
    }
    if args.force or _stamp(rundir) != stamp or not (rundir / "metrics.json").exists():
        logger.info("stage search + evaluate -> %s", rundir)
        qrels = ["--qrels", cfg["qrels"]] if cfg.get("qrels") else []
        call(
            [
                "search",
                "--index",
                str(idx),
                "--queries",
                cfg["queries"],
                *qrels,
                "--split",
                cfg["split"],
                "--out",
                str(rundir),
                *_flags(s_opts),
                *ray,
            ]
        )
        _write_stamp(rundir, stamp)
    else:
        logger.info("stage search: %s is complete, skipping", rundir)
        metrics = json.loads((rundir / "metrics.json").read_text())
        from colbert_core.evaluation import format_table

        print(format_table(metrics.get("measures", {})))
    print(
        f"\npipeline outputs:\n  embeddings  {emb}\n  index       {idx}\n"
        f"  run         {rundir / 'run.trec'}\n  metrics     {rundir / 'metrics.json'}"
    )
    return 0


def _encode_complete(emb: Path, cfg: dict[str, Any], opts: dict[str, Any]) -> bool:
    try:
        manifest = json.loads((emb / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    recorded = manifest.get("config", {})
    wanted = {
        "corpus": cfg["corpus"],
        "model": cfg["model"],
        "shard_size": opts.get("shard_size"),
        "doc_maxlen": opts.get("doc_maxlen"),
    }
    return bool(manifest.get("complete")) and all(recorded.get(k) == v for k, v in wanted.items())


def _stamp(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / STAGE_STAMP).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_stamp(folder: Path, stamp: dict[str, Any]) -> None:
    from colbert_core.atomic import write_json_atomic

    write_json_atomic(folder / STAGE_STAMP, stamp)
