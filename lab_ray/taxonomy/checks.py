"""Checks the JSON schema cannot express (it validates one value at a time)."""

from __future__ import annotations

import re
from typing import Any

from lab_ray.taxonomy.leaf import Branch
from lab_ray.taxonomy.yaml_source import YamlSource

# Keys that only a taxonomy qna.yaml has; used to spot one under the wrong name.
TAXONOMY_KEYS = {"seed_examples", "task_description", "document_outline"}


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def check_leaf_semantics(src: YamlSource, data: dict[str, Any], branch: Branch) -> None:
    seeds = data.get("seed_examples")
    if not isinstance(seeds, list):
        return
    if branch is not Branch.KNOWLEDGE:
        with_ctx = [i for i, s in enumerate(seeds) if isinstance(s, dict) and s.get("context")]
        without = [i for i, s in enumerate(seeds) if isinstance(s, dict) and not s.get("context")]
        if with_ctx and without:
            i = without[0] if len(without) <= len(with_ctx) else with_ctx[0]
            src.error(
                f"seed_examples mix grounded ({len(with_ctx)} with context) and freeform ({len(without)} without) "
                "examples; a skill is one or the other: give every example a context, or none",
                src.line_of(f".seed_examples[{i}]"),
            )
    seen: dict[str, str] = {}
    for i, seed in enumerate(seeds):
        if not isinstance(seed, dict):
            continue
        # Same question on a different context is a new example (grounded skills
        # reuse an instruction across contexts), so the key includes the context.
        context = _norm(seed["context"]) if isinstance(seed.get("context"), str) else ""
        items = [(f".seed_examples[{i}].question", seed.get("question"))]
        qas = seed.get("questions_and_answers")
        if isinstance(qas, list):
            items = [(f".seed_examples[{i}].questions_and_answers[{j}].question", qa.get("question"))
                     for j, qa in enumerate(qas) if isinstance(qa, dict)]
        for ypath, question in items:
            if not isinstance(question, str) or not question.strip():
                continue
            key = context + "\x00" + _norm(question)
            if key in seen:
                src.error(
                    f"duplicate question {question.strip()[:60]!r} (also at line {src.line_of(seen[key])}); "
                    "each seed question in a leaf (on the same context) must be different",
                    src.line_of(ypath),
                )
            else:
                seen[key] = ypath


def looks_like_taxonomy(data: Any) -> bool:
    return isinstance(data, dict) and bool(TAXONOMY_KEYS & set(map(str, data.keys())))
