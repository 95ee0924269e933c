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
