"""Taxonomy-driven fan-out: every leaf gets its own quota of generation tasks.

A task is one generation request for one leaf. Its in-context examples come
from that leaf only, rotating through its examples so each is used evenly
(request r uses examples r*k .. r*k+k-1 modulo the leaf's count). Knowledge
tasks are spread round-robin over the leaf's document chunks. The sample id
is a hash of (leaf, example rotation, request index, item), so a rerun with
the same config produces the same ids.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterator

from lab_ray.sdg.chunking import chunk_text
from lab_ray.sdg.prompts import persona_for
from lab_ray.taxonomy.leaf import Leaf


def quota(leaf: Leaf, cfg) -> int:
    return int(cfg.samples_per_leaf) if cfg.samples_per_leaf > 0 else int(cfg.scale_factor) * len(leaf.examples)


def sample_id(leaf: str, rotation: list[int], request: int, item: int = 0) -> str:
    key = f"{leaf}|{','.join(map(str, rotation))}|{request}|{item}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def rotation(n_examples: int, k: int, request: int) -> list[int]:
    k = min(k, n_examples)
    return [(request * k + j) % n_examples for j in range(k)]


def _example(e) -> dict:
    return {"question": e.question, "answer": e.answer, "context": e.context or ""}


def knowledge_examples(leaf: Leaf) -> list[dict]:
    """One in-context example per seed context: the context and its first Q/A."""
    seen, out = set(), []
    for e in leaf.examples:
        if e.group not in seen:
            seen.add(e.group)
            out.append(_example(e))
    return out


def leaf_tasks(leaf: Leaf, cfg, personas: dict[str, str], documents: list[str], tokenizer=None) -> Iterator[dict]:
    n = quota(leaf, cfg)
    base = {"leaf": leaf.path, "branch": leaf.branch.value, "kind": leaf.kind,
            "task_description": leaf.task_description or leaf.domain, "domain": leaf.domain}
    if leaf.is_knowledge:
        examples = knowledge_examples(leaf)
        chunks = [c for doc in documents for c in chunk_text(doc, tokenizer, cfg.knowledge.chunk_tokens,
                                                              cfg.knowledge.chunk_overlap)]
        if not chunks:
            chunks = [e["context"] for e in examples]
    else:
        examples = [_example(e) for e in leaf.examples]
        chunks = []
    persona = personas.get(persona_for(leaf.path, dict(cfg.personas)), personas["default"])
    for r in range(n):
        rot = rotation(len(examples), cfg.examples_per_prompt, r)
        row = {**base, "id": sample_id(leaf.path, rot, r), "request_index": r,
               "examples": json.dumps([examples[i] for i in rot]), "persona": persona,
               "context": "", "chunk_index": -1}
        if leaf.is_knowledge:
            row["chunk_index"] = r % len(chunks)
            row["context"] = chunks[row["chunk_index"]]
        yield row
