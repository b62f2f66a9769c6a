"""`colbert-batch pipeline CONFIG.yaml`: encode -> index -> search -> evaluate.

The YAML names the data, the model and the output folder (local or ``s3://``), and one
section per stage whose keys are that stage's options (the command-line options without
their dashes). Each stage is built as that command's config and run through its ``run()``.

A stage is skipped when its artifact says it is complete for the same inputs and
settings: the manifest for the encode output (:meth:`Manifest.is_complete_for`),
``meta.json`` for the index (:meth:`IndexMeta.is_complete_for`: same options, built from
the current manifest), ``metrics.json`` for the run (:meth:`RunMetrics.is_complete_for`:
same settings, searched in the current index). ``--force`` re-runs every stage.

Example (every key but ``dataset``, or ``corpus`` + ``queries``, is optional)::

    dataset: beir:scifact        # corpus, queries and qrels from one BEIR source
    model: minilm
    out: out/demo                # or s3://bucket/prefix
    encode: {shard_size: 1000, doc_maxlen: 256}
    index: {type: ivfpq}
    search: {k: 100, k_prime: 64, max_candidates: 256}
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

from colbert_core.config import allowed_keys, config_from_mapping, read_yaml_mapping
from colbert_core.embeddings import Manifest
from colbert_core.errors import ConfigError
from colbert_core.evaluation import RunMetrics, format_table
from colbert_core.index import index_exists, read_index_meta, read_index_meta_with_sha256
from colbert_core.storage import join_uri

from . import encode, index, search
from .encode import add_shared_fs_argument

logger = logging.getLogger(__name__)

HELP = "encode -> index -> search -> evaluate from a YAML"

#: Top-level keys of a pipeline YAML (the stage sections hold the stages' own options).
TOP_LEVEL = ("dataset", "corpus", "queries", "qrels", "split", "model", "out")
SECTIONS = ("encode", "index", "search")


class PipelineConfigError(ConfigError):
    """The pipeline YAML is unreadable, or a key is missing, unknown or invalid."""


@dataclass(frozen=True)
class Config:
    config: str
    force: bool = False
    ray_address: str | None = None
    shared_fs: bool = False


@dataclass(frozen=True)
class Stages:
    """The three stage configs a pipeline YAML describes."""

    encode: encode.Config
    index: index.Config
    search: search.Config


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline YAML file")
    p.add_argument("--ray-address", help="join this Ray cluster")
    add_shared_fs_argument(p)
    p.add_argument("--force", action="store_true", help="re-run every stage")


def load_stages(path: str, ray_address: str | None = None, shared_fs: bool = False) -> Stages:
    """Read a pipeline YAML into the stage configs.

    Raises
    ------
    PipelineConfigError
        Naming the file (and line, for invalid YAML), the section and the key.
    """
    raw = _read_yaml(path)
    unknown = set(raw) - set(TOP_LEVEL) - set(SECTIONS)
    if unknown:
        raise PipelineConfigError(
            f"{path}: unknown keys {sorted(unknown)}; known: {sorted(TOP_LEVEL + SECTIONS)}"
        )
    dataset = raw.get("dataset")
    corpus, queries = raw.get("corpus", dataset), raw.get("queries", dataset)
    if not corpus or not queries:
        raise PipelineConfigError(f"{path}: set `dataset`, or both `corpus` and `queries`")
    qrels = raw.get("qrels", dataset if queries == dataset else None)
    out = str(raw.get("out", "out/pipeline"))
    # Where the cluster is and whether its disks are shared describe the deployment, not
    # the experiment: command-line options, never YAML keys.
    cluster = {"ray_address": ray_address} if ray_address else {}
    cluster |= {"shared_fs": True} if shared_fs else {}
    index_type = _section(raw, "index", path).get("type", "ivfpq")
    fixed = {
        "encode": {
            "corpus": corpus,
            "model": raw.get("model", "minilm"),
            "out": join_uri(out, "embeddings"),
        }
        | cluster,
        "index": {
            "embeddings": join_uri(out, "embeddings"),
            "out": join_uri(out, f"index-{index_type}"),
        }
        | cluster,
        "search": {
            "index": join_uri(out, f"index-{index_type}"),
            "out": join_uri(out, f"run-{index_type}"),
            "queries": queries,
            "qrels": qrels,
            "split": raw.get("split", "test"),
        }
        | cluster,
    }
    modules = {"encode": encode, "index": index, "search": search}
    built = {
        name: _stage_config(
            modules[name].Config, _section(raw, name, path), fixed[name], path, name
        )
        for name in SECTIONS
    }
    return Stages(**built)


def _read_yaml(path: str) -> dict[str, Any]:
    return read_yaml_mapping(path, "pipeline config", PipelineConfigError)


def _section(raw: dict[str, Any], name: str, path: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise PipelineConfigError(f"{path}: `{name}` must be a mapping")
    return value


def _stage_config(
    cls: type, section: dict[str, Any], fixed: dict[str, Any], path: str, name: str
) -> Any:
    """One stage's config: the section's keys plus what the top level fixes."""
    allowed = allowed_keys(cls) - set(fixed) - {"ray_address", "shared_fs"}
    unknown = set(section) - allowed
    if unknown:
        raise PipelineConfigError(
            f"{path}: unknown key(s) {', '.join(sorted(unknown))} in section `{name}`; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    try:
        return config_from_mapping(cls, {**section, **fixed}, f"{path}: {name}")
    except ConfigError as exc:
        raise PipelineConfigError(str(exc)) from exc


def run(config: Config) -> Stages:
    stages = load_stages(config.config, config.ray_address, config.shared_fs)
    _encode_stage(stages.encode, config.force)
    _index_stage(stages.index, config.force)
    _search_stage(stages.search, config.force)
    return stages


def _encode_stage(job: encode.Config, force: bool) -> None:
    manifest = encode.ensure_encoded(job, force=force)
    if manifest is not None:
        encode.report(job, manifest)


def _index_stage(job: index.Config, force: bool) -> None:
    _, manifest_sha = Manifest.load_with_sha256(job.embeddings)
    complete = index_exists(job.out) and read_index_meta(job.out).is_complete_for(
        job.index.to_dict(), manifest_sha
    )
    if force or not complete:
        logger.info("stage index -> %s", job.out)
        index.report(job, index.run(job))
    else:
        logger.info("stage index: %s is complete, skipping", job.out)


def _search_stage(job: search.Config, force: bool) -> None:
    meta, meta_sha = read_index_meta_with_sha256(job.index)
    params = search.run_params(job, meta)
    metrics = RunMetrics.load(job.out)
    source = {"index_meta_sha256": meta_sha}
    if force or metrics is None or not metrics.is_complete_for(params, source):
        logger.info("stage search + evaluate -> %s", job.out)
        search.report(job, search.run(job))
    else:
        logger.info("stage search: %s is complete, skipping", job.out)
        print(format_table(metrics.measures))


def report(config: Config, stages: Stages) -> None:
    run_folder = stages.search.out
    print(
        f"\npipeline outputs:\n  embeddings  {stages.encode.encode.out}\n"
        f"  index       {stages.index.out}\n"
        f"  run         {join_uri(run_folder, 'run.trec')}\n"
        f"  metrics     {join_uri(run_folder, 'metrics.json')}"
    )
