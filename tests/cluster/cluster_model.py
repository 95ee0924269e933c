"""What the cluster files mean to Ray and KubeRay, computed without a cloud.

- Node types as the autoscaler sees them: for the launcher, `available_node_types`
  after the provider's own fill-in (Ray's AWS code run against recorded
  DescribeInstanceTypes data; GCP fills in nothing for GPU machines); for KubeRay,
  Ray's `autoscaling_config` conversion of the RayCluster spec.
- Placement bundles as Ray builds them: the teacher's from the profile through
  Ray Serve LLM's own LLMConfig / GPUAccelerator / bundle merge, the train
  workers' from Ray Train's ScalingConfig.
- The Ray container's command as KubeRay v1.7.0's operator builds it
  (ray-operator/controllers/ray/common/pod.go), to run with stub executables.

Where a Ray function cannot be imported here (it sits in a module that needs boto3
or vLLM), its source is read from the installed Ray and compiled alone, so the
code that runs is Ray's, not a copy.
"""

from __future__ import annotations

import ast
import copy
import importlib
import json
import logging
import re
import shlex
from pathlib import Path
from typing import Any, Callable

import ray
import yaml

from fixture_paths import REPO

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
HERE = Path(__file__).resolve().parent
RAY_DIR = Path(ray.__file__).parent
LAUNCHER_FILES = sorted(p for p in CLUSTER.glob("*.yaml") if p.name != "runtime_env.yaml")
KUBERAY_FILES = sorted(KUBERAY.glob("*.yaml"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_function(relpath: str, name: str, class_name: str | None = None, **env) -> Callable:
    """Compile one function from the installed Ray's source, with the given globals."""
    source = (RAY_DIR / relpath).read_text()
    tree = ast.parse(source)
    scope = tree.body
    if class_name:
        scope = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name).body
    node = next(n for n in scope if isinstance(n, ast.FunctionDef) and n.name == name)
    node = copy.deepcopy(node)
    node.decorator_list = []
    module = ast.Module(body=[node], type_ignores=[])
    namespace: dict[str, Any] = {"__name__": f"ray_source:{relpath}", **env}
    exec(compile(module, f"{RAY_DIR / relpath}", "exec"), namespace)  # noqa: S102 - Ray's own code
    return namespace[name]


# ---------------------------------------------------------------- node types

# Recorded DescribeInstanceTypes fields for the instance types used in cluster/aws.yaml
# (values from AWS's instance type pages; what Ray's AWS fill-in reads).
EC2_INSTANCE_TYPES = {k: v for k, v in json.loads((HERE / "ec2_instance_types.json").read_text()).items()
                      if not k.startswith("_")}

# GCP machine types used in cluster/gcp.yaml: vCPUs, GPUs and the GPU's NVML device name
# (A2 machine types come with their GPUs attached). From GCP's machine type pages.
GCP_MACHINE_TYPES = {
    "n2-standard-8": {"CPU": 8},
    "n2-standard-16": {"CPU": 16},
    "a2-highgpu-4g": {"CPU": 48, "GPU": 4, "gpu_name": "NVIDIA A100-SXM4-40GB"},
    "a2-highgpu-8g": {"CPU": 96, "GPU": 8, "gpu_name": "NVIDIA A100-SXM4-40GB"},
    "a2-ultragpu-8g": {"CPU": 96, "GPU": 8, "gpu_name": "NVIDIA A100-SXM4-80GB"},
}

# NVML device names of the GPUs behind EC2's GpuInfo names used here.
EC2_GPU_NVML_NAME = {"A100": "NVIDIA A100-SXM4-40GB", "L40S": "NVIDIA L40S", "H100": "NVIDIA H100 80GB HBM3"}


def ray_accelerator_label(nvml_name: str) -> str:
    """The accelerator_type Ray's NVIDIA manager sets on a node with this GPU."""
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    return NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(nvml_name)


def aws_fillout(config: dict) -> dict:
    """Ray's AWSNodeProvider.fillout_available_node_types_resources on recorded EC2 data."""
    from ray._private import ray_constants

    fill = ray_function(
        "autoscaler/_private/aws/node_provider.py", "fillout_available_node_types_resources",
        class_name="AWSNodeProvider", copy=copy, ray=ray, ray_constants=ray_constants,
        logger=logging.getLogger("aws_fillout"), Dict=dict, Any=Any,
        list_ec2_instances=lambda region, credentials=None: copy.deepcopy(list(EC2_INSTANCE_TYPES.values())))
    importlib.import_module("ray._private.accelerators")  # fill() calls get_all_accelerator_managers
    return fill(config)


def launcher_node_types(config: dict) -> dict[str, dict]:
    """{node type: {"resources": ..., "max_workers": ..., "gpu_name": ...}} as the autoscaler plans with."""
    provider = config["provider"]["type"]
    if provider == "aws":
        filled = aws_fillout(config)["available_node_types"]
    elif provider == "gcp":
        filled = copy.deepcopy(config["available_node_types"])  # Ray's GCP fill-in only adds TPU pods
    else:
        raise AssertionError(f"no node type model for provider {provider}")
    out = {}
    for name, spec in filled.items():
        node_config = spec["node_config"]
        if provider == "aws":
            gpus = EC2_INSTANCE_TYPES[node_config["InstanceType"]].get("GpuInfo", {}).get("Gpus", [])
            gpu_name = EC2_GPU_NVML_NAME[gpus[0]["Name"]] if gpus else None
        else:
            gpu_name = GCP_MACHINE_TYPES[node_config["machineType"]].get("gpu_name")
        is_head = name == config["head_node_type"]
        out[name] = {"resources": dict(spec["resources"]), "max_workers": 0 if is_head else spec["max_workers"],
                     "gpu_name": gpu_name, "head": is_head}
    return out


def kuberay_node_types(cluster_spec: dict) -> dict[str, dict]:
    """Ray's own conversion of a RayCluster spec into autoscaler node types."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    cr = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
          "metadata": {"name": "lab-ray", "namespace": "default"}, "spec": copy.deepcopy(cluster_spec)}
    config = _derive_autoscaling_config_from_ray_cr(cr)
    groups = {"headgroup": cluster_spec["headGroupSpec"],
              **{g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]}}
    out = {}
    for name, spec in config["available_node_types"].items():
        selector = groups[name]["template"]["spec"].get("nodeSelector", {})
        product = selector.get("nvidia.com/gpu.product")
        # GPU feature discovery writes the NVML name with spaces as dashes.
        gpu_name = product.replace("-", " ", 1) if product else None
        out[name] = {"resources": dict(spec["resources"]), "max_workers": spec["max_workers"],
                     "gpu_name": gpu_name, "head": name == "headgroup"}
    return out


# ------------------------------------------------------------------- bundles

def teacher_bundles(llm_config_kwargs: dict) -> tuple[list[dict], str]:
    """(placement bundles, strategy) of one ray.serve.llm replica, as Ray Serve LLM builds them
    (LLMServer.get_deployment_options without vLLM: GPUAccelerator.default_bundles merged
    with the replica actor's own bundle)."""
    from ray.llm._internal.serve.core.configs.accelerators import GPUAccelerator
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    llm = LLMConfig(**llm_config_kwargs)  # Ray's validation (accelerator type names included)
    assert not llm.placement_group_config, "placement_group_config: extend teacher_bundles"
    engine = llm.engine_kwargs
    devices = int(engine.get("tensor_parallel_size", 1)) * int(engine.get("pipeline_parallel_size", 1))
    child = GPUAccelerator().default_bundles(num_devices=devices, accelerator_type_str=llm.accelerator_type)
    actor_opts = llm.deployment_config.get("ray_actor_options", {})
    replica = {"CPU": actor_opts.get("num_cpus", 1), "GPU": actor_opts.get("num_gpus", 0),
               **actor_opts.get("resources", {})}
    merge = ray_function("llm/_internal/serve/core/server/llm_server.py",
                         "_merge_replica_actor_and_child_actor_bundles", copy=copy, List=list, Dict=dict)
    return merge(child, replica), "PACK"  # VLLMEngineConfig.placement_strategy without placement_group_config


def profile_llm_config_kwargs(teacher_cfg) -> dict:
    """The LLMConfig arguments of a vllm teacher profile (fields of conf/teacher/<name>.yaml)."""
    v = teacher_cfg.vllm
    kwargs = {
        "model_loading_config": {"model_id": teacher_cfg.model, "model_source": v.model_source},
        "engine_kwargs": {"tensor_parallel_size": v.tensor_parallel_size, "max_model_len": v.max_model_len,
                          "gpu_memory_utilization": v.gpu_memory_utilization,
                          "enable_prefix_caching": v.enable_prefix_caching, **dict(v.engine_kwargs)},
        "deployment_config": {
            "autoscaling_config": {"min_replicas": teacher_cfg.autoscaling.min_replicas,
                                   "max_replicas": teacher_cfg.autoscaling.max_replicas,
                                   "target_ongoing_requests": teacher_cfg.autoscaling.target_ongoing_requests},
            "max_ongoing_requests": v.max_ongoing_requests},
    }
    if v.accelerator_type:
        kwargs["accelerator_type"] = v.accelerator_type
    return kwargs


def train_bundles(train_cfg) -> list[dict]:
    """One bundle per Ray Train worker, as lab_ray/train/phases.py configures ScalingConfig."""
    from ray.train import ScalingConfig

    sc = ScalingConfig(num_workers=int(train_cfg.num_workers), use_gpu=bool(train_cfg.use_gpu),
                       resources_per_worker={"CPU": float(train_cfg.cpus_per_worker)})
    return [dict(sc._resources_per_worker_not_none) for _ in range(int(train_cfg.num_workers))]


def fits(bundle: dict, resources: dict) -> bool:
    return all(resources.get(k, 0) >= v for k, v in bundle.items() if v > 0)


def total(bundles: list[dict]) -> dict:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0) + v
    return out


def node_types_holding(bundles: list[dict], node_types: dict[str, dict]) -> list[str]:
    """Worker node types (max_workers > 0) on one node of which all the bundles fit together."""
    need = total(bundles)
    return [name for name, nt in node_types.items() if nt["max_workers"] > 0 and fits(need, nt["resources"])]


# ------------------------------------------------------- lab-ray commands in files

COMMENT_COMMAND = re.compile(r"^#\s{2,}(?:[A-Z_]+=\S+\s+)*(lab-ray\s.*)$")


def commented_commands(path: Path) -> list[str]:
    """`lab-ray ...` command lines in a file's comments (the usage header)."""
    return [m.group(1) for line in path.read_text().splitlines() if (m := COMMENT_COMMAND.match(line.strip()))]


def split_lab_ray(argv: list[str]) -> list[tuple[list[str], list[str]]]:
    """argv after `lab-ray` (or `python -m lab_ray.cli`) -> [(command words, overrides)].
    `submit [opts] -- CMD ...` gives two: submit's own and the submitted command's."""
    if "--" in argv and argv[0] == "submit":
        cut = argv.index("--")
        return split_lab_ray(argv[:cut]) + split_lab_ray(argv[cut + 1:])
    words, overrides = [], []
    for tok in argv:
        if tok.startswith("-"):
            words.append(tok)  # a flag (checked against the CLI's help)
        elif "=" in tok:
            overrides.append(tok)
        else:
            words.append(tok)
    return [(words, overrides)]


def lab_ray_argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[:1] == ["lab-ray"]:
        return argv[1:]
    if argv[:3] == ["python", "-m", "lab_ray.cli"]:
        return argv[3:]
    raise AssertionError(f"not a lab-ray command: {command}")


# ------------------------------------------------------------ KubeRay operator

HEAD_FQDN = "lab-ray-head-svc.default.svc.cluster.local"


def _quantity_int(value) -> int:
    from ray.autoscaler._private.kuberay.utils import parse_quantity

    return int(parse_quantity(str(value)))


def ray_start_params(group: dict, head: bool, autoscaling: bool) -> dict[str, str]:
    """rayStartParams after KubeRay's defaults (DefaultHeadPodTemplate / DefaultWorkerPodTemplate,
    updateRayStartParamsResources, setMissingRayStartParams, generateRayStartCommand)."""
    params = {k: str(v) for k, v in (group.get("rayStartParams") or {}).items()}
    if head and autoscaling:
        params["no-monitor"] = "true"
    group_resources = group.get("resources") or {}
    custom = {}
    for name, quantity in group_resources.items():
        low = name.lower()
        if low == "cpu":
            params["num-cpus"] = str(_quantity_int(quantity))
        elif low == "memory":
            params["memory"] = str(_quantity_int(quantity))
        elif low == "gpu" or low.endswith("/gpu"):
            params["num-gpus"] = str(_quantity_int(quantity))
        else:
            from ray.autoscaler._private.kuberay.utils import parse_quantity

            value = float(parse_quantity(str(quantity)))
            custom[name] = int(value) if value.is_integer() else value
    if custom:  # Go's json.Marshal of map[string]float64: sorted keys, no spaces, 1 not 1.0
        params["resources"] = "'" + json.dumps(custom, separators=(",", ":"), sort_keys=True) + "'"
    if not head:
        params.setdefault("address", f"{HEAD_FQDN}:6379")
    else:
        params.setdefault("dashboard-host", "0.0.0.0")
    params.setdefault("metrics-export-port", "8080")
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", "52365")
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    requests = group["template"]["spec"]["containers"][0].get("resources", {}).get("requests", {})
    if "num-cpus" not in params:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu:
            params["num-cpus"] = str(_quantity_int(cpu))
    if "memory" not in params and limits.get("memory"):
        params["memory"] = str(_quantity_int(limits["memory"]))
    if "num-gpus" not in params:
        for key in sorted(limits):
            if key.endswith("/gpu") and _quantity_int(limits[key]) > 0:
                params["num-gpus"] = str(_quantity_int(limits[key]))
    return params


def convert_param_map(params: dict[str, str]) -> str:
    """pod.go convertParamMap: sorted flags; "true" is a bare switch, "false" drops it."""
    special = {"log-color", "include-dashboard", "include-log-monitor"}
    out = ""
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in special:
            if value.lower() == "true":
                out += f" --{key} "
        else:
            out += f" --{key}={value} "
    return out


def container_command(group: dict, head: bool, autoscaling: bool) -> tuple[list[str], list[str]]:
    """(command, args) of the Ray container as the operator writes them into the pod (BuildPod)."""
    container = group["template"]["spec"]["containers"][0]
    cmd = "".join(f" {v} " for v in container.get("command") or [])
    cmd += "".join(f" {v} " for v in container.get("args") or [])
    params = ray_start_params(group, head, autoscaling)
    start = ("ray start --head " if head else "ray start ") + convert_param_map(params)
    generated = "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}; " + start
    annotations = group["template"].get("metadata", {}).get("annotations", {})
    if annotations.get("ray.io/overwrite-container-cmd", "").lower() == "true" or "ray start" in cmd:
        return list(container.get("command") or []), list(container.get("args") or [])
    args = f"{cmd} && {generated}" if cmd else generated
    return ["/bin/bash", "-c", "--"], [args]


def cluster_specs() -> dict[str, dict]:
    """{"<file>:<kind>": RayCluster spec} for every cluster defined in cluster/kuberay."""
    out = {}
    for path in KUBERAY_FILES:
        doc = load(path)
        spec = doc["spec"]
        if doc["kind"] == "RayCluster":
            out[f"{path.name}:{doc['metadata']['name']}"] = spec
        elif doc["kind"] == "RayService":
            out[f"{path.name}:{doc['metadata']['name']}"] = spec["rayClusterConfig"]
        elif doc["kind"] == "RayJob" and spec.get("rayClusterSpec"):
            out[f"{path.name}:{doc['metadata']['name']}"] = spec["rayClusterSpec"]
    return out


def pod_templates(spec: dict):
    yield "headgroup", spec["headGroupSpec"], True
    for group in spec["workerGroupSpecs"]:
        yield group["groupName"], group, False
