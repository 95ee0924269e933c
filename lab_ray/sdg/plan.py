"""Plan: which leaves, and what every task of a leaf shares.

The taxonomy's selected leaves become one small `LeafSpec` each (examples,
document chunks, persona, quota); `plan.json` records the quotas and what
decides the task ids, so a rerun knows which shards belong to this plan.
Nothing here talks to the teacher or to Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from lab_ray.embedded_model import resolve_model
from lab_ray.errors import ConfigError, LabRayError
from lab_ray.prompts import load_prompt
from lab_ray.sdg.mixing import rules_from_config
from lab_ray.sdg.personas import load_personas
from lab_ray.sdg.judge_batch import check_rows_per_request
from lab_ray.sdg.stages import (PROMPT_NAMES, check_fanout, check_rationale, check_unseparated, effective_fanout,
                                load_rationale_texts)
from lab_ray.sdg.tasks import LeafSpec, id_plan, leaf_spec
from lab_ray.storage import atomic_write_json
from lab_ray.taxonomy.diff import changed_leaves
from lab_ray.taxonomy.loader import load_taxonomy
from lab_ray.teacher.tokenizer import check_choice_prompts, teacher_source, teacher_tokenizer

# Room the knowledge prompt needs besides the chunk and the answer: system text,
# principles, the leaf's own example (its context is a few hundred tokens at most).
PROMPT_ALLOWANCE_TOKENS = 768


@dataclass
class Plan:
    specs: list[LeafSpec]
    ids: dict  # what decides the task ids (tasks.id_plan)

    @property
    def total(self) -> int:
        """Candidate rows (requests x fan-out)."""
        return sum(s.quota for s in self.specs)

    @property
    def requests(self) -> int:
        """Tasks: one first-stage teacher request each."""
        return sum(s.requests for s in self.specs)

    def spec_dicts(self) -> dict[str, dict]:
        return {s.leaf: s.to_dict() for s in self.specs}


def select_leaves(cfg):
    only = None
    if cfg.sdg.leaves:
        only = set(cfg.sdg.leaves)
    elif cfg.sdg.only_changed and cfg.taxonomy.base != "empty":
        only = {c.leaf for c in changed_leaves(cfg.taxonomy.path, cfg.taxonomy.base) if c.status != "deleted"}
    tax = load_taxonomy(cfg.taxonomy.path, cfg.taxonomy, only=only)
    tax.raise_for_errors()
    if not tax.leaves:
        raise LabRayError("no leaves to generate from (check taxonomy.path, sdg.leaves or taxonomy.base)")
    return tax


def check_chunks_fit(cfg) -> None:
    """A chunk plus prompt plus answer must fit the teacher's context, or every
    knowledge request would come back as a 400 and be dropped as a teacher error."""
    k = cfg.sdg.knowledge
    context = k.teacher_context_tokens or local_context_length(cfg)
    if not context:
        return  # a remote teacher whose context we cannot know: its 400s are counted per row
    need = k.chunk_tokens + k.max_tokens + PROMPT_ALLOWANCE_TOKENS
    if need > context:
        raise ConfigError(f"sdg.knowledge.chunk_tokens ({k.chunk_tokens}) + sdg.knowledge.max_tokens ({k.max_tokens}) "
                          f"+ ~{PROMPT_ALLOWANCE_TOKENS} prompt tokens = {need} exceed the teacher's context of "
                          f"{context} tokens: lower chunk_tokens or max_tokens")


def local_context_length(cfg) -> int | None:
    from transformers import AutoConfig

    local = Path(resolve_model(teacher_source(cfg))).expanduser()
    if not local.is_dir():
        return None  # a served model name, not a local directory: never ask a hub
    try:
        mcfg = AutoConfig.from_pretrained(str(local))
    except (OSError, ValueError):
        return None
    context = getattr(mcfg, "max_position_embeddings", None)
    if cfg.teacher.backend == "vllm" and context:  # vLLM serves at most max_model_len
        context = min(context, int(cfg.teacher.vllm.max_model_len))
    return context


def build_plan(cfg) -> list[LeafSpec]:
    """One small spec per selected leaf (examples, chunks, persona, quota)."""
    tax = select_leaves(cfg)
    personas = load_personas(cfg.sdg.prompts_dir)
    # Fail early on a broken prompt file, or judge choices the teacher cannot tell apart.
    check_choice_prompts(cfg, [load_prompt(name, cfg.sdg.prompts_dir) for name in PROMPT_NAMES])
    check_fanout(OmegaConf.to_container(cfg.sdg.fanout) if cfg.sdg.get("fanout") is not None else None)
    effective_fanout(cfg.sdg)  # checks sdg.knowledge.views
    if check_rationale(cfg.sdg):
        load_rationale_texts(cfg.sdg.prompts_dir)
    check_rows_per_request(cfg.sdg)
    check_unseparated(cfg.sdg)
    rules_from_config(cfg.sdg.mixing)  # a bad mixing rule fails now, not after generation
    tokenizer = teacher_tokenizer(cfg) if any(leaf.is_knowledge for leaf in tax.leaves) else None
    if tokenizer is not None:  # some leaf is a knowledge leaf
        check_chunks_fit(cfg)
    specs = []
    for leaf in tax.leaves:
        docs = [d.read_text(cfg.taxonomy.documents.max_document_bytes) for d in tax.documents.get(leaf.path, [])]
        specs.append(leaf_spec(leaf, cfg.sdg, personas, docs, tokenizer))
    return specs


def make_plan(cfg, out) -> Plan:
    """The plan of this run, recorded in out/plan.json."""
    specs = build_plan(cfg)
    plan = Plan(specs, id_plan(specs, int(cfg.sdg.examples_per_prompt)))
    atomic_write_json(out / "plan.json", {"tasks": plan.requests, "rows": plan.total,
                                          "leaves": {s.leaf: s.quota for s in specs},
                                          "ids": plan.ids, "config": OmegaConf.to_container(cfg.sdg, resolve=True)})
    return plan
