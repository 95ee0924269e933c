"""The GPU teacher: vLLM through `ray.serve.llm` (LLMConfig + build_openai_app).

`ray.serve.llm` cannot even be imported without vLLM (CUDA only), so the
LLMConfig arguments are built by a pure function and validated on CPU with
the pydantic class that `ray.serve.llm.LLMConfig` subclasses; deploying
needs the `gpu` extra on a GPU node. vLLM's OpenAI server natively accepts
`guided_choice` / `structured_outputs` and `logprobs`, so judges work the
same against it as against the CPU teacher.
"""

from __future__ import annotations

from lab_ray.errors import LabRayError


def llm_config_kwargs(cfg) -> dict:
    """cfg: the `teacher` section with backend vllm."""
    v = cfg.vllm
    engine = {"tensor_parallel_size": v.tensor_parallel_size, "max_model_len": v.max_model_len,
              "gpu_memory_utilization": v.gpu_memory_utilization, "enable_prefix_caching": v.enable_prefix_caching,
              **dict(v.engine_kwargs)}
    kwargs = {
        "model_loading_config": {"model_id": cfg.model, "model_source": v.model_source},
        "engine_kwargs": engine,
        "deployment_config": {
            "autoscaling_config": {"min_replicas": cfg.autoscaling.min_replicas,
                                   "max_replicas": cfg.autoscaling.max_replicas,
                                   "target_ongoing_requests": cfg.autoscaling.target_ongoing_requests},
            "max_ongoing_requests": v.max_ongoing_requests,
        },
    }
    if v.accelerator_type:
        kwargs["accelerator_type"] = v.accelerator_type
    return kwargs


def validate_llm_config(cfg):
    """Validate the arguments with Ray's own LLMConfig model (runs without vLLM)."""
    from ray.llm._internal.serve.core.configs.llm_config import LLMConfig as BaseLLMConfig

    return BaseLLMConfig(**llm_config_kwargs(cfg))


def build_vllm_app(cfg):
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as e:
        raise LabRayError(f"teacher.backend=vllm needs vLLM on a GPU node (pip install 'lab-ray[gpu]'): {e}")
    return build_openai_app({"llm_configs": [LLMConfig(**llm_config_kwargs(cfg))]})
