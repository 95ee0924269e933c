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
