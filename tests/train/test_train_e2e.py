"""End to end on CPU: 2 Ray Train workers, all phases, selection, a model that loads and generates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from datagen import write_run_data

pytestmark = pytest.mark.slow


def _train_loss(model_dir: str, rows: list[dict]) -> float:
    from transformers import AutoModelForCausalLM

    from lab_ray.train.tokenize import IGNORE, load_tokenizer, shift_targets, tokenize_conversation

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for r in rows:
            ids, labels = tokenize_conversation(tok, r["messages"])
            t = torch.tensor(shift_targets(labels))
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            tot += float(torch.nn.functional.cross_entropy(logits, t, ignore_index=IGNORE, reduction="sum"))
            n += int((t != IGNORE).sum())
    return tot / n


def test_all_phases_end_to_end(tmp_path, train_proc):
    from lab_ray.embedded_model import resolve_model

    data = write_run_data(tmp_path / "runs" / "e2e" / "data", n_knowledge_short=32, n_knowledge_long=12,
                          n_skills=32, n_overlong=3)
    p = train_proc(tmp_path / "runs", "e2e", [
        "train.knowledge_short.max_steps=2", "train.knowledge_long.max_steps=1", "train.skills.max_steps=2",
        "train.knowledge_short.lr=3e-4", "train.knowledge_long.lr=3e-4", "train.skills.lr=3e-4",
        "train.knowledge_short.checkpoint_every=1", "train.skills.checkpoint_every=1"])
    code = p.wait(1500)
    out = p.output()
    assert code == 0, out[-3000:]
    tdir = tmp_path / "runs" / "e2e" / "train"
    journal = json.loads((tdir / "journal.json").read_text())
    phases = journal["phases"]
    assert [phases[k]["status"] for k in ("knowledge_short", "knowledge_long", "skills")] == ["done"] * 3
    # Counted, not trained on: the over-length rows of the training split (the held-out split is kept apart).
    from lab_ray.train.tokenize import is_heldout

    overlong_train = [i for i in range(3) if not is_heldout(f"knowledge-overlong-{5000 + i}", 42, 0.1)]
    assert phases["knowledge_short"]["stats"]["dropped_over_length"] == len(overlong_train) > 0
    assert phases["knowledge_long"]["init"] == phases["knowledge_short"]["last_checkpoint"]
    assert phases["skills"]["init"] == journal["selection"]["knowledge"]["selected"]
    final = journal["final_checkpoint"]
    assert final == journal["selection"]["skills"]["selected"] and final in phases["skills"]["checkpoints"]
    assert "final model:" in out
    # A done phase keeps its model files but not the resume state (optimizer: 2x the weights here).
    for ph in ("knowledge_short", "knowledge_long", "skills"):
        assert phases[ph]["resume_state_freed_bytes"] > 0
        for c in phases[ph]["checkpoints"]:
            assert (Path(c) / "model.safetensors").is_file() and not (Path(c) / "trainer_state.pt").exists()
    assert not list((tdir / "scratch").glob("lab-ray-ckpt-*")), "staging copies left in scratch"

    # Metrics: every step of every phase, every checkpoint's score, every phase's wall time.
    recs = [json.loads(l) for l in (tdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["event"] == "step"]
    assert [(r["phase"], r["step"]) for r in steps] == [("knowledge_short", 1), ("knowledge_short", 2),
                                                        ("knowledge_long", 1), ("skills", 1), ("skills", 2)]
    for r in steps:
        assert r["loss"] > 0 and math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["lr"] >= 0
        assert 0 < r["real_token_fraction"] <= 1
    scores = [r for r in recs if r["event"] == "score"]
    ckpts = phases["knowledge_short"]["checkpoints"] + phases["knowledge_long"]["checkpoints"] + \
        phases["skills"]["checkpoints"]
    assert sorted(r["checkpoint"] for r in scores) == sorted(ckpts)
    assert all(math.isfinite(r["heldout_loss"]) for r in scores)
    assert sum(r["selected"] for r in scores) == 2
    assert {r["phase"] for r in recs if r["event"] == "phase" and r["wall_s"] > 0} == set(phases)

    # Loss on the training data went down from the base model.
    rows = [json.loads(l) for sub in ("knowledge_train", "skills_train")
            for l in (data / sub / "part-00000.jsonl").read_text().splitlines()[3:11]]
    before, after = _train_loss(resolve_model("SmolLM2-135M-Instruct"), rows), _train_loss(final, rows)
    assert after < before - 0.05, (before, after)

    # The selected checkpoint is a plain HF directory: transformers loads it and it generates.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert (Path(final) / "model.safetensors").is_file() and (Path(final) / "tokenizer.json").is_file()
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final)
    enc = tok.apply_chat_template([{"role": "user", "content": "How many lighthouses?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gen = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] > enc["input_ids"].shape[1]
    assert tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_missing_data_is_a_clear_error(tmp_path, cli):
    code, out, err = cli("train", f"run.root={tmp_path}", "run.name=nothing")
    assert code == 1 and "no training data" in err and "Traceback" not in err
    code, out, err = cli("train", f"run.root={tmp_path}", "train.start_phase=bogus")
    assert code == 2 and "train.start_phase" in err
