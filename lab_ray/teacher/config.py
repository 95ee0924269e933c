"""Configuration of the teacher (section `teacher`; profiles in conf/teacher/)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TeacherConfig:
    # cpu: transformers Serve deployment (embedded default);
    # vllm: ray.serve.llm + vLLM on GPUs; openai: external endpoint.
    backend: str = "cpu"
    model: str = "SmolLM2-135M-Instruct"
    host: str = "127.0.0.1"
    port: int = 8000
    base_url: Optional[str] = None
    # API key; the env var named below overrides it when set.
    api_key: Optional[str] = None
    api_key_env: str = "LAB_RAY_TEACHER_API_KEY"
