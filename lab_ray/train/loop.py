"""The per-worker training loop (runs inside Ray Train workers).

Every optimizer step: each worker takes `grad_accum` packed micro-batches
(empty no-loss ones once its shard runs dry), the workers all-reduce their
label-token counts, and each micro-batch's summed token loss is divided by
that global count (times world size, since DDP/ZeRO average gradients). The
step is skipped by all workers together once every shard is dry, so all
workers run the same number of steps and collectives never hang.
"""

from __future__ import annotations

import os
import shutil
import time

import torch
import torch.nn.functional as F

from lab_ray.train import checkpoints
from lab_ray.train.packing import empty_batch, micro_batches, pack_stream
from lab_ray.train.replay import mix, worker_slice
from lab_ray.train.tokenize import IGNORE, load_tokenizer


def _rows(it):
    """Ray Data rows -> plain lists (numpy arrays make slow torch tensors)."""
    for r in it:
        yield {"id": r["id"], "input_ids": list(map(int, r["input_ids"])), "targets": list(map(int, r["targets"]))}


def _allreduce(values: list[float]) -> list[float]:
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def _load_model(path: str, tc: dict):
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if tc["bf16"] else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    if tc["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    return model


def train_loop(config: dict) -> None:
    import ray.train

    from lab_ray.train.backends import Backend

    tc, pc = config["train"], config["phase_cfg"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(tc["seed"])
    os.makedirs(config["scratch"], exist_ok=True)  # node-local: this node's own disk
    config["init_dir"] = checkpoints.materialize(config["init_dir"])  # the previous phase's, from the run's storage
    tokenizer = load_tokenizer(config["init_dir"])
    pad_id = tokenizer.pad_token_id

    # Resume: Ray Train hands back the latest reported checkpoint (after a worker
    # failure, or when a killed run is rerun with the same storage path and name).
    ckpt = ray.train.get_checkpoint()
    ckpt_dir, copied = None, False
    if ckpt is not None:
        ckpt_dir, copied = checkpoints.local_dir(ckpt, os.path.join(config["scratch"], f"resume-{rank}"))
    model = _load_model(ckpt_dir or config["init_dir"], tc)
    total = int(config["total_steps"])
    be = Backend(model, tc, pc, total)
    state = (checkpoints.load_state(ckpt_dir) if ckpt_dir else None) or {}
    be.load_state(state, ckpt_dir)
    if copied:  # everything is in memory now; a checkpoint-sized copy need not stay on disk
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    step, epoch, micro_in_epoch = state.get("step", 0), state.get("epoch", 0), state.get("micro_in_epoch", 0)
    device = be.device

    train_shard = ray.train.get_dataset_shard("train")
    replay_ds = ray.train.get_dataset_shard("replay") if config["replay_ratio"] > 0 else None
    accum, every = int(pc["grad_accum"]), int(pc["checkpoint_every"])
    last_saved = step

    def report(metrics: dict, save: bool) -> None:
        nonlocal last_saved
        if not save:
            ray.train.report(metrics)
            return
        state = {"step": step, "epoch": epoch, "micro_in_epoch": micro_in_epoch, **be.state()}
        d = checkpoints.save(config["scratch"], be.module, tokenizer, state,
                             rank=rank, ds_engine=be.engine, state_dict=be.hf_state_dict())
        try:
            has_files = any(os.scandir(d))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d) if has_files else None)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        last_saved = step

    be.module.train()
    while epoch < int(pc["epochs"]) and step < total:
        rows = _rows(train_shard.iter_rows())
        if replay_ds is not None:
            rows = mix(rows, lambda: _rows(worker_slice(replay_ds.iter_rows(), rank, world)),
                       config["replay_ratio"], seed=tc["seed"] * 1000 + epoch * 31 + rank)
        bins = pack_stream(rows, int(pc["max_seq_len"]), int(tc["pack_window"]), bool(tc["pack_split_samples"]))
        batches = micro_batches(bins, int(pc["micro_batch_size"]), pad_id)
        for _ in range(micro_in_epoch):  # resume mid-epoch: skip what was already trained on
            next(batches, None)
        while step < total:
            t0 = time.perf_counter()
            mbs = [b for b in (next(batches, None) for _ in range(accum)) if b is not None]
            have, labels = _allreduce([float(bool(mbs)), float(sum(m.label_tokens for m in mbs))])
            if have == 0:  # every shard is dry: the epoch ends for all workers at once
                break
            mbs += [empty_batch(pad_id)] * (accum - len(mbs))
            ce_total = 0.0
            for i, mb in enumerate(mbs):
                with be.no_sync(last=i == accum - 1):
                    logits = be.model(input_ids=mb.input_ids.to(device), position_ids=mb.position_ids.to(device),
                                      use_cache=False).logits
                    ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), mb.targets.to(device).view(-1),
                                         ignore_index=IGNORE, reduction="sum")
                    be.backward(ce * world / max(labels, 1.0))
                be.micro_done()
                ce_total += float(ce.detach())
            lr = be.lr()  # the rate this step used (the scheduler moves on in step())
            be.step()
            step += 1
            micro_in_epoch += accum
            ce_sum, real, computed = _allreduce([ce_total, float(sum(m.real_tokens for m in mbs)),
                                                 float(sum(m.computed_tokens for m in mbs))])
            dt = time.perf_counter() - t0
            metrics = {"phase": config["phase"], "step": step, "total_steps": total, "epoch": epoch,
                       "loss": ce_sum / max(labels, 1.0), "lr": lr, "tokens_per_s": real / dt,
                       "real_token_fraction": real / max(computed, 1.0), "label_tokens": labels, "step_s": dt}
            report(metrics, save=bool(every) and step % every == 0 and step < total)
        epoch += 1
        micro_in_epoch = 0
    if step > last_saved or step == 0 or last_saved == 0:
        report({"phase": config["phase"], "step": step, "total_steps": total, "final": True}, save=True)
