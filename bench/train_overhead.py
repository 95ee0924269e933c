"""Ray Train overhead: the same model, data and batch shapes through
(a) a bare single-process PyTorch loop and (b) our Ray Train loop (1 worker),
with the same number of optimizer steps and torch threads.

Steady-state tokens/s excludes each side's first (warm-up) step; the bare loop
runs before and after the Ray run and is averaged, to cancel drift on a shared
machine. The end-to-end figure also counts Ray start, dataset streaming, model
load and the final checkpoint.
Usage: python bench/train_overhead.py [--steps 6] [--max-seq-len 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from lab_ray.storage import Journal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "train"))


def bare_loop(rows, steps: int, max_seq_len: int, lr: float) -> tuple[list[float], float]:
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from lab_ray.embedded_model import resolve_model
    from lab_ray.train.packing import micro_batches, pack_stream
    from lab_ray.train.tokenize import IGNORE

    t_start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(resolve_model("SmolLM2-135M-Instruct"), dtype=torch.float32,
                                                 attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    batches = micro_batches(pack_stream(iter(rows), max_seq_len, 64), 1, 0)
    rates = []
    for _ in range(steps):
        t0 = time.perf_counter()
        mb = next(batches)
        logits = model(input_ids=mb.input_ids, position_ids=mb.position_ids, use_cache=False).logits
        ce = F.cross_entropy(logits.float().view(-1, logits.size(-1)), mb.targets.view(-1), ignore_index=IGNORE,
                             reduction="sum")
        (ce / max(mb.label_tokens, 1)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rates.append(mb.real_tokens / (time.perf_counter() - t0))
    return rates, time.perf_counter() - t_start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()

    import torch

    from datagen import write_run_data
    from lab_ray.config import load_config
    from lab_ray.embedded_model import resolve_model
    from lab_ray.train import phases
    from lab_ray.ray_cluster import init_ray
    from lab_ray.train.tokenize import load_tokenizer, shift_targets, tokenize_conversation

    torch.set_num_threads(a.threads)
    root = Path(tempfile.mkdtemp(prefix="lab-ray-bench-"))
    data = write_run_data(root / "bench" / "data", n_knowledge_short=200, n_knowledge_long=0, n_skills=0)
    cfg = load_config([f"run.root={root}", "run.name=bench", "train=cpu-tiny", "train.num_workers=1",
                       f"train.cpus_per_worker={a.threads}", "train.live=false", "train.heldout_fraction=0",
                       f"train.knowledge_short.max_steps={a.steps}", f"train.knowledge_short.max_seq_len={a.max_seq_len}",
                       "train.knowledge_short.checkpoint_every=0", "train.knowledge_short.lr=1e-5",
                       "train.pack_window=64", f"ray.num_cpus={a.threads + 1}"])
    tok = load_tokenizer(resolve_model("SmolLM2-135M-Instruct"))
    rows = []
    for path in sorted((data / "knowledge_train").glob("*.jsonl")):
        for line in open(path):
            r = json.loads(line)
            ids, labels = tokenize_conversation(tok, r["messages"])
            if r["metadata"]["length"] == "short" and len(ids) <= a.max_seq_len:
                rows.append({"id": r["id"], "input_ids": ids, "targets": shift_targets(labels)})

    bare1, bare_wall1 = bare_loop(rows, a.steps, a.max_seq_len, 1e-5)
    t0 = time.perf_counter()
    init_ray(cfg.ray)
    tdir = (root / "bench" / "train").resolve()
    tdir.mkdir(parents=True, exist_ok=True)
    journal = Journal(tdir / "journal.json", {"phases": {}, "selection": {}})
    phases._train_phase(cfg, "knowledge_short", resolve_model("SmolLM2-135M-Instruct"), tdir,
                        journal.entry("phases", "knowledge_short"), journal)
    ray_wall = time.perf_counter() - t0
    import ray

    ray.shutdown()
    bare2, bare_wall2 = bare_loop(rows, a.steps, a.max_seq_len, 1e-5)
    steps = [json.loads(l) for l in (tdir / "metrics.jsonl").read_text().splitlines()]
    ray_rates = [r["tokens_per_s"] for r in steps if r.get("event") == "step"]
    assert len(ray_rates) == a.steps, ray_rates
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    bare_tps = mean(bare1[1:] + bare2[1:])
    ray_tps = mean(ray_rates[1:])
    tokens = sum(r["label_tokens"] for r in steps if r.get("event") == "step")
    print(f"steps={a.steps} max_seq_len={a.max_seq_len} threads={a.threads} rows={len(rows)}")
    print(f"bare PyTorch: steady {bare_tps:.1f} tok/s (runs {mean(bare1[1:]):.1f} / {mean(bare2[1:]):.1f}), "
          f"wall {bare_wall1:.1f}s / {bare_wall2:.1f}s incl. model load")
    print(f"Ray Train: steady {ray_tps:.1f} tok/s, wall {ray_wall:.1f}s incl. Ray start, data, load, final checkpoint "
          f"(label tokens {tokens:.0f})")
    print(f"steady_state_ratio={ray_tps / bare_tps:.3f} end_to_end_ratio={mean([bare_wall1, bare_wall2]) / ray_wall:.3f}")


if __name__ == "__main__":
    main()
