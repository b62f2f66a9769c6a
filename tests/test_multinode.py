"""Jobs on a real multi-node Ray cluster (``ray.cluster_utils.Cluster`` on this machine):
a head that runs no actors, two worker nodes with one CPU each and their own node-local
cache folders, every artifact on the SeaweedFS S3 server, the model read from S3.

These tests replace the session's one-node cluster for the rest of the session, so
``conftest.py`` runs them last. The reference outputs come from the one-node cluster,
computed before it is shut down.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import encode_argv, ensure_bucket, upload_folder, wait_parked

from jobs.cli import main

pytestmark = pytest.mark.multinode

BUCKET = "multinode"
SHARD = 20
MAXLEN = 64


def _manifest_shas(manifest: dict[str, Any]) -> list[str]:
    return [s["sha256"] for s in manifest["shards"]]


def _encode(corpus: Path, out: str, *extra: str) -> int:
    argv = encode_argv(corpus, out, shard_size=SHARD, doc_maxlen=MAXLEN, workers=2)
    return main([*argv, *extra])


def _index(embeddings: str, out: str, *extra: str) -> int:
    argv = ["index", "--embeddings", embeddings, "--out", out, "--type", "ivfpq"]
    return main([*argv, "--workers", "2", *extra])


def _search(index: str, corpus: Path, out: str, *extra: str) -> int:
    argv = ["search", "--index", index, "--queries", str(corpus), "--out", out, "--k", "20"]
    # Small batches, so every actor gets some; the same in every run (the batch shape
    # changes the last bit of a score).
    return main([*argv, "--query-batch-size", "3", *extra])


@dataclass
class Reference:
    """What the one-node cluster produced from the same corpus and model."""

    root: Path
    shard_shas: list[str]
    index_files: dict[str, Any]
    run_trec: str


@dataclass
class MultiNode:
    """The running cluster, its two worker nodes and how to replace a lost one."""

    cluster: Any
    s3: Any
    model_uri: str
    caches: dict[str, Path]
    workers: dict[str, Any] = field(default_factory=dict)  # node id -> Node

    def add_worker(self, name: str) -> None:
        node = self.cluster.add_node(
            num_cpus=1,
            resources={f"worker_{name}": 1},
            # An address of its own: the driver then attaches to the head's raylet (the
            # machine's address), never to a worker node a test is about to kill.
            node_ip_address={"a": "127.0.0.2", "b": "127.0.0.3"}[name],
            env_vars={"COLBERT_BATCH_CACHE": str(self.caches[name])},
        )
        self.workers[node.node_id] = (name, node)

    def lose(self, node_id: str) -> str:
        """Kill every process of a worker node (no graceful shutdown); returns its name."""
        name, node = self.workers.pop(node_id)
        self.cluster.remove_node(node, allow_graceful=False)
        return name

    def get(self, key: str) -> dict[str, Any]:
        return json.loads(self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def reference(
    scifact_subset: Path, ray_address: str, tmp_path_factory: pytest.TempPathFactory
) -> Reference:
    out = tmp_path_factory.mktemp("one-node")
    assert _encode(scifact_subset, str(out / "emb"), "--ray-address", ray_address) == 0
    index_argv = ("--ray-address", ray_address)
    assert _index(str(out / "emb"), str(out / "idx"), *index_argv) == 0
    assert _search(str(out / "idx"), scifact_subset, str(out / "run"), *index_argv) == 0
    manifest = json.loads((out / "emb" / "manifest.json").read_text())
    meta = json.loads((out / "idx" / "meta.json").read_text())
    run_trec = (out / "run/run.trec").read_text()
    return Reference(out, _manifest_shas(manifest), meta["files"], run_trec)


@pytest.fixture(scope="module")
def multinode(
    reference: Reference, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MultiNode]:
    import ray
    from ray.cluster_utils import Cluster

    from colbert_core.encoder import resolve_model_path

    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    upload_folder(client, resolve_model_path("minilm"), BUCKET, "models/minilm")
    ray.shutdown()  # the session's one-node cluster: replaced for the rest of the session
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,  # like a KubeRay head: no actors, no tasks
            "include_dashboard": False,
            # Notice a killed node in ~2 s rather than Ray's default ~30 s.
            "_system_config": {
                "health_check_period_ms": 1000,
                "health_check_failure_threshold": 2,
                "health_check_initial_delay_ms": 0,
            },
        },
    )
    root = tmp_path_factory.mktemp("node-caches")
    nodes = MultiNode(
        cluster, client, f"s3://{BUCKET}/models/minilm", {n: root / n for n in ("a", "b")}
    )
    try:
        nodes.add_worker("a")
        nodes.add_worker("b")
        ray.init(address=cluster.address, log_to_driver=False)
        yield nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def two_workers(multinode: MultiNode) -> Iterator[MultiNode]:
    """The cluster with both worker nodes; a node a test removed is replaced after it."""
    yield multinode
    names = {name for name, _ in multinode.workers.values()}
    for name in ("a", "b"):
        if name not in names:
            multinode.add_worker(name)


def _index_report(out: str) -> dict[str, Any]:
    """The JSON summary `colbert-batch index` printed (Ray may print a lost raylet's last
    log lines to the driver's stdout around it)."""
    block = re.search(r"^\{$.*?^\}$", out, re.S | re.M)
    assert block is not None, out[-2000:]
    return json.loads(block.group(0))


def _lose_a_node_during(
    nodes: MultiNode, hooks: Path, point: str, job: Callable[[], int]
) -> tuple[int | None, str]:
    """Run ``job``; when a worker parks at ``point``, kill every process of its node and
    let the retry (in a new process, on the surviving node) run on.

    Returns the job's exit status and the lost node's id.
    """
    gate = hooks / f"park-{point}"
    gate.write_text("once")
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("rc", job()))
    thread.start()
    try:
        pid = wait_parked(hooks, point)
        lost = (hooks / f"parked-{point}-{pid}").read_text().split()[1]
        nodes.lose(lost)
    finally:
        gate.unlink(missing_ok=True)
        thread.join(timeout=300)
    return result.get("rc"), lost


