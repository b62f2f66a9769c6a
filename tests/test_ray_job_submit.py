"""`ray job submit --working-dir . -- colbert-batch pipeline CONFIG` against a real Ray head
(`ray start --head`, dashboard on 127.0.0.1, token authentication on), outputs on the
SeaweedFS S3 server; `ray job stop` mid-encode, then a resubmit that resumes.

Marked ``multinode`` so it runs after the other tests (see ``conftest.py``): it starts a
second Ray cluster on this machine and is stopped by its own process group, never by
``ray stop`` (which would kill every Ray process here).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import _free_ports, ensure_bucket, wait_parked

from jobs.cluster.hooks import ENV as HOOKS_ENV

pytestmark = pytest.mark.multinode

REPO = Path(__file__).resolve().parents[1]
BUCKET = "jobsubmit"


@dataclass
class RayHead:
    """A `ray start --head --block` process group and the environment to talk to it."""

    proc: subprocess.Popen
    address: str
    env: dict[str, str]
    hooks: Path

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        ray_cli = str(Path(sys.executable).parent / "ray")
        return subprocess.run(
            [ray_cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def submit(
        self, submission_id: str, config: Path, *, wait: bool
    ) -> subprocess.CompletedProcess:
        args = ["job", "submit", "--address", self.address, "--working-dir", str(REPO)]
        args += ["--submission-id", submission_id, *([] if wait else ["--no-wait"])]
        return self.ray(*args, "--", "colbert-batch", "pipeline", str(config))

    def status(self, submission_id: str) -> str:
        out = self.ray("job", "status", "--address", self.address, submission_id)
        text = (out.stdout + out.stderr).lower()  # "Job 'x' was stopped", "... succeeded"
        for word in ("succeeded", "stopped", "failed", "running", "pending"):
            if word in text:
                return word.upper()
        return text


@pytest.fixture(scope="module")
def ray_head(_s3_environment: Any) -> Iterator[RayHead]:
    # Short: Ray's unix sockets live under it (108-character limit).
    tmp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    hooks = tmp / "hooks"
    hooks.mkdir()
    gcs, dashboard, client, agent = _free_ports(4)
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # Token authentication, as on a production cluster: the head and every client
        # read the same token.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        HOOKS_ENV: str(hooks),
    }
    env.pop("RAY_ADDRESS", None)
    argv = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block"]
    argv += ["--port", str(gcs), "--num-cpus", "2", "--temp-dir", str(tmp)]
    argv += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1"]
    argv += ["--dashboard-port", str(dashboard), "--ray-client-server-port", str(client)]
    # The agent's HTTP port defaults to 52365: taken by the session's own Ray cluster.
    argv += ["--dashboard-agent-listen-port", str(agent), "--disable-usage-stats"]
    with (tmp / "head.log").open("w") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
    head = RayHead(proc, f"http://127.0.0.1:{dashboard}", env, hooks)
    try:
        deadline = time.monotonic() + 180
        # Ready when a job can be submitted: the dashboard answers before its agent does.
        probe = ("job", "submit", "--address", head.address, "--", "true")
        while (answer := head.ray(*probe, timeout=120)).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = (tmp / "head.log").read_text()[-2000:]
                pytest.fail(f"ray head did not start: {answer.stderr[-2000:]}\n{log}")
            time.sleep(1)
        yield head
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(2)
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def test_ray_job_submit_runs_the_pipeline_and_a_stopped_job_resumes(
    ray_head: RayHead, s3_server: Any, scifact_subset: Path, tmp_path: Path
) -> None:
    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"dataset: {scifact_subset}\nmodel: minilm\nout: s3://{BUCKET}/scifact\n"
        "encode: {shard_size: 20, doc_maxlen: 64}\nindex: {type: flat}\nsearch: {k: 20}\n"
    )

    def s3_json(key: str) -> dict[str, Any]:
        return json.loads(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    # 1. Submit; the driver parks after recording its second shard; `ray job stop` it.
    gate = ray_head.hooks / "park-encode-recorded"
    gate.write_text("2")
    first = ray_head.submit("colbert-first", config, wait=False)
    assert first.returncode == 0, first.stderr[-2000:]
    try:
        wait_parked(ray_head.hooks, "encode-recorded", timeout=240)
        stop = ray_head.ray("job", "stop", "--address", ray_head.address, "colbert-first")
        assert stop.returncode == 0, stop.stderr[-2000:]
    finally:
        gate.unlink()
    assert ray_head.status("colbert-first") == "STOPPED"
    partial = s3_json("scifact/embeddings/manifest.json")
    assert partial["complete"] is False and len(partial["shards"]) >= 2

    # 2. Resubmit the same command: it resumes the encode and runs every stage.
    second = ray_head.submit("colbert-second", config, wait=True)
    assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
    assert ray_head.status("colbert-second") == "SUCCEEDED"
    assert "pipeline outputs:" in second.stdout
    manifest = s3_json("scifact/embeddings/manifest.json")
    assert manifest["complete"] is True
    assert manifest["summary"]["shards_skipped"] >= 2  # resumed, not re-encoded
    assert manifest["totals"]["docs"] == sum(1 for _ in (scifact_subset / "corpus.jsonl").open())
    metrics = s3_json("scifact/run-flat/metrics.json")
    assert metrics["queries"] == 30 and metrics["measures"]["nDCG@10"] > 0.5
