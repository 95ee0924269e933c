"""LAB's training phases on Ray Train, with a journal so a rerun resumes.

knowledge_short -> knowledge_long (+ replay of short) -> select(knowledge)
-> skills (+ replay of knowledge) -> select(skills) = the final model.

`train/journal.json` records each phase's status, checkpoints and stats and
each selection's scores. A rerun skips what is done; a phase that was running
is rerun under the same Ray Train run name and storage path, so Ray Train
hands its workers the latest checkpoint and they continue from that step.
"""

from __future__ import annotations

import os
import tempfile
import math
import time
from pathlib import Path

from omegaconf import OmegaConf

from lab_ray.errors import ConfigError, LabRayError
from lab_ray.ray_cluster import init_ray
from lab_ray.storage import Journal, StoragePath, run_dir
from lab_ray.train import checkpoints
from lab_ray.train import metrics as M
from lab_ray.train.config import PHASES
from lab_ray.train.progress import TrainProgress
from lab_ray.train.selection import choose, data_dir, score_all
from lab_ray.training_data import KNOWLEDGE_TRAIN, SKILLS_TRAIN, TRAINING_DATASETS

# phase -> (its training dataset, response length filter, replay (dataset, length) or None)
PHASE_INPUTS = {
    "knowledge_short": (KNOWLEDGE_TRAIN, "short", None),
    "knowledge_long": (KNOWLEDGE_TRAIN, "long", (KNOWLEDGE_TRAIN, "short")),
    "skills": (SKILLS_TRAIN, "", (KNOWLEDGE_TRAIN, "")),
}
SELECT_AFTER = {"knowledge_long": ("knowledge", ("knowledge_short", "knowledge_long")), "skills": ("skills", ("skills",))}


def _files(ddir: StoragePath, sub: str) -> list[str]:
    """The dataset's JSONL shards, as paths or URIs Ray Data reads directly."""
    return [str(p) for p in (ddir / sub).glob("*.jsonl")]


def _mixing(cfg, ddir: StoragePath, sub: str, files: list[str]) -> tuple[dict | None, str]:
    """The mixing selection for a training dataset from data/recipe.yaml (see
    lab_ray.sdg.mixing), and whether it was used as written, replanned or absent."""
    import yaml

    from lab_ray.sdg.mixing import training_selection

    path = ddir / "recipe.yaml"
    recipe = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    block = ((recipe or {}).get("mixing") or {}).get(sub)
    selection, _, how = training_selection(block, files, int(cfg.train.seed), float(cfg.train.heldout_fraction))
    return selection, how


def _datasets(cfg, phase: str, model_dir: str):
    from lab_ray.train.tokenize import tokenized_dataset

    tc, pc = cfg.train, cfg.train[phase]
    sub, length, replay = PHASE_INPUTS[phase]
    ddir = data_dir(cfg)
    common = dict(model_dir=model_dir, max_seq_len=int(pc.max_seq_len), seed=int(tc.seed),
                  heldout_fraction=float(tc.heldout_fraction), train_on_user_kinds=list(tc.train_on_user_kinds))
    files = _files(ddir, sub)
    if not files:
        return None, None, {"rows": 0}
    selection, how = _mixing(cfg, ddir, sub, files)
    tok = tokenized_dataset(files, length=length, selection=selection, **common)
    # One streaming pass for the counts (a shuffle-based aggregate costs far more here).
    stats = {"rows": 0, "dropped_over_length": 0, "tokens": 0, "label_tokens": 0}
    cols = ["num_tokens", "over_length", "num_label_tokens"]
    for b in tok.select_columns(cols).iter_batches(batch_size=4096, batch_format="numpy"):
        stats["rows"] += len(b["num_tokens"])
        stats["dropped_over_length"] += int(b["over_length"].sum())
        stats["tokens"] += int(b["num_tokens"].sum())
        stats["label_tokens"] += int(b["num_label_tokens"].sum())
    stats["kept"] = stats["rows"] - stats["dropped_over_length"]
    stats["mixing"] = how
    replay_ds = None
    if replay and pc.replay_ratio > 0 and (rfiles := _files(ddir, replay[0])):
        # the replay buffer follows its own dataset's recipe too (a capped leaf stays capped)
        rsel, _ = _mixing(cfg, ddir, replay[0], rfiles)
        replay_ds = tokenized_dataset(rfiles, length=replay[1], selection=rsel, **common).filter(
            expr="over_length == 0")
    return tok.filter(expr="over_length == 0"), replay_ds, stats


