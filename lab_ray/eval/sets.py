"""The evaluation sets of a run, built once and cached in runs/<name>/eval/.

- Knowledge (MMLU-branch): the teacher writes multiple-choice questions from
  chunks of each knowledge leaf's documents. Generation goes in rounds: every
  chunk gets one request per round (each with its own deterministic seed) and
  chunks that already yielded a valid question stop asking, up to
  `eval.knowledge.attempts_per_chunk` rounds. The few-shot turns are cloze
  MCQs built from the leaf's seed Q/A, so the teacher sees the exact format.
  If fewer than `min_questions_per_leaf` valid questions come back, the
  cloze MCQs of the leaf's own seed Q/A are added (documented fallback), so
  every knowledge leaf is scorable even with a weak teacher.
  Cache: eval/knowledge_mcq.jsonl (+ .meta.json with a per-leaf fingerprint
  of documents, seeds, settings, prompt and teacher: a leaf is regenerated
  only when its fingerprint changes, so checkpoint selection never pays twice).
- Skills (MT-Bench-branch): the seed questions of every skill leaf, with the
  seed answer as reference. Seed examples are few-shot material for SDG, never
  training rows, so they are held out from the student's training data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lab_ray.errors import LabRayError
from lab_ray.eval.mcq import LETTERS, MCQ, cloze_mcqs, mcq_id, norm, parse_mcq, support
from lab_ray.storage import atomic_write_json, atomic_write_text, run_dir

MCQ_FILE = "knowledge_mcq.jsonl"


@dataclass
class EvalSets:
    knowledge: dict[str, list[MCQ]] = field(default_factory=dict)
    skills: dict[str, list[dict]] = field(default_factory=dict)
    leaves: dict[str, dict] = field(default_factory=dict)  # leaf -> {kind, branch}
    generation: dict[str, dict] = field(default_factory=dict)  # knowledge leaf -> MCQ build stats

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for leaf in sorted(self.knowledge):
            h.update(("K" + leaf + "".join(q.id for q in self.knowledge[leaf])).encode())
        for leaf in sorted(self.skills):
            h.update(("S" + leaf + json.dumps(self.skills[leaf], sort_keys=True)).encode())
        return h.hexdigest()[:16]


def eval_dir(cfg):
    return run_dir(cfg) / "eval"


def lock_file(cfg, name: str) -> Path:
    """A file to flock for `name` of this run's eval: in the run's eval/ when that is
    on local disk, else in this node's temp dir (a lock file cannot live in an object store)."""
    import hashlib
    import tempfile

    d = eval_dir(cfg)
    if d.is_local:
        d.mkdir()
        return d.local_path() / name
    local = Path(tempfile.gettempdir()) / "lab-ray-locks" / hashlib.sha1(d.uri.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    return local / name


def load_leaves(cfg):
    """The taxonomy's leaves to evaluate (eval.leaves, else all), documents resolved."""
    from lab_ray.taxonomy.loader import load_taxonomy

    only = set(cfg.eval.leaves) if cfg.eval.leaves else None
    tax = load_taxonomy(cfg.taxonomy.path, cfg.taxonomy, only=only)
    tax.raise_for_errors()
    if not tax.leaves:
        raise LabRayError("no leaves to evaluate (check taxonomy.path and eval.leaves)")
    return tax


def skill_items(leaf, limit: int = 0) -> list[dict]:
    """Seed questions in the form the student is trained on (grounded: context, blank line, question)."""
    items = []
    for i, ex in enumerate(leaf.examples):
        if not ex.question or not ex.answer:
            continue
        user = f"{ex.context.strip()}\n\n{ex.question}" if ex.context else ex.question
        items.append({"id": f"{i}", "question": user, "reference": ex.answer.strip()})
    return items[:limit] if limit else items


def _spread(items: list, n: int) -> list:
    """n items evenly spread over the list (all when it is short)."""
    if n <= 0 or len(items) <= n:
        return list(items)
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else [items[0]]


def _leaf_fingerprint(cfg, leaf, docs: list[str], prompt) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(OmegaConf.to_container(cfg.eval.knowledge, resolve=True), sort_keys=True).encode())
    h.update(f"{cfg.eval.seed}|{cfg.teacher.model}|{prompt.system}|{prompt.turn_user}|{prompt.turn_assistant}".encode())
    for ex in leaf.examples:
        h.update(f"{ex.question}\x1f{ex.answer}\x1f{ex.context}".encode())
    for d in docs:
        h.update(hashlib.sha256(d.encode()).digest())
    return h.hexdigest()[:20]


