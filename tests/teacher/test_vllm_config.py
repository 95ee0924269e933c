"""The vLLM teacher profile, built through Ray's own LLMConfig model (runs without vLLM)."""

from __future__ import annotations

import pytest

from lab_ray.config import load_config
from lab_ray.errors import LabRayError
from lab_ray.teacher.app import deployment_options
from lab_ray.teacher.serve_vllm import (
    build_vllm_app,
    llm_config_kwargs,
    validate_llm_config,
)


def test_mixtral_profile_is_a_valid_llm_config():
    cfg = load_config(["teacher=mixtral-vllm"]).teacher
    llm = validate_llm_config(cfg)
    assert llm.model_id == "mixtral-8x7b-instruct"
    assert llm.model_loading_config.model_source == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert llm.engine_kwargs["tensor_parallel_size"] == 4
    auto = llm.deployment_config["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"]) == (1, 4) and auto["target_ongoing_requests"] == 64


def test_unknown_llm_config_field_is_rejected_by_rays_model():
    cfg = load_config(["teacher=mixtral-vllm"]).teacher
    kwargs = llm_config_kwargs(cfg)
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig

    with pytest.raises(Exception):
        LLMConfig(**kwargs, not_a_field=1)


def test_without_vllm_the_app_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray.serve.llm", None)  # as on a machine without vLLM
    cfg = load_config(["teacher=mixtral-vllm"]).teacher
    with pytest.raises(LabRayError, match="needs vLLM"):
        build_vllm_app(cfg)


def test_cpu_deployment_options_follow_autoscaling_config():
    fixed = deployment_options(load_config([]).teacher)
    assert fixed["num_replicas"] == 1 and "autoscaling_config" not in fixed
    scaled = deployment_options(load_config(["teacher.autoscaling.max_replicas=3"]).teacher)
    assert scaled["autoscaling_config"]["max_replicas"] == 3 and "num_replicas" not in scaled


def test_vllm_cpu_profile_is_the_same_llm_config_on_cpu_resources():
    cfg = load_config(["teacher=vllm-cpu"]).teacher
    assert cfg.backend == "vllm" and cfg.client.choice_field == "structured_outputs"
    llm = validate_llm_config(cfg)
    assert llm.accelerator_config.kind == "cpu" and llm.accelerator_type is None
    assert llm.placement_group_config["bundles"] == [{"CPU": 1.0}]
    assert llm.engine_kwargs["dtype"] == "float32" and llm.engine_kwargs["enforce_eager"] is True
    assert llm.deployment_config["ray_actor_options"]["num_cpus"] < 1  # leaves a 2-CPU Ray room for the ingress
    # The GPU profile keeps its own resources through the same function.
    gpu = validate_llm_config(load_config(["teacher=mixtral-vllm"]).teacher)
    assert gpu.accelerator_config.kind == "gpu" and "placement_group_config" not in llm_config_kwargs(
        load_config(["teacher=mixtral-vllm"]).teacher)


def test_unknown_device_is_an_error():
    cfg = load_config(["teacher=vllm-cpu", "teacher.vllm.device=tpu"]).teacher
    with pytest.raises(LabRayError, match="device"):
        llm_config_kwargs(cfg)


def test_an_in_run_vllm_teacher_gets_its_cpus_on_top_of_the_cores(tmp_path):
    """The vllm-cpu app holds 1.2 logical CPUs for the whole command; on a 2-core machine a Ray
    sized to the cores then never schedules finalize's tasks (a hang seen with `lab-ray generate
    teacher=vllm-cpu`). With ray.num_cpus unset, the local cluster gets them on top."""
    import os
    import subprocess
    import sys

    from lab_ray.teacher.serve_vllm import logical_cpus

    cpu = load_config(["teacher=vllm-cpu"]).teacher
    assert logical_cpus(cpu) == pytest.approx(1.0 + 0.1 + 0.1)  # engine bundle, LLM server, ingress
    mixtral = load_config(["teacher=mixtral-vllm"]).teacher
    assert logical_cpus(mixtral) == pytest.approx(4 * (1 + 1) + 1)  # Ray's defaults, 4 replicas at most
    code = ("import os, ray\nfrom lab_ray.config import load_config\nfrom lab_ray.ray_cluster import init_ray\n"
            "from lab_ray.teacher.app import logical_cpus\n"
            "cfg = load_config(['teacher=vllm-cpu'])\n"
            "init_ray(cfg.ray, reserved_cpus=logical_cpus(cfg.teacher))\n"
            "print(int(ray.cluster_resources()['CPU']), os.cpu_count())\nray.shutdown()\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    ray_cpus, cores = map(int, out.stdout.split()[-2:])
    assert ray_cpus == cores + 2


def test_the_cpu_teacher_holds_its_replicas_cpus():
    from lab_ray.teacher.app import logical_cpus

    cfg = load_config(["teacher.num_cpus=1.5", "teacher.autoscaling.max_replicas=2"]).teacher
    assert logical_cpus(cfg) == pytest.approx(3.0)
    assert logical_cpus(load_config(["teacher=openai", "teacher.base_url=http://x/v1"]).teacher) == 0.0
