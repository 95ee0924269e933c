"""Configuration of `lab-ray submit` (section `submit`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class SubmitConfig:
    # Ray Jobs API of the cluster's head (dashboard port); loopback by default.
    address: str = "http://127.0.0.1:8265"
    # Uploaded as the job's working directory ("." = this checkout).
    working_dir: str = "."
    # A runtime_env YAML (pip, env_vars, excludes) merged under working_dir.
    runtime_env_file: Optional[str] = "cluster/runtime_env.yaml"
    excludes: List[str] = field(default_factory=lambda: [".venv/", "runs/", ".git/", "__pycache__/"])
    env_vars: Dict[str, str] = field(default_factory=dict)
    # Credentials passed from the submitting shell to the job (its runtime_env env_vars) when
    # set there: the teacher's API key, the Hub token, object-store credentials. Values are
    # read at submit time, never printed and never stored in the run's config; submit.env_vars
    # wins over a forwarded name. Anyone who can read the cluster's Jobs API sees a job's env.
    forward_env: List[str] = field(default_factory=lambda: [
        "LAB_RAY_TEACHER_API_KEY", "HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY"])
    entrypoint_num_cpus: float = 0.0
    entrypoint_num_gpus: float = 0.0
    # Seconds between status polls while streaming logs.
    poll_interval_s: float = 1.0


@dataclass
class PipelineConfig:
    """`lab-ray run`: which steps run and how checkpoints are chosen."""

    # Pick checkpoints by what the taxonomy taught (MMLU-branch accuracy for
    # the knowledge phase, MT-Bench-branch score for skills) with held-out
    # loss alongside; false keeps train.selection as configured.
    select_by_eval: bool = True
    # Score the base model too, for the before/after table of the report.
    eval_base: bool = True
    # Stop (non-zero exit) when a leaf ends generation with no accepted sample.
    require_every_leaf: bool = False