def _few_shot(seed_mcqs: list[MCQ], leaf, k: int, offset: int) -> list[dict]:
    four = [q for q in seed_mcqs if len(q.options) == 4]
    if not four or k <= 0:
        return []
    contexts = {i: ex.context or "" for i, ex in enumerate(leaf.examples)}
    shots = []
    for j in range(min(k, len(four))):
        q = four[(offset + j) % len(four)]
        shots.append({"context": contexts.get(q.meta.get("seed_example", -1), "").strip(), "domain": leaf.domain,
                      "question": q.question, "options": q.options, "letter": LETTERS[q.answer]})
    return shots


def generate_mcqs(cfg, leaf, docs: list[str], client, tokenizer, prompt) -> tuple[list[MCQ], dict]:
    """Teacher-written MCQs for one knowledge leaf (+ cloze fallback); returns (mcqs, stats)."""
    from lab_ray.taxonomy.chunking import chunk_text

    k = cfg.eval.knowledge
    seed_mcqs = cloze_mcqs(leaf.path, leaf.examples, cfg.eval.seed)
    chunks = [c for d in docs for c in chunk_text(d, tokenizer, k.chunk_tokens, k.chunk_overlap)]
    if not chunks:  # a leaf without a readable document: its seed contexts
        chunks = list(dict.fromkeys(ex.context.strip() for ex in leaf.examples if ex.context))
    chunks = _spread(chunks, k.max_chunks_per_leaf)
    stats = {"chunks": len(chunks), "requests": 0, "failed_requests": 0, "valid": 0, "rejected": {},
             "cloze": 0, "prompt_tokens": 0, "completion_tokens": 0}
    found: list[MCQ] = []
    seen = {norm(ex.question) for ex in leaf.examples}  # a copied seed question is not a new question
    pending = list(range(len(chunks)))
    for attempt in range(max(1, k.attempts_per_chunk)):
        if not pending or len(found) >= k.max_questions_per_leaf:
            break
        calls = []
        for ci in pending:
            messages = prompt.render({"context": chunks[ci], "domain": leaf.domain or "document"},
                                     _few_shot(seed_mcqs, leaf, k.examples_per_prompt, ci + attempt))
            seed = int(hashlib.sha256(f"{cfg.eval.seed}:{leaf.path}:{ci}:{attempt}".encode()).hexdigest()[:8], 16)
            params = {"messages": messages, "max_tokens": k.max_tokens, "temperature": k.temperature, "seed": seed}
            if prompt.stop:
                params["stop"] = list(prompt.stop)
            calls.append(("chat", params))
        replies = client.run_many(calls)
        still = []
        for ci, reply in zip(pending, replies):
            stats["requests"] += 1
            stats["prompt_tokens"] += reply.prompt_tokens
            stats["completion_tokens"] += reply.completion_tokens
            if not reply.ok:
                stats["failed_requests"] += 1
                stats["rejected"][reply.error or "error"] = stats["rejected"].get(reply.error or "error", 0) + 1
                still.append(ci)
                continue
            items, reasons = parse_mcq(reply.text)
            for r in reasons:
                stats["rejected"][r] = stats["rejected"].get(r, 0) + 1
            new = 0
            for it in items:
                if support(it["options"][it["answer"]], chunks[ci]) < k.min_answer_support:
                    stats["rejected"]["answer_not_in_chunk"] = stats["rejected"].get("answer_not_in_chunk", 0) + 1
                    continue
                if norm(it["question"]) in seen:
                    stats["rejected"]["duplicate_question"] = stats["rejected"].get("duplicate_question", 0) + 1
                    continue
                seen.add(norm(it["question"]))
                found.append(MCQ(mcq_id(leaf.path, it["question"], it["options"]), leaf.path, it["question"],
                                 it["options"], it["answer"], source="teacher", chunk=ci, meta={"attempt": attempt}))
                new += 1
            if not new:
                still.append(ci)
        pending = still
    found = found[: k.max_questions_per_leaf]
    stats["valid"] = len(found)
    if k.cloze_fallback and len(found) < k.min_questions_per_leaf:
        cloze = seed_mcqs[: max(0, k.max_questions_per_leaf - len(found))]
        found += cloze
        stats["cloze"] = len(cloze)
    return found, stats


