"""Taxonomy-driven fan-out: every leaf gets its own quota of generation tasks.

A task is one generation request for one leaf. Its in-context examples come
from that leaf only, rotating through its examples so each is used evenly
(request r uses examples r*k .. r*k+k-1 modulo the leaf's count). Knowledge
tasks are spread round-robin over the leaf's document chunks. The sample id
is a hash of (leaf, example rotation, request index, item), so a rerun with
the same config produces the same ids.

The driver only builds one small `LeafSpec` per leaf; task rows are expanded
lazily from (leaf, start, end) ranges inside Ray Data, so a quota of millions
never materialises in one process.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Iterator

from lab_ray.taxonomy.chunking import chunk_text
from lab_ray.sdg.personas import persona_for
from lab_ray.taxonomy.leaf import Leaf

# Tasks per range: the unit of fan-out (and of Ray Data's input blocks).
RANGE = 256


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


@dataclass
class LeafSpec:
    """What every task of one leaf shares; small, shipped to Ray once."""

    leaf: str
    branch: str
    kind: str
    task_description: str
    domain: str
    persona: str
    quota: int
    examples: list[dict]  # in-context examples (rotated per request)
    seeds: list[dict] = field(default_factory=list)  # all seed Q/A (calibration references)
    chunks: list[str] = field(default_factory=list)  # knowledge: document chunks

    def to_dict(self) -> dict:
        return asdict(self)


def leaf_spec(leaf: Leaf, cfg, personas: dict[str, str], documents: list[str], tokenizer=None) -> LeafSpec:
    seeds = [_example(e) for e in leaf.examples]
    if leaf.is_knowledge:
        examples = knowledge_examples(leaf)
        chunks = [c for doc in documents
                  for c in chunk_text(doc, tokenizer, cfg.knowledge.chunk_tokens, cfg.knowledge.chunk_overlap)]
        chunks = chunks or [e["context"] for e in examples]
    else:
        examples, chunks = seeds, []
    persona = personas.get(persona_for(leaf.path, dict(cfg.personas)), personas["default"])
    return LeafSpec(leaf.path, leaf.branch.value, leaf.kind, leaf.task_description or leaf.domain or "",
                    leaf.domain or "", persona, quota(leaf, cfg), examples, seeds, chunks)


def expand(spec: dict, start: int, end: int, examples_per_prompt: int) -> Iterator[dict]:
    """Task rows [start, end) of one leaf, in request order."""
    examples, chunks = spec["examples"], spec["chunks"]
    for r in range(start, end):
        rot = rotation(len(examples), examples_per_prompt, r)
        chunk = r % len(chunks) if chunks else -1
        yield {"leaf": spec["leaf"], "branch": spec["branch"], "kind": spec["kind"],
               "task_description": spec["task_description"], "domain": spec["domain"],
               "id": sample_id(spec["leaf"], rot, r), "request_index": r,
               "examples": json.dumps([examples[i] for i in rot]), "persona": spec["persona"],
               "context": chunks[chunk] if chunks else "", "chunk_index": chunk}


def id_plan(specs: list[LeafSpec], examples_per_prompt: int) -> dict:
    """What decides the ids of a plan, small enough to ship to every task."""
    return {"examples_per_prompt": examples_per_prompt,
            "leaves": {s.leaf: [s.quota, len(s.examples)] for s in specs}}


def planned_ids(plan: dict) -> Iterator[str]:
    """Every task id of a plan, without building the task rows."""
    k = int(plan["examples_per_prompt"])
    for leaf, (quota, n_examples) in plan["leaves"].items():
        for r in range(quota):
            yield sample_id(leaf, rotation(n_examples, k, r), r)


def in_plan(rows, plan: dict) -> list[bool]:
    """Which rows (leaf, request_index, id) are tasks of this plan: a run directory
    keeps the shards of earlier plans (other leaves, quotas, examples) so a
    rerun of them is free, but the outputs are only this plan's."""
    if not len(rows) or "request_index" not in rows:
        return [False] * len(rows)
    k, leaves = int(plan["examples_per_prompt"]), plan["leaves"]
    keep = []
    for leaf, r, sid in zip(rows["leaf"].tolist(), rows["request_index"].tolist(), rows["id"].tolist()):
        q = leaves.get(leaf)
        keep.append(q is not None and 0 <= r < q[0] and sid == sample_id(leaf, rotation(q[1], k, r), r))
    return keep


def ranges(specs: list[LeafSpec]) -> list[dict]:
    return [{"leaf": s.leaf, "start": a, "end": min(a + RANGE, s.quota)}
            for s in specs for a in range(0, s.quota, RANGE)]