def _total_steps(cfg, phase: str, stats: dict, has_replay: bool) -> int:
    tc, pc = cfg.train, cfg.train[phase]
    ratio = float(pc.replay_ratio) if has_replay else 0.0
    tokens = (stats["tokens"] * stats["kept"] / max(1, stats["rows"])) / (1.0 - ratio)
    per_step = int(pc.max_seq_len) * int(tc.num_workers) * int(pc.micro_batch_size) * int(pc.grad_accum)
    total = max(1, math.ceil(tokens / per_step)) * int(pc.epochs)
    return min(total, int(pc.max_steps)) if pc.max_steps else total


def _scratch(cfg, tdir: StoragePath, phase: str) -> str:
    """Where workers stage a checkpoint before Ray Train stores it: node-local disk.
    Inside the run directory when that is local (a killed worker's leftovers are
    cleared at the next start); else each worker node's temp directory."""
    if tdir.is_local:
        scratch = tdir.local_path() / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        checkpoints.clear_staging(scratch)
        return str(scratch)
    return os.path.join(tempfile.gettempdir(), "lab-ray-scratch", cfg.run.name, phase)


def _checkpoint_location(tdir: StoragePath, path: str) -> str:
    """A reported checkpoint's path as lab-ray names locations: Ray gives the path
    inside its storage filesystem ("bucket/key" on S3); a URI keeps the scheme."""
    return path if tdir.is_local else f"{tdir.uri.split('://', 1)[0]}://{path}"


def _train_phase(cfg, phase: str, init_dir: str, tdir: StoragePath, entry: dict, journal: Journal) -> dict:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from lab_ray.train.loop import train_loop

    tc, pc = cfg.train, cfg.train[phase]
    train_ds, replay_ds, stats = _datasets(cfg, phase, init_dir)
    entry["stats"] = stats
    if not stats.get("kept"):
        entry.update(status="skipped", reason="no training rows for this phase", wall_s=0.0)
        return entry
    total = entry.get("total_steps") or _total_steps(cfg, phase, stats, replay_ds is not None)
    entry.update(status="running", init=init_dir, total_steps=total)
    journal.save()
    M.append(tdir / "metrics.jsonl", {"event": "phase_start", "phase": phase, "total_steps": total,
                                      "workers": int(tc.num_workers), "rows": stats["kept"], "time": time.time()})
    t0 = time.time()
    datasets = {"train": train_ds}
    if replay_ds is not None:
        datasets["replay"] = replay_ds
    scratch = _scratch(cfg, tdir, phase)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "phase": phase, "init_dir": init_dir, "total_steps": total, "scratch": scratch,
            "replay_ratio": float(pc.replay_ratio) if replay_ds is not None else 0.0,
            "train": OmegaConf.to_container(tc, resolve=True), "phase_cfg": OmegaConf.to_container(pc, resolve=True)},
        torch_config=TorchConfig(backend="nccl" if tc.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=int(tc.num_workers), use_gpu=bool(tc.use_gpu),
                                     resources_per_worker={"CPU": float(tc.cpus_per_worker)}),
        run_config=RunConfig(
            # The run's storage (a local path or a URI such as s3://...): every node reads
            # and writes checkpoints there, so a phase resumes wherever its workers land.
            name=phase, storage_path=str(tdir / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=int(tc.keep_checkpoints)),
            failure_config=FailureConfig(max_failures=int(tc.max_failures)),
            callbacks=[M.MetricsCallback(str(tdir / "metrics.jsonl"))]),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),  # replay: each worker slices its own
    )
    result = trainer.fit()
    ckpts = sorted(((m.get("step", 0), _checkpoint_location(tdir, c.path)) for c, m in (result.best_checkpoints or [])),
                   key=lambda x: x[0])
    if not ckpts:
        raise LabRayError(f"phase {phase} finished without a checkpoint")
    entry.update(status="done", checkpoints=[p for _, p in ckpts], last_checkpoint=ckpts[-1][1],
                 wall_s=entry.get("wall_s", 0.0) + time.time() - t0)
    journal.save()  # "done" is on disk before the resume state goes: a kill between never resumes without it
    if not tc.keep_optimizer_state:
        entry["resume_state_freed_bytes"] = sum(checkpoints.drop_resume_state(p) for _, p in ckpts)
    return entry


