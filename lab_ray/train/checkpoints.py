"""Checkpoints: Hugging Face format (loadable by transformers and vLLM as is)
plus `trainer_state.pt` (optimizer, scheduler, position) to resume.

Rank 0 writes the HF files; with DeepSpeed every rank also writes its own
optimizer partition under `deepspeed/`, and Ray Train merges the ranks'
directories into one checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

STATE = "trainer_state.pt"
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def save(model, tokenizer, state: dict, *, rank: int, ds_engine=None, state_dict=None) -> str:
    """Write this rank's part of a checkpoint into a fresh temp dir; returns it."""
    d = tempfile.mkdtemp(prefix="lab-ray-ckpt-")
    if ds_engine is not None:
        # Collective: every rank writes its ZeRO partition (tag fixed so resume finds it).
        ds_engine.save_checkpoint(os.path.join(d, "deepspeed"), tag="state")
    if rank == 0:
        model.save_pretrained(d, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(d)
        torch.save(state, os.path.join(d, STATE))
    return d


def load_state(ckpt_dir: str) -> dict | None:
    p = Path(ckpt_dir) / STATE
    return torch.load(p, map_location="cpu", weights_only=False) if p.is_file() else None


def is_hf_dir(path: str) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))
