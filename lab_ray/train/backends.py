"""Distributed backends: `ddp` (torch DDP; gloo on CPU, nccl on GPU) and
`deepspeed` (ZeRO stage / offload / bf16 from our config).

Both sit behind one small `Backend` interface (backward, micro_done, step,
state / load_state, lr) so the loop does not branch on the backend.
"""

from __future__ import annotations

import contextlib

import torch


# Our schedule names -> transformers' (constant keeps the warmup ramp when one is set).
_SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def lr_scheduler(optimizer, schedule: str, warmup: int, total: int):
    """Warmup then cosine / linear decay or constant: transformers' own schedulers."""
    from transformers import get_scheduler

    return get_scheduler(_SCHEDULERS[str(schedule)], optimizer, num_warmup_steps=warmup, num_training_steps=total)


def deepspeed_config(tc: dict, pc: dict) -> dict:
    """DeepSpeed's JSON config, built from ours (batch sizes stay ours: one source of truth)."""
    ds = tc["deepspeed"]
    zero: dict = {"stage": int(ds["zero_stage"]), "overlap_comm": False, "contiguous_gradients": True}
    if ds["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(tc["use_gpu"])}
    if ds["offload_param"] and zero["stage"] == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": bool(tc["use_gpu"])}
    if zero["stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": int(pc["micro_batch_size"]),
        "gradient_accumulation_steps": int(pc["grad_accum"]),
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bool(tc["bf16"])},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class Backend:
    """Model, optimizer and scheduler of one backend: `backward` per micro-batch, `step` the update."""

    def __init__(self, model, tc: dict, pc: dict, total_steps: int):
        self.tc, self.pc = tc, pc
        self.engine = None
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=pc["lr"], weight_decay=pc["weight_decay"], betas=(0.9, 0.95))
        sched = lr_scheduler(opt, pc["schedule"], pc["warmup_steps"], total_steps)
        if tc["backend"] == "deepspeed":
            import deepspeed

            engine, opt, _, sched = deepspeed.initialize(model=model, optimizer=opt, lr_scheduler=sched,
                                                        config=deepspeed_config(tc, pc))
            self.engine, self.model = engine, engine
            self.module = engine.module
        elif tc["backend"] == "ddp":
            import ray.train.torch

            self.model = ray.train.torch.prepare_model(model)
            self.module = getattr(self.model, "module", self.model)
        else:
            raise ValueError(f"unknown train.backend {tc['backend']!r}")
        self.optimizer, self.scheduler = opt, sched

    @property
    def device(self):
        return next(self.module.parameters()).device

    def no_sync(self, last: bool):
        if self.engine is None and not last and hasattr(self.model, "no_sync"):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss):
        if self.engine is not None:
            # Our loss is already normalised over the global batch: no extra /GAS.
            self.engine.backward(loss, scale_wrt_gas=False)
        else:
            loss.backward()

    def micro_done(self) -> None:
        if self.engine is not None:  # the engine counts micro-steps; it updates at its boundary
            self.engine.step()

    def step(self) -> None:
        if self.engine is not None:
            return
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def state(self) -> dict:
        if self.engine is not None:  # the engine's own checkpoint carries optimizer state
            return {"scheduler": self.scheduler.state_dict()}
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state(self, state: dict, ckpt_dir: str | None) -> None:
        if self.engine is not None and ckpt_dir:
            import os

            if os.path.isdir(os.path.join(ckpt_dir, "deepspeed")):
                self.engine.load_checkpoint(os.path.join(ckpt_dir, "deepspeed"), tag="state",
                                            load_module_strict=False)
        elif "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])

    def hf_state_dict(self):
        """None (module's own) unless ZeRO-3 partitions the weights: then gather (collective)."""
        if self.engine is not None and int(self.tc["deepspeed"]["zero_stage"]) == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return None
