"""deploy/kuberay/rayservice.yaml validated offline against KubeRay's RayService CRD schema
(tests/deploy/fixtures, see its README), strictly: a field the CRD does not know fails, as
with kubeconform -strict. CEL rules (x-kubernetes-validations) are not evaluated."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from serving.config import load_config
from serving.serve_config import KubeRayOptions, serve_config

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy/kuberay/rayservice.yaml"
CRD_SCHEMA = Path(__file__).parent / "fixtures/rayservice-v1.openapi.json"


def strict_json_schema(node: Any) -> Any:
    """The CRD's OpenAPI v3 schema as a JSON Schema in which an object lists all its fields:
    `additionalProperties: false` wherever the API server would prune unknown fields."""
    if isinstance(node, list):
        return [strict_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    out.pop("nullable", None)
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = strict_json_schema(json.loads(CRD_SCHEMA.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def problems(validator: jsonschema.Draft7Validator, document: dict) -> list[str]:
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_the_manifest_matches_the_rayservice_crd(validator, manifest):
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])  # a DNS-1123 label
    assert problems(validator, manifest) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("spec", "rayClusterConfig", "headGroupSpec", "rayStartParams", "num-cpus"), 2, "is not of type 'string'"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "replica"), 1, "Additional properties"),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0, "template", "spec", "containers", 0, "ports", 0, "containerPort"), "http", "is not of type 'integer'"),
        (("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0, "resource"), {}, "Additional properties"),
    ],
)
def test_the_schema_check_catches_mistakes(validator, manifest, path, value, expected):
    broken = copy.deepcopy(manifest)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(expected in p for p in problems(validator, broken))


def test_serve_config_v2_is_the_generated_serve_config(manifest):
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert embedded == serve_config(load_config(ROOT / "deploy/kuberay/cascade.yaml"))


def test_a_head_group_and_a_gpu_worker_group_with_the_student_on_a_fractional_gpu(manifest):
    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    (workers,) = cluster["workerGroupSpecs"]
    worker = workers["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    args = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["student"]["placement"] == "deployment" and 0 < args["student"]["num_gpus"] < 1


def test_the_metrics_port_is_exposed_on_every_node(manifest):
    cluster = manifest["spec"]["rayClusterConfig"]
    # the port every node exports metrics on is the serving config's, the one source of truth
    port = load_config(ROOT / "deploy/kuberay/cascade.yaml").metrics.port
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["rayStartParams"]["metrics-export-port"] == str(port)
        container = group["template"]["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": port} in container["ports"]
        assert {"name": "serve", "containerPort": 8000} in container["ports"]


def test_the_image_matches_the_manifest(manifest):
    """The Dockerfile installs the manifest's Ray version, points CASCADE_HOME at the shared
    volume and runs as the group that may write to it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert manifest["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray.__version__)}$", dockerfile, re.M)
    home = KubeRayOptions().home_mount
    assert re.search(rf"CASCADE_HOME={re.escape(home)}\b", dockerfile)
    container = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"name": "CASCADE_HOME", "value": home} in container["env"]
    assert {"name": "cascade-home", "mountPath": home} in container["volumeMounts"]
    (user,) = re.findall(r"^USER \d+:(\d+)$", dockerfile, re.M)
    pod = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == int(user)
