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

Fan-out (`sdg.fanout`, see stages.FanOutStage): a stage that asks for n
completions turns one row into n. A leaf's quota counts candidate rows, so it
needs ceil(quota / fan-out product) requests. The fan-out widths are part of
the task id (a run with other widths is another plan); a child's id is
derived from its parent's (`child_id`), and `item_path` records its indices
("2" or "0.3"), so every row of a task can be accounted for on resume
(`task_shares`).
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


def sample_id(leaf: str, rotation: list[int], request: int, item: int | str = 0) -> str:
    key = f"{leaf}|{','.join(map(str, rotation))}|{request}|{item}"
    return hashlib.sha1(key.encode()).hexdigest()[:20]


def task_id(leaf: str, rotation: list[int], request: int, fanout_key: str) -> str:
    """The id of a task row: without fan-out the same as before fan-out existed (old runs resume)."""
    return sample_id(leaf, rotation, request, fanout_key or 0)


def child_id(parent_id: str, stage: str, index: int) -> str:
    """The id of the index-th row a fan-out stage makes of a parent row."""
    return hashlib.sha1(f"{parent_id}|{stage}|{index}".encode()).hexdigest()[:20]


def fanout_widths(kind: str, fanout: dict) -> list[tuple[str, int]]:
    """(stage, width) of the fan-out stages a row of this kind passes, in flow order (width > 1 only)."""
    from lab_ray.sdg.stages import FanOutStage, PIPELINE

    return [(s.stage, w) for s in PIPELINE
            if issubclass(s, FanOutStage) and kind in s.kinds and (w := s.width_for(fanout)) > 1]


def quota_rows(kind: str, depth: int, fanout: dict) -> int:
    """Candidate rows of the quota that one stored row at this fan-out depth stands for (a row
    dropped before a fan-out stands for every child it would have had)."""
    return fanout_product(fanout_widths(kind, fanout)[int(depth):])


def fanout_key(widths: list[tuple[str, int]]) -> str:
    return ",".join(f"{stage}={w}" for stage, w in widths)


def fanout_product(widths: list[tuple[str, int]]) -> int:
    p = 1
    for _, w in widths:
        p *= w
    return p


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
    quota: int  # candidate rows: requests x the fan-out product, at least the configured quota
    examples: list[dict]  # in-context examples (rotated per request)
    seeds: list[dict] = field(default_factory=list)  # all seed Q/A (calibration references)
    chunks: list[str] = field(default_factory=list)  # knowledge: document chunks
    requests: int = 0  # tasks (teacher requests of the first stage)
    fanout: str = ""  # fanout_key of the kind's fan-out widths ("" = none)

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
    from lab_ray.sdg.stages import effective_fanout

    widths = fanout_widths(leaf.kind, effective_fanout(cfg))
    per_request = fanout_product(widths)
    requests = -(-quota(leaf, cfg) // per_request)
    return LeafSpec(leaf.path, leaf.branch.value, leaf.kind, leaf.task_description or leaf.domain or "",
                    leaf.domain or "", persona, requests * per_request, examples, seeds, chunks,
                    requests, fanout_key(widths))


def expand(spec: dict, start: int, end: int, examples_per_prompt: int) -> Iterator[dict]:
    """Task rows [start, end) of one leaf, in request order."""
    examples, chunks = spec["examples"], spec["chunks"]
    for r in range(start, end):
        rot = rotation(len(examples), examples_per_prompt, r)
        chunk = r % len(chunks) if chunks else -1
        tid = task_id(spec["leaf"], rot, r, spec.get("fanout", ""))
        yield {"leaf": spec["leaf"], "branch": spec["branch"], "kind": spec["kind"],
               "task_description": spec["task_description"], "domain": spec["domain"],
               "id": tid, "task_id": tid, "item_path": "", "request_index": r,
               "examples": json.dumps([examples[i] for i in rot]), "persona": spec["persona"],
               "context": chunks[chunk] if chunks else "", "chunk_index": chunk}


def id_plan(specs: list[LeafSpec], examples_per_prompt: int) -> dict:
    """What decides the ids of a plan, small enough to ship to every task:
    per leaf [requests, in-context examples, fan-out key]."""
    return {"examples_per_prompt": examples_per_prompt,
            "leaves": {s.leaf: [s.requests, len(s.examples), s.fanout] for s in specs}}


def _leaf_ids(plan: dict, leaf: str):
    q = plan["leaves"].get(leaf)
    if q is None:
        return None
    return int(q[0]), int(q[1]), (q[2] if len(q) > 2 else "")


def planned_ids(plan: dict) -> Iterator[str]:
    """Every task id of a plan, without building the task rows."""
    k = int(plan["examples_per_prompt"])
    for leaf in plan["leaves"]:
        requests, n_examples, fkey = _leaf_ids(plan, leaf)
        for r in range(requests):
            yield task_id(leaf, rotation(n_examples, k, r), r, fkey)


def _widths(fkey: str) -> list[int]:
    return [int(part.split("=")[1]) for part in fkey.split(",")] if fkey else []


def _path_fits(path: str, widths: list[int]) -> bool:
    parts = path.split(".") if path else []
    return len(parts) <= len(widths) and all(0 <= int(p) < w for p, w in zip(parts, widths))


def in_plan(rows, plan: dict) -> list[bool]:
    """Which rows (leaf, request_index, task_id, item_path) belong to tasks of this plan: a run
    directory keeps the shards of earlier plans (other leaves, quotas, examples, fan-out) so a
    rerun of them is free, but the outputs are only this plan's."""
    if not len(rows) or "request_index" not in rows:
        return [False] * len(rows)
    k = int(plan["examples_per_prompt"])
    tids = rows["task_id"].tolist() if "task_id" in rows else rows["id"].tolist()
    paths = rows["item_path"].tolist() if "item_path" in rows else [""] * len(rows)
    keep = []
    for leaf, r, tid, path in zip(rows["leaf"].tolist(), rows["request_index"].tolist(), tids, paths):
        q = _leaf_ids(plan, leaf)
        keep.append(q is not None and 0 <= r < q[0] and tid == task_id(leaf, rotation(q[1], k, r), r, q[2])
                    and _path_fits(path, _widths(q[2])))
    return keep


def row_share(path: str, fkey: str) -> float:
    """The part of its task one row stands for: 1 / the widths of the fan-outs it went through."""
    share = 1.0
    for w in _widths(fkey)[: len(path.split(".")) if path else 0]:
        share /= w
    return share


def task_shares(rows, plan: dict) -> dict[str, float]:
    """Sum of row shares per task id (1.0 = every row of the task is stored; less = a task a
    kill interrupted between two shards, which a resume redoes)."""
    tids = rows["task_id"].tolist() if "task_id" in rows else rows["id"].tolist()
    paths = rows["item_path"].tolist() if "item_path" in rows else [""] * len(rows)
    out: dict[str, float] = {}
    for leaf, tid, path in zip(rows["leaf"].tolist(), tids, paths):
        q = _leaf_ids(plan, leaf)
        out[tid] = out.get(tid, 0.0) + row_share(path, q[2] if q else "")
    return out


def ranges(specs: list[LeafSpec]) -> list[dict]:
    return [{"leaf": s.leaf, "start": a, "end": min(a + RANGE, s.requests)}
            for s in specs for a in range(0, s.requests, RANGE)]
