"""Every YAML in cluster/ parses and has what its tool requires."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from fixture_paths import REPO

CLUSTER = REPO / "cluster"
LAUNCHER = sorted(CLUSTER.glob("*.yaml"))
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))


def test_every_cluster_yaml_is_covered():
    all_yaml = sorted(CLUSTER.rglob("*.yaml"))
    assert set(all_yaml) == set(LAUNCHER) | set(KUBERAY)
    assert {p.name for p in LAUNCHER} >= {"aws.yaml", "gcp.yaml", "runtime_env.yaml"}
    assert {p.name for p in KUBERAY} >= {"raycluster.yaml", "rayjob-generate.yaml", "rayjob-train.yaml",
                                         "rayservice-teacher.yaml"}


@pytest.mark.parametrize("path", [p for p in LAUNCHER if p.name != "runtime_env.yaml"], ids=lambda p: p.name)
def test_launcher_yaml_passes_rays_own_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # what `ray up` runs before touching a cloud
    assert config["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")
    gpu_types = [t for t, spec in config["available_node_types"].items() if "gpu" in t]
    assert gpu_types and all(config["available_node_types"][t]["min_workers"] == 0 for t in gpu_types)
    assert config["idle_timeout_minutes"] > 0
    assert any("lab-ray" in cmd for cmd in config["setup_commands"])
    assert all("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"] if "--head" in c)


def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    RuntimeEnv(**env)
    assert ".venv/" in env["excludes"]


def _pod_templates(spec: dict):
    yield spec["headGroupSpec"]["template"]
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group)
        assert group["minReplicas"] <= group["maxReplicas"]
        yield group["template"]


def _check_cluster_spec(spec: dict):
    assert spec["rayVersion"] == ray.__version__
    assert "rayStartParams" in spec["headGroupSpec"]
    for template in _pod_templates(spec):
        containers = template["spec"]["containers"]
        assert containers and all(c["image"].startswith(f"rayproject/ray:{ray.__version__}") for c in containers)


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    kind, spec = doc["kind"], doc["spec"]
    if kind == "RayCluster":
        assert spec["enableInTreeAutoscaling"] is True
        _check_cluster_spec(spec)
    elif kind == "RayJob":
        assert spec["entrypoint"].startswith("python -m lab_ray.cli ")
        assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
        _check_cluster_spec(spec["rayClusterSpec"])
    elif kind == "RayService":
        serve = yaml.safe_load(spec["serveConfigV2"])
        app = serve["applications"][0]
        assert app["import_path"] == "ray.serve.llm:build_openai_app"
        llm = app["args"]["llm_configs"][0]
        assert llm["engine_kwargs"]["tensor_parallel_size"] >= 1
        auto = llm["deployment_config"]["autoscaling_config"]
        assert auto["min_replicas"] <= auto["max_replicas"]
        _check_cluster_spec(spec["rayClusterConfig"])
    else:
        pytest.fail(f"unexpected kind {kind}")
