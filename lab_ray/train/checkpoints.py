"""Checkpoints: Hugging Face format (loadable by transformers and vLLM as is)
plus `trainer_state.pt` (optimizer, scheduler, position) to resume.

Rank 0 writes the HF files; with DeepSpeed every rank also writes its own
optimizer partition under `deepspeed/`, and Ray Train merges the ranks'
directories into one checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

STATE = "trainer_state.pt"
HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


STAGING_PREFIX = "lab-ray-ckpt-"


def save(scratch: str, model, tokenizer, state: dict, *, rank: int, ds_engine=None, state_dict=None) -> str:
    """Write this rank's part of a checkpoint into a fresh dir under the run's
    scratch (not /tmp: a killed worker's half-written copy stays in the run,
    where the next attempt removes it); returns it."""
    d = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=scratch)
    if ds_engine is not None:
        # Collective: every rank writes its ZeRO partition (tag fixed so resume finds it).
        ds_engine.save_checkpoint(os.path.join(d, "deepspeed"), tag="state")
    if rank == 0:
        model.save_pretrained(d, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(d)
        torch.save(state, os.path.join(d, STATE))
    return d


def local_dir(ckpt, copy_to: str) -> tuple[str, bool]:
    """A local directory holding a reported checkpoint: its own path when Ray's
    storage is the local filesystem (no copy of a multi-GB checkpoint), else a
    download into copy_to. Returns (dir, copied)."""
    import pyarrow.fs

    if isinstance(ckpt.filesystem, pyarrow.fs.LocalFileSystem) and Path(ckpt.path).is_dir():
        return ckpt.path, False
    return ckpt.to_directory(copy_to), True


def materialize(location: str, cache_root: str | None = None) -> str:
    """A local directory with the checkpoint at `location` (a path or a storage URI):
    a local path as is; a URI downloaded once per node into a cache keyed by the URI
    (a finished checkpoint never changes). One process per node downloads (a file
    lock; the tokenisation tasks of a phase all ask at once), into a temporary name
    renamed when complete; the others wait and reuse it."""
    import fcntl
    import hashlib

    from lab_ray.storage import StoragePath, is_uri

    if not is_uri(location):
        return location
    root = _mkdir(Path(cache_root or os.environ.get("LAB_RAY_CHECKPOINT_CACHE") or
                       Path(tempfile.gettempdir()) / "lab-ray-checkpoints"))
    target = root / hashlib.sha1(location.encode()).hexdigest()[:16]
    with open(str(target) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
            StoragePath(location).download_dir(staging)
            os.replace(staging, target)
    return str(target)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_state(ckpt_dir: str) -> dict | None:
    p = Path(ckpt_dir) / STATE
    return torch.load(p, map_location="cpu", weights_only=False) if p.is_file() else None


def is_hf_dir(path: str) -> bool:
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def clear_staging(scratch: Path) -> None:
    """Remove staging copies a killed worker left behind (the reported copy is in Ray's storage)."""
    for d in Path(scratch).glob(STAGING_PREFIX + "*"):
        shutil.rmtree(d, ignore_errors=True)


def drop_resume_state(ckpt_dir: str) -> int:
    """Delete what only resuming a phase needs (optimizer, scheduler, ZeRO partitions);
    the HF model files stay for selection and the next phase. Returns bytes freed."""
    from lab_ray.storage import StoragePath, is_uri

    if is_uri(ckpt_dir):
        remote = StoragePath(ckpt_dir)
        files = [f for f in remote.rglob_files() if f.name == STATE or "/deepspeed/" in f.uri]
        freed = sum(f.fs.get_file_info(f.path).size or 0 for f in files)
        for f in files:
            f.unlink()
        return freed
    freed = 0
    p = Path(ckpt_dir)
    for f in [p / STATE, *((p / "deepspeed").rglob("*") if (p / "deepspeed").is_dir() else [])]:
        if f.is_file():
            freed += f.stat().st_size
    (p / STATE).unlink(missing_ok=True)
    shutil.rmtree(p / "deepspeed", ignore_errors=True)
    return freed
