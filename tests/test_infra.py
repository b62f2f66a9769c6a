"""Cluster manifests validated offline: KubeRay's JSON Schemas (../shared/schemas/kuberay),
the Go-side rules the schemas do not encode, and Ray's own `ray up` validation."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    folder = REPO.parent / "shared" / "schemas" / "kuberay"
    if not folder.is_dir():
        pytest.skip("../shared/schemas/kuberay not found")
    return {
        "RayCluster": json.loads((folder / "raycluster_v1.json").read_text()),
        "RayJob": json.loads((folder / "rayjob_v1.json").read_text()),
    }


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kuberay_problems(doc: dict[str, Any], schemas: dict[str, Any]) -> list[str]:
    """Schema errors plus the KubeRay Go-side rules (validation.go) the schema lacks."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schemas[doc["kind"]])
    problems = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
    cluster = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec")
    if cluster:
        groups = [("head", cluster["headGroupSpec"])] + [
            (g.get("groupName", "?"), g) for g in cluster.get("workerGroupSpecs", [])
        ]
        for name, group in groups:
            if not group.get("template", {}).get("spec", {}).get("containers"):
                problems.append(f"group {name}: needs at least one container")
        for group in cluster.get("workerGroupSpecs", []):
            lo, n = group.get("minReplicas", 0), group.get("replicas", 0)
            hi = group.get("maxReplicas", 2**31 - 1)
            if not lo <= n <= hi:
                problems.append(
                    f"group {group['groupName']}: need minReplicas <= replicas <= maxReplicas"
                )
    if doc["kind"] == "RayJob" and not (cluster or doc["spec"].get("clusterSelector")):
        problems.append("a RayJob needs rayClusterSpec or clusterSelector")
    return problems


def test_raycluster_validates(schemas: dict[str, Any]) -> None:
    (doc,) = _docs(INFRA / "raycluster.yaml")
    assert kuberay_problems(doc, schemas) == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["spec"]["headGroupSpec"].update(rayStartParam={}), "rayStartParam"),
        (lambda d: d["spec"]["workerGroupSpecs"][0].update(replicas=9), "minReplicas <= replicas"),
        (lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"].update(containers=[]),
         "at least one container"),
    ],
)  # fmt: skip
def test_a_misspelt_or_inconsistent_raycluster_fails(
    schemas: dict[str, Any], edit: Any, expected: str
) -> None:
    (doc,) = _docs(INFRA / "raycluster.yaml")
    broken = copy.deepcopy(doc)
    edit(broken)
    problems = kuberay_problems(broken, schemas)
    assert any(expected in p for p in problems), problems


def test_nightly_cronjob_creates_a_valid_rayjob(schemas: dict[str, Any]) -> None:
    docs = {d["kind"]: d for d in _docs(INFRA / "nightly-cronjob.yaml")}
    assert set(docs) == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "CronJob"}
    rayjob = yaml.safe_load(docs["ConfigMap"]["data"]["rayjob.yaml"])
    assert kuberay_problems(rayjob, schemas) == []
    assert rayjob["spec"]["entrypoint"].startswith("colbert-batch nightly ")
    suite = rayjob["spec"]["entrypoint"].split()[2].removeprefix("/app/")
    assert (REPO / suite).is_file()  # the suite ships in the image (infra/Dockerfile)
    cron = docs["CronJob"]
    assert (cron["apiVersion"], cron["spec"]["concurrencyPolicy"]) == ("batch/v1", "Forbid")
    assert re.fullmatch(r"(\S+\s+){4}\S+", cron["spec"]["schedule"])
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mount = container["volumeMounts"][0]
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert container["command"][-1] == f"{mount['mountPath']}/rayjob.yaml"
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    (rule,) = docs["Role"]["rules"]
    assert "rayjobs" in rule["resources"] and "create" in rule["verbs"]


def test_a_misspelt_rayjob_field_fails(schemas: dict[str, Any]) -> None:
    docs = {d["kind"]: d for d in _docs(INFRA / "nightly-cronjob.yaml")}
    rayjob = yaml.safe_load(docs["ConfigMap"]["data"]["rayjob.yaml"])
    rayjob["spec"]["entrypoin"] = rayjob["spec"].pop("entrypoint")
    assert any("entrypoin" in p for p in kuberay_problems(rayjob, schemas))


