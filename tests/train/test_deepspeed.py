"""The deepspeed backend end to end on CPU: ZeRO-2 over gloo, 2 workers, 2 steps (cheap on purpose).

DeepSpeed's CPU accelerator JIT-builds its shm comm op on first use (~75 s on
2 cores, cached under ~/.cache/torch_extensions afterwards). ZeRO-3 at scale,
offload and bf16 speed need GPUs and are not exercised here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen import write_run_data

pytestmark = pytest.mark.slow
deepspeed = pytest.importorskip("deepspeed")


def test_zero2_phase_trains_checkpoints_and_loads(tmp_path, train_proc):
    from lab_ray.train.backends import deepspeed_config

    root = tmp_path / "runs"
    write_run_data(root / "ds" / "data", n_knowledge_short=16, n_knowledge_long=0, n_skills=0)
    p = train_proc(root, "ds", ["train.backend=deepspeed", "train.deepspeed.zero_stage=2",
                                "train.knowledge_long.enabled=false", "train.skills.enabled=false",
                                "train.knowledge_short.max_steps=2", "train.knowledge_short.max_seq_len=128",
                                "train.knowledge_short.grad_accum=2", "train.knowledge_short.checkpoint_every=1",
                                "train.keep_optimizer_state=true"])
    assert p.wait(1200) == 0, p.output()[-3000:]
    tdir = root / "ds" / "train"
    journal = json.loads((tdir / "journal.json").read_text())
    ks = journal["phases"]["knowledge_short"]
    assert ks["status"] == "done" and len(ks["checkpoints"]) == 2
    last = Path(ks["last_checkpoint"])
    # HF weights for transformers/vLLM, plus each rank's ZeRO partition to resume from.
    assert (last / "model.safetensors").is_file()
    parts = list((last / "deepspeed" / "state").glob("*optim_states.pt"))
    assert len(parts) == 2, sorted(p.name for p in (last / "deepspeed").rglob("*"))
    steps = [json.loads(l) for l in (tdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if r.get("event") == "step"]
    assert len(losses) == 2 and all(l > 0 for l in losses)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(last))
    # Our config drives DeepSpeed's.
    c = deepspeed_config({"deepspeed": {"zero_stage": 3, "offload_optimizer": True, "offload_param": True},
                          "use_gpu": True, "bf16": True},
                         {"micro_batch_size": 1, "grad_accum": 4})
    assert c["zero_optimization"]["stage"] == 3 and c["bf16"]["enabled"]
    assert c["gradient_accumulation_steps"] == 4 and c["zero_optimization"]["offload_param"]["device"] == "cpu"