def _select(cfg, group: str, phases: tuple, journal: Journal, tdir: StoragePath) -> str | None:
    sel = journal.data["selection"].get(group)
    if sel and sel.get("selected"):
        return sel["selected"]
    candidates = [c for ph in phases for c in journal.entry("phases", ph).get("checkpoints", [])]
    if not candidates:
        return None
    t0 = time.time()
    M.append(tdir / "metrics.jsonl", {"event": "select", "group": group, "candidates": len(candidates), "time": t0,
                                      "scorers": list(cfg.train.selection.scorers), "metric": cfg.train.selection.metric})
    scores = score_all(candidates, group, cfg)
    best = choose(scores, cfg.train.selection.metric, cfg.train.selection.mode, cfg.train.selection.tiebreak)
    journal.data["selection"][group] = {"scores": scores, "selected": best, "metric": cfg.train.selection.metric,
                                        "mode": cfg.train.selection.mode, "wall_s": time.time() - t0}
    journal.save()
    for ckpt, s in scores.items():
        M.append(tdir / "metrics.jsonl", {"event": "score", "group": group, "checkpoint": ckpt, **s,
                                          "selected": ckpt == best, "time": time.time()})
    return best


def run_training(cfg) -> dict:
    """Run (or resume) all training phases of the run; returns
    {"final_checkpoint": path, "phases": {...}, "selection": {...}, "journal": path, "metrics": path}."""
    from lab_ray.embedded_model import resolve_model

    tc = cfg.train
    if tc.start_phase not in PHASES:
        raise ConfigError(f"train.start_phase={tc.start_phase!r}: use one of {', '.join(PHASES)}")
    if tc.backend not in ("ddp", "deepspeed"):
        raise ConfigError(f"train.backend={tc.backend!r}: use ddp or deepspeed")
    ddir = data_dir(cfg)
    if not any(_files(ddir, sub) for sub in TRAINING_DATASETS):
        raise LabRayError(f"no training data in {ddir} (knowledge_train/*.jsonl, skills_train/*.jsonl); "
                          "run `lab-ray generate` first or set train.data_dir")
    if tc.init_from and not Path(resolve_model(tc.init_from)).is_dir():
        raise ConfigError(f"train.init_from={tc.init_from!r} is not a model directory")
    tdir = run_dir(cfg) / "train"
    tdir.mkdir()
    journal = Journal(tdir / "journal.json", {"phases": {}, "selection": {}})
    base = resolve_model(tc.init_from or tc.model)
    init_ray(cfg.ray)
    start = PHASES.index(tc.start_phase)
    init = base
    with TrainProgress(tdir, bool(tc.live)) as progress:
        for i, phase in enumerate(PHASES):
            entry = journal.entry("phases", phase)
            if phase == "skills":
                init = _select(cfg, "knowledge", SELECT_AFTER["knowledge_long"][1], journal, tdir) or init
            if entry["status"] not in ("done", "skipped"):
                if i < start or not cfg.train[phase].enabled:
                    entry.update(status="skipped", reason="before train.start_phase" if i < start else "disabled")
                else:
                    progress.announce(f"{phase}: tokenising its data, then Ray Train starts {tc.num_workers} workers")
                    _train_phase(cfg, phase, init, tdir, entry, journal)
                journal.save()
            if entry["status"] == "done" and phase != "skills":
                init = entry["last_checkpoint"]
        final = _select(cfg, "skills", ("skills",), journal, tdir) or init
    journal.data["final_checkpoint"] = final
    journal.save()
    for ph in PHASES:
        e = journal.entry("phases", ph)
        M.append(tdir / "metrics.jsonl", {"event": "phase", "phase": ph, "status": e["status"],
                                          "wall_s": e.get("wall_s", 0.0), "time": time.time(),
                                          "selected": journal.data["selection"].get(
                                              "knowledge" if ph != "skills" else "skills", {}).get("selected")})
    return {"final_checkpoint": final, "phases": journal.data["phases"], "selection": journal.data["selection"],
            "journal": str(journal.path), "metrics": str(tdir / "metrics.jsonl")}