def test_local_paths_are_refused_on_a_multinode_cluster(
    two_workers: MultiNode,
    reference: Reference,
    scifact_subset: Path,
    tmp_path: Path,
    capsys: Any,
) -> None:
    """A local --out/--index/--embeddings is refused before any work, naming the fix;
    --shared-fs (here the machine's own disk, seen by both nodes) accepts it."""
    out = tmp_path / "local"
    assert _encode(scifact_subset, str(out)) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is a local path" in err and "3 nodes" in err
    assert "s3://" in err and "--shared-fs" in err
    assert not out.exists()  # refused before any work
    assert _index(str(reference.root / "emb"), str(tmp_path / "idx")) == 2
    assert "--embeddings" in capsys.readouterr().err
    assert not (tmp_path / "idx").exists()
    assert _search(str(reference.root / "idx"), scifact_subset, str(tmp_path / "run")) == 2
    assert "--index" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()

    assert _encode(scifact_subset, str(out), "--shared-fs") == 0
    nodes = json.loads((out / "manifest.json").read_text())["summary"]["nodes"]
    assert set(nodes) == set(two_workers.workers)  # one actor on each worker node
    assert {n["node_ip"] for n in nodes.values()} == {"127.0.0.2", "127.0.0.3"}
    assert all(n["shards"] > 0 for n in nodes.values())