def _read_cache(path: Path) -> tuple[dict[str, list[MCQ]], dict]:
    meta_path = path.with_suffix(".meta.json")
    if not path.exists() or not meta_path.exists():
        return {}, {}
    try:
        meta = json.loads(meta_path.read_text())
        by_leaf: dict[str, list[MCQ]] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                q = MCQ.from_dict(json.loads(line))
                by_leaf.setdefault(q.leaf, []).append(q)
        return by_leaf, meta
    except (ValueError, TypeError, KeyError):
        return {}, {}  # a damaged cache is rebuilt


def _write_cache(path: Path, by_leaf: dict[str, list[MCQ]], meta: dict) -> None:
    # The items first, then the meta that vouches for them: a kill between leaves
    # new items with an old meta, whose fingerprints then no longer match (rebuilt).
    atomic_write_text(path, "".join(json.dumps(q.to_dict()) + "\n" for leaf in sorted(by_leaf) for q in by_leaf[leaf]))
    atomic_write_json(path.with_suffix(".meta.json"), meta)


def build_eval_sets(cfg, teacher=None, tax=None) -> EvalSets:
    """Eval sets for the run; knowledge MCQs come from the cache or, for leaves
    missing or changed there, from the teacher (`teacher()` returns a client)."""
    from lab_ray.prompts import load_prompt
    from lab_ray.teacher.tokenizer import check_choice_prompts, teacher_tokenizer

    tax = tax or load_leaves(cfg)
    sets = EvalSets()
    prompt = load_prompt("eval_mcq", cfg.eval.prompts_dir)
    # Fail early on a broken judge prompt, or rating choices the teacher cannot tell apart.
    check_choice_prompts(cfg, [load_prompt("eval_judge", cfg.eval.prompts_dir)])
    cache_path = eval_dir(cfg) / MCQ_FILE
    cached, meta = _read_cache(cache_path)
    fingerprints = meta.get("fingerprints", {})
    gen_stats = meta.get("generation", {})
    dirty = False
    tokenizer = None
    for leaf in tax.leaves:
        sets.leaves[leaf.path] = {"kind": leaf.kind, "branch": leaf.branch.value}
        if not leaf.is_knowledge:
            sets.skills[leaf.path] = skill_items(leaf, cfg.eval.skills.max_questions_per_leaf)
            continue
        docs = [d.read_text(cfg.taxonomy.documents.max_document_bytes) for d in tax.documents.get(leaf.path, [])]
        fp = _leaf_fingerprint(cfg, leaf, docs, prompt)
        if fingerprints.get(leaf.path) == fp and leaf.path in cached:
            sets.knowledge[leaf.path] = cached[leaf.path]
            continue
        if teacher is None:
            raise LabRayError(f"knowledge MCQs for {leaf.path} are not cached in {cache_path} and no teacher is available")
        tokenizer = tokenizer or teacher_tokenizer(cfg)
        mcqs, stats = generate_mcqs(cfg, leaf, docs, teacher(), tokenizer, prompt)
        sets.knowledge[leaf.path] = mcqs
        fingerprints[leaf.path], gen_stats[leaf.path] = fp, stats
        cached[leaf.path] = mcqs
        dirty = True
    for leaf_path in sets.knowledge:
        if not sets.knowledge[leaf_path]:
            raise LabRayError(f"knowledge leaf {leaf_path} has no scorable questions: the teacher wrote none and "
                              "its seed examples have fewer than two distinct answers")
    if dirty:
        _write_cache(cache_path, cached, {"fingerprints": fingerprints, "generation": gen_stats})
    sets.generation = {k: v for k, v in gen_stats.items() if k in sets.knowledge}
    return sets
