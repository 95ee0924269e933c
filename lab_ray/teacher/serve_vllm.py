"""The GPU teacher: vLLM through `ray.serve.llm` (LLMConfig + build_openai_app).

`ray.serve.llm` cannot even be imported without vLLM (CUDA only), so the
LLMConfig arguments are built by a pure function and validated on CPU with
the pydantic class that `ray.serve.llm.LLMConfig` subclasses; deploying
needs the `gpu` extra on a GPU node. vLLM's OpenAI server natively accepts
`structured_outputs` (vLLM >= 0.12; `guided_choice` before) and `logprobs`, so
judges work against it as against the CPU teacher (the profile sets
`teacher.client.choice_field=structured_outputs`). Ray's ingress has no API-key
option; when `teacher.api_key` is set, `build_vllm_app` adds our bearer-key
middleware to the ingress app (lab_ray/teacher/auth.py). Not run here: no GPU.
"""

from __future__ import annotations

from contextlib import contextmanager

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


def build_vllm_app(cfg, api_key: str | None = None):
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as e:
        raise LabRayError(f"teacher.backend=vllm needs vLLM on a GPU node (pip install 'lab-ray[gpu]'): {e}")
    args = {"llm_configs": [LLMConfig(**llm_config_kwargs(cfg))]}
    if not api_key:
        return build_openai_app(args)
    with _ingress_with_key(api_key):
        return build_openai_app(args)


@contextmanager
def _ingress_with_key(api_key: str):
    """While build_openai_app runs, the FastAPI app it creates for its ingress gets our
    bearer-key middleware (the app is pickled with the ingress class, so replicas have it).
    Ray's builder exposes no hook for middleware; this wraps the one function that makes
    the app, `ingress.init`, and restores it afterwards."""
    from ray.llm._internal.serve.core.ingress import ingress as ingress_module

    from lab_ray.teacher.auth import BearerKeyMiddleware

    make_app = ingress_module.init

    def init_with_key():
        app = make_app()
        app.add_middleware(BearerKeyMiddleware, api_key=api_key)
        return app

    ingress_module.init = init_with_key
    try:
        yield
    finally:
        ingress_module.init = make_app
