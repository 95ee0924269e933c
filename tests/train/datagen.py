"""Small LAB-format training data written to real files (the SDG output contract)."""

from __future__ import annotations

import json
import random
from pathlib import Path

FACTS = ["Varrow Island has {n} lighthouses.", "The ferry to Varrow leaves at {n} o'clock.",
         "Varrow's harbour holds {n} boats.", "The island school has {n} pupils."]
SKILLS = ["Write a haiku about {w}.", "Summarise the note about {w}.", "List three facts about {w}."]
WORDS = ["rain", "tides", "gulls", "salt", "moss", "stone", "wind", "fog"]


def _row(i: int, kind: str, rng: random.Random, long: bool) -> dict:
    if kind == "knowledge":
        n = rng.randint(2, 40)
        q = f"How many is it, question {i}? " + FACTS[i % len(FACTS)].split(" has")[0]
        a = FACTS[i % len(FACTS)].format(n=n)
    else:
        w = WORDS[i % len(WORDS)]
        q = SKILLS[i % len(SKILLS)].format(w=w)
        a = f"Here is one about {w}: " + " ".join(rng.choice(WORDS) for _ in range(6))
    if long:
        a = a + " " + " ".join(f"Detail {k}: the {rng.choice(WORDS)} is {rng.choice(WORDS)}." for k in range(12))
    messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if i % 5 == 0:
        messages.insert(0, {"role": "system", "content": "You answer briefly."})
    if i % 7 == 0:
        messages += [{"role": "user", "content": "And again?"}, {"role": "assistant", "content": a.split(".")[0] + "."}]
    meta = {"leaf": f"{kind}/leaf{i % 3}", "branch": "knowledge" if kind == "knowledge" else "compositional_skills",
            "kind": kind, "length": "long" if long else "short", "answer_words": len(a.split()),
            "scores": {"judge": 3}}
    if kind == "knowledge":
        meta.update(chunk=f"chunk {i % 4}", chunk_index=i % 4)
    return {"id": f"{kind}-{'long' if long else 'short'}-{i}", "messages": messages, "metadata": meta}


def _overlong(i: int) -> dict:
    row = _row(i, "knowledge", random.Random(i), False)
    row["id"] = f"knowledge-overlong-{i}"
    row["messages"][-1]["content"] += " and so on" * 400  # far beyond any test max_seq_len
    return row


def write_run_data(data_dir: Path, n_knowledge_short=40, n_knowledge_long=16, n_skills=40, seed=0,
                   parts: int = 2, n_overlong: int = 0) -> Path:
    rng = random.Random(seed)
    groups = {"knowledge_train": [_overlong(5000 + i) for i in range(n_overlong)]
              + [_row(i, "knowledge", rng, False) for i in range(n_knowledge_short)]
              + [_row(1000 + i, "knowledge", rng, True) for i in range(n_knowledge_long)],
              "skills_train": [_row(i, "grounded" if i % 2 else "freeform", rng, False) for i in range(n_skills)]}
    for sub, rows in groups.items():
        d = data_dir / sub
        d.mkdir(parents=True, exist_ok=True)
        for p in range(parts):
            with open(d / f"part-{p:05d}.jsonl", "w") as f:
                for r in rows[p::parts]:
                    f.write(json.dumps(r) + "\n")
    (data_dir / "recipe.yaml").write_text("knowledge_train: {}\nskills_train: {}\n")
    (data_dir / "stats.json").write_text("{}")
    return data_dir