def test_pipeline_across_nodes_on_s3_matches_one_node(
    two_workers: MultiNode, reference: Reference, scifact_subset: Path, capsys: Any
) -> None:
    """Encode (model from S3), parallel index add and search all run on both worker
    nodes with every artifact on S3; the outputs equal the one-node run's. The index and
    model are downloaded once per node and shared by the actors there."""
    emb, idx, run = (f"s3://{BUCKET}/pipeline/{n}" for n in ("emb", "idx", "run"))
    model = ("--model", two_workers.model_uri)
    assert _encode(scifact_subset, emb, *model) == 0
    manifest = two_workers.get("pipeline/emb/manifest.json")
    assert _manifest_shas(manifest) == reference.shard_shas
    assert manifest["encoder"]["model_path"] == two_workers.model_uri
    assert set(manifest["summary"]["nodes"]) == set(two_workers.workers)

    capsys.readouterr()
    assert _index(emb, idx) == 0
    printed = _index_report(capsys.readouterr().out)
    assert set(printed["parallel_add_nodes"]) == set(two_workers.workers)
    assert two_workers.get("pipeline/idx/meta.json")["files"] == reference.index_files

    assert _search(idx, scifact_subset, run, "--workers", "4") == 0
    run_trec = two_workers.s3.get_object(Bucket=BUCKET, Key="pipeline/run/run.trec")
    assert run_trec["Body"].read().decode() == reference.run_trec
    per_node = two_workers.get("pipeline/run/metrics.json")["workers"]["nodes"]
    assert set(per_node) == set(two_workers.workers)
    n_files = len(reference.index_files)
    for node in per_node.values():
        assert node["actors"] == 2 and node["queries"] > 0
        # one actor per node downloaded each index file, the other reused it
        assert (node["cache_downloaded"], node["cache_reused"]) == (n_files, n_files)
    for name in ("a", "b"):
        models = [p for p in (two_workers.caches[name] / "models").iterdir() if p.is_dir()]
        assert len(models) == 1 and (models[0] / ".download.json").is_file()


def test_losing_a_node_mid_encode_gives_identical_output(
    two_workers: MultiNode, reference: Reference, scifact_subset: Path, hooks: Path
) -> None:
    out = f"s3://{BUCKET}/lose-encode/emb"
    job = lambda: _encode(scifact_subset, out)  # noqa: E731
    rc, lost = _lose_a_node_during(two_workers, hooks, "encode-shard", job)
    assert rc == 0
    manifest = two_workers.get("lose-encode/emb/manifest.json")
    assert _manifest_shas(manifest) == reference.shard_shas
    assert manifest["summary"]["replaced_workers"] >= 1
    # the lost node's actor died holding its first shard: the survivor encoded them all
    (survivor,) = manifest["summary"]["nodes"]
    assert survivor != lost
    assert manifest["summary"]["nodes"][survivor]["docs"] == manifest["totals"]["docs"]


def test_losing_a_node_mid_search_answers_every_query_once(
    two_workers: MultiNode, reference: Reference, scifact_subset: Path, hooks: Path
) -> None:
    idx = f"s3://{BUCKET}/pipeline/idx"
    if (
        two_workers.s3.list_objects_v2(Bucket=BUCKET, Prefix="pipeline/idx/meta.json")["KeyCount"]
        == 0
    ):
        pytest.skip("needs the index of test_pipeline_across_nodes_on_s3_matches_one_node")
    run = f"s3://{BUCKET}/lose-search/run"
    job = lambda: _search(idx, scifact_subset, run, "--workers", "2")  # noqa: E731
    rc, _ = _lose_a_node_during(two_workers, hooks, "search-batch", job)
    assert rc == 0
    run_trec = two_workers.s3.get_object(Bucket=BUCKET, Key="lose-search/run/run.trec")
    assert run_trec["Body"].read().decode() == reference.run_trec  # each query once, same
    workers = two_workers.get("lose-search/run/metrics.json")["workers"]
    assert workers["replaced_actors"] >= 1 and workers["retried_batches"] >= 1


def test_losing_a_node_mid_parallel_add_retries_the_group(
    two_workers: MultiNode, reference: Reference, hooks: Path, capsys: Any
) -> None:
    emb = f"s3://{BUCKET}/pipeline/emb"
    idx = f"s3://{BUCKET}/lose-index/idx"
    rc, lost = _lose_a_node_during(two_workers, hooks, "index-add-group", lambda: _index(emb, idx))
    assert rc == 0
    assert two_workers.get("lose-index/idx/meta.json")["files"] == reference.index_files
    printed = _index_report(capsys.readouterr().out)
    # both groups were added on the surviving node: the lost one was retried there
    (survivor,) = printed["parallel_add_nodes"]
    assert survivor != lost and printed["parallel_add_nodes"][survivor]["groups"] == 2
