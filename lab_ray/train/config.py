"""Configuration of multi-phase training (section `train`).

Phases follow LAB: knowledge_short -> knowledge_long (+ replay of short) ->
select -> skills (+ replay of knowledge) -> select. Every phase carries its own
optimisation settings so `conf/train/<profile>.yaml` can tune each one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import List


class Schedule(StrEnum):
    """Learning-rate schedule after warmup (transformers' schedulers)."""

    cosine = "cosine"
    linear = "linear"
    constant = "constant"


class Mode(StrEnum):
    min = "min"
    max = "max"


class TrainBackend(StrEnum):
    ddp = "ddp"  # torch DDP: gloo on CPU, nccl on GPU
    deepspeed = "deepspeed"  # DeepSpeed ZeRO (stage, offload, bf16 from train.deepspeed)


PHASES = ("knowledge_short", "knowledge_long", "skills")


@dataclass
class PhaseConfig:
    enabled: bool = True
    epochs: int = 1
    # Cap on optimizer steps (0 = none): the tiny CPU profile runs a few steps.
    max_steps: int = 0
    lr: float = 2e-5
    warmup_steps: int = 0
    # Learning-rate schedule after the warmup steps (transformers' schedulers).
    schedule: Schedule = Schedule.cosine
    weight_decay: float = 0.0
    # Packed rows of max_seq_len tokens per worker per micro-step, and
    # micro-steps per optimizer step. Effective batch (tokens) =
    # num_workers * micro_batch_size * grad_accum * max_seq_len.
    micro_batch_size: int = 1
    grad_accum: int = 1
    max_seq_len: int = 2048
    # Fraction of the mixed stream drawn from the replay buffer (0 = none).
    replay_ratio: float = 0.0
    # Checkpoint every N optimizer steps (0 = only at the end of the phase).
    checkpoint_every: int = 0


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_param: bool = False  # ZeRO-3 only


@dataclass
class SelectionConfig:
    # "module:function" scorers, each fn(checkpoint_dir, phase, cfg) -> {metric: value}.
    scorers: List[str] = field(default_factory=lambda: ["lab_ray.train.selection:heldout_loss"])
    metric: str = "heldout_loss"
    # min: the lowest metric wins (a loss); max: the highest (a score).
    mode: Mode = Mode.min
    # Among candidates tied on `metric`, the lowest value of this one wins ("" = the latest wins).
    tiebreak: str = "heldout_loss"
    # Held-out rows per phase used by the held-out-loss scorer (a bound on its cost).
    max_heldout_rows: int = 64


@dataclass
class TrainConfig:
    model: str = "SmolLM2-135M-Instruct"  # HF dir or the embedded name
    data_dir: str = ""  # default: runs/<name>/data
    # ddp: torch DDP (gloo on CPU, nccl on GPU); deepspeed: ZeRO per train.deepspeed.
    backend: TrainBackend = TrainBackend.ddp
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    # Rows whose id hashes below this fraction are held out for selection.
    heldout_fraction: float = 0.1
    # Row kinds (metadata.kind) trained on user tokens too (document-style knowledge).
    train_on_user_kinds: List[str] = field(default_factory=list)
    # Packing: samples per first-fit-decreasing window; split samples across bins?
    pack_window: int = 256
    pack_split_samples: bool = False
    # Start from a phase of an earlier run (skills, ...) with weights from init_from.
    start_phase: str = "knowledge_short"
    init_from: str = ""
    keep_checkpoints: int = 2  # per phase (CheckpointConfig.num_to_keep)
    # Keep optimizer/scheduler state in a phase's checkpoints once the phase is done?
    # Only a running phase resumes from it; dropping it frees ~2/3 of each checkpoint.
    keep_optimizer_state: bool = False
    max_failures: int = 1  # FailureConfig: worker restarts from the last checkpoint
    live: bool = True  # progress as a rich live table on a terminal (unless CI is set); else a line per step
    knowledge_short: PhaseConfig = field(default_factory=PhaseConfig)
    knowledge_long: PhaseConfig = field(default_factory=lambda: PhaseConfig(replay_ratio=0.3))
    skills: PhaseConfig = field(default_factory=lambda: PhaseConfig(replay_ratio=0.2))
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