def test_ray_up_config_validates() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((INFRA / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    broken = copy.deepcopy(config)
    broken["max_workerz"] = broken.pop("max_workers")
    with pytest.raises(Exception, match="max_workerz"):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("name", ["nightly-scifact.yaml", "nightly-scifact-s3.yaml"])
def test_example_suites_load(name: str) -> None:
    from colbert_core.nightly import load_suite

    suite = load_suite(str(REPO / "jobs" / "configs" / name))
    assert [c.name for c in suite.checks] == ["exact", "ivfpq", "bm25-rerank"]
    assert [c.kind for c in suite.checks] == ["exact", "index", "rerank"]


def _kubernetes_docs() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object under infra/ (RayJobs kept in ConfigMaps included)."""
    found = []
    for path in sorted(INFRA.glob("*.yaml")):
        if path.name == "cluster.yaml":  # `ray up`, validated by Ray itself below
            continue
        for doc in _docs(path):
            found.append((path.name, doc))
            for key, text in (doc.get("data") or {}).items() if doc["kind"] == "ConfigMap" else ():
                if key.endswith(".yaml"):
                    found.append((f"{path.name}:{key}", yaml.safe_load(text)))
    return found


def test_every_kubernetes_manifest_validates(schemas: dict[str, Any]) -> None:
    docs = _kubernetes_docs()
    kinds = {doc["kind"] for _, doc in docs}
    assert {"RayCluster", "RayJob", "CronJob"} <= kinds
    for where, doc in docs:
        assert doc.get("apiVersion") and doc.get("metadata"), where
        if doc["kind"] in schemas:
            assert kuberay_problems(doc, schemas) == [], where


def test_the_pipeline_rayjob_runs_a_shipped_s3_config(schemas: dict[str, Any]) -> None:
    (job,) = _docs(INFRA / "rayjob-pipeline.yaml")
    command, sub, config = job["spec"]["entrypoint"].split()
    assert (command, sub) == ("colbert-batch", "pipeline")
    stages = _load_stages(REPO / config.removeprefix(f"{_workdir()}/"))
    # No node shares a disk: everything workers touch is on S3.
    assert stages.encode.encode.out.startswith("s3://")
    assert stages.index.embeddings.startswith("s3://")
    assert stages.search.index.startswith("s3://")
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    broken = copy.deepcopy(job)
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2  # misspelt
    assert any("replica" in p for p in kuberay_problems(broken, schemas))


def _load_stages(path: Path) -> Any:
    from jobs.commands.pipeline import load_stages

    return load_stages(str(path))


def _workdir() -> str:
    (line,) = [
        ln for ln in (INFRA / "Dockerfile").read_text().splitlines() if ln.startswith("WORKDIR")
    ]
    return line.split()[1]


def test_files_named_by_manifests_are_in_the_image() -> None:
    """Entrypoints name files by their path in the image (the Dockerfile's WORKDIR, where
    it copies jobs/): each must exist in the repository and be copied."""
    workdir = _workdir()
    copied = [ln.split()[1] for ln in (INFRA / "Dockerfile").read_text().splitlines()
              if ln.startswith("COPY")]  # fmt: skip
    named = re.findall(r"(/\S+\.ya?ml)", "\n".join(p.read_text() for p in INFRA.glob("*.yaml")))
    in_image = [n for n in named if n.startswith(f"{workdir}/")]
    assert in_image, "no manifest names a file in the image"
    for name in in_image:
        relative = name.removeprefix(f"{workdir}/")
        assert (REPO / relative).is_file(), name
        assert relative.split("/")[0] in copied, f"{name}: not copied by the Dockerfile"


def _pip_installs(text: str) -> list[str]:
    """The package arguments of each `pip install` in a Makefile recipe or Dockerfile."""
    installs = []
    for match in re.finditer(r"pip install ([^&\n]+)", text):
        args = [a.strip("\"'") for a in match.group(1).split() if not a.startswith("-")]
        installs.append(" ".join(args))
    return installs


def test_the_image_installs_the_project_like_make_setup() -> None:
    """Same torch pin, torch first, then the project with extras that the Makefile's
    include (dev pulls in the image's `cluster` extra), on the Python pyproject allows."""
    import tomllib

    makefile = (REPO / "Makefile").read_text()
    dockerfile = (INFRA / "Dockerfile").read_text()
    torch_pin = re.search(r"^TORCH \?= (\S+)", makefile, re.M).group(1)
    assert re.search(rf'^ARG TORCH="{re.escape(torch_pin)}"', dockerfile, re.M)
    make_installs = [i for i in _pip_installs(makefile) if "pip" not in i.split()]
    assert make_installs == ["$(TORCH)", ".[dev]"]
    docker_installs = _pip_installs(dockerfile)
    assert docker_installs[:2] == ["${TORCH}", ".[cluster]"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "colbert-batch[cluster]" in project["optional-dependencies"]["dev"]
    assert any(d.startswith("ray[default]") for d in project["optional-dependencies"]["cluster"])
    python = re.search(r"py(\d)(\d+)", re.search(r"^ARG BASE=(\S+)", dockerfile, re.M).group(1))
    assert project["requires-python"] == ">=3.11" and python.groups() == ("3", "11")
    ray_pin = re.search(r"rayproject/ray:([\d.]+)", dockerfile).group(1)
    for name in ("raycluster.yaml", "rayjob-pipeline.yaml"):
        (doc,) = _docs(INFRA / name)
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == ray_pin, name
