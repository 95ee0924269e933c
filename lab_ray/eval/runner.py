"""Scoring a model on the run's eval sets, and the base-vs-trained comparison.

Result layout (also what eval/results.json holds, see `run_eval`):
  {"model", "leaves": {leaf: {"kind", "branch", "metric", "score", "n", ...}},
   "summary": {"mmlu_branch": mean accuracy over knowledge leaves,
               "mt_bench_branch": mean judge score over skill leaves, ...}}
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from lab_ray.eval.mcq import MCQ
from lab_ray.eval.sets import EvalSets, build_eval_sets, eval_dir
from lab_ray.eval.student import StudentModel
from lab_ray.storage import atomic_write_json
from lab_ray.train.checkpoints import materialize

KNOWLEDGE_METRIC = "accuracy"
SKILLS_METRIC = "judge_1_10"
_JUDGE_CACHE: dict[str, dict] = {}


def score_knowledge(student: StudentModel, mcqs: dict[str, list[MCQ]], normalize: str = "chars") -> dict[str, dict]:
    out = {}
    for leaf, items in mcqs.items():
        correct, by_source, rows = 0, {}, []
        for q in items:
            pred, _scores = student.pick(q.question, q.options, normalize)
            ok = pred == q.answer
            correct += ok
            s = by_source.setdefault(q.source, {"n": 0, "correct": 0})
            s["n"] += 1
            s["correct"] += ok
            rows.append({"id": q.id, "source": q.source, "pred": pred, "answer": q.answer, "correct": ok})
        for s in by_source.values():
            s["accuracy"] = s["correct"] / s["n"]
        # chance level: what picking uniformly among each item's options would score
        chance = sum(1 / len(q.options) for q in items) / len(items) if items else None
        out[leaf] = {"metric": KNOWLEDGE_METRIC, "score": correct / len(items) if items else None, "n": len(items),
                     "correct": correct, "chance": chance, "by_source": by_source, "items": rows}
    return out


def judge_calls(prompt, items: list[dict], answers: list[str]) -> list[tuple[str, dict]]:
    return [("choose", {"messages": prompt.render({"question": it["question"], "reference": it["reference"],
                                                    "answer": ans or "(no answer)"}),
                        "choices": list(prompt.choices)}) for it, ans in zip(items, answers)]


def expected_score(probs: dict[str, float] | None, scores: dict) -> float | None:
    if not probs:
        return None
    total = sum(probs.values())
    return sum(p * float(scores[c]) for c, p in probs.items() if c in scores) / total if total else None


def judge(teacher, prompt, items: list[dict], answers: list[str], model_name: str) -> list[dict]:
    """Teacher verdicts (1-10 expected score) for each answer; cached per (judge, task, reference, answer)."""
    keys = [hashlib.sha256(json.dumps([model_name, prompt.system, prompt.turn_user, it["question"], it["reference"], a])
                           .encode()).hexdigest() for it, a in zip(items, answers)]
    todo = [i for i, k in enumerate(keys) if k not in _JUDGE_CACHE]
    if todo:
        replies = teacher().run_many(judge_calls(prompt, [items[i] for i in todo], [answers[i] for i in todo]))
        for i, reply in zip(todo, replies):
            probs = reply.choice_probs() if reply.ok else None
            if reply.ok and not probs and reply.text in prompt.scores:  # a server without choice_logprobs
                probs = {reply.text: 1.0}
            score = expected_score(probs, prompt.scores)
            verdict = {"score": score, "verdict": reply.text if reply.ok else None,
                       "error": None if score is not None else (reply.error or "no_verdict")}
            if score is not None:
                _JUDGE_CACHE[keys[i]] = verdict
            else:
                _JUDGE_CACHE.pop(keys[i], None)
                items[i] = dict(items[i], _failed=verdict)
    return [_JUDGE_CACHE.get(k) or items[i].get("_failed") for i, k in enumerate(keys)]


def score_skills(student: StudentModel, skills: dict[str, list[dict]], teacher, cfg) -> dict[str, dict]:
    from lab_ray.prompts import load_prompt

    prompt = load_prompt("eval_judge", cfg.eval.prompts_dir)
    flat = [(leaf, it) for leaf, items in skills.items() for it in items]
    if not flat:
        return {}
    answers = student.answer([it["question"] for _, it in flat], cfg.eval.skills.max_new_tokens,
                             batch_size=cfg.eval.batch_size)
    verdicts = judge(teacher, prompt, [dict(it) for _, it in flat], answers, cfg.teacher.model)
    out: dict[str, dict] = {leaf: {"metric": SKILLS_METRIC, "score": None, "n": 0, "judge_failures": 0, "items": []}
                            for leaf in skills}
    for (leaf, it), ans, v in zip(flat, answers, verdicts):
        row = out[leaf]
        row["items"].append({"id": it["id"], "question": it["question"], "answer": ans, "score": v["score"],
                             "verdict": v["verdict"], "error": v["error"]})
        if v["score"] is None:
            row["judge_failures"] += 1
    for row in out.values():
        scored = [r["score"] for r in row["items"] if r["score"] is not None]
        row["n"] = len(scored)
        row["score"] = sum(scored) / len(scored) if scored else None
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def summarize(leaves: dict[str, dict]) -> dict[str, float | None]:
    k = [r["score"] for r in leaves.values() if r["metric"] == KNOWLEDGE_METRIC]
    s = [r["score"] for r in leaves.values() if r["metric"] == SKILLS_METRIC]
    comp = [r["score"] for r in leaves.values() if r["metric"] == SKILLS_METRIC and r["branch"] == "compositional_skills"]
    found = [r["score"] for r in leaves.values() if r["metric"] == SKILLS_METRIC and r["branch"] == "foundational_skills"]
    return {"mmlu_branch": _mean(k), "mt_bench_branch": _mean(s), "mt_bench_branch/compositional": _mean(comp),
            "mt_bench_branch/foundational": _mean(found)}


def evaluate_model(model_path: str, cfg, sets: EvalSets, teacher, parts=("knowledge", "skills"),
                   student: StudentModel | None = None) -> dict:
    """Score one model on the given sets; `teacher` is a LazyTeacher-like callable (skills only)."""
    t0 = time.time()
    student = student or StudentModel.load(materialize(str(model_path)), tokenizer_from=cfg.eval.base_model)
    leaves: dict[str, dict] = {}
    if "knowledge" in parts and sets.knowledge:
        leaves.update(score_knowledge(student, sets.knowledge, cfg.eval.knowledge.normalize))
    if "skills" in parts and sets.skills:
        leaves.update(score_skills(student, sets.skills, teacher, cfg))
    for leaf, row in leaves.items():
        row.update(sets.leaves[leaf])
    return {"model": str(model_path), "leaves": dict(sorted(leaves.items())), "summary": summarize(leaves),
            "seconds": round(time.time() - t0, 1)}


_MODEL_FILES = (".safetensors", ".bin", ".json", ".pt")


def model_fingerprint(model_path: str) -> str:
    """Name, size and mtime of the model's weight and config files (a retrained checkpoint changes it).
    A checkpoint URI is never rewritten (Ray Train names each checkpoint anew): its URI and its files'
    names and sizes identify it, the same on every node, where a node's downloaded copy has its own
    path and mtimes (the eval cache in the run's storage would miss across nodes)."""
    from lab_ray.embedded_model import resolve_model
    from lab_ray.storage import StoragePath, is_uri

    if is_uri(str(model_path)):
        import pyarrow.fs as pafs

        root = StoragePath(str(model_path))
        listing = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))  # one call
        parts = [root.uri] + sorted(f"{i.base_name}:{i.size}" for i in listing
                                    if i.type == pafs.FileType.File and i.base_name.endswith(_MODEL_FILES))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    local = Path(resolve_model(materialize(str(model_path))))
    parts = [str(local.resolve())]
    if local.is_dir():
        for f in sorted(local.iterdir()):
            if f.suffix in _MODEL_FILES and f.is_file():
                st = f.stat()
                parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _cache_key(cfg, sets: EvalSets, model_path: str) -> str:
    from omegaconf import OmegaConf

    blob = json.dumps([model_fingerprint(model_path), sets.fingerprint(), cfg.teacher.model,
                       OmegaConf.to_container(cfg.eval, resolve=True)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate_cached(model_path: str, cfg, sets: EvalSets, teacher) -> dict:
    """evaluate_model, reusing eval/cache/<key>.json for the same model files, eval sets and settings."""
    cache = eval_dir(cfg) / "cache" / f"{_cache_key(cfg, sets, model_path)}.json"
    if cache.exists():
        try:
            res = json.loads(cache.read_text())
            res["model"] = str(model_path)
            return res
        except ValueError:
            pass
    res = evaluate_model(model_path, cfg, sets, teacher)
    atomic_write_json(cache, res)
    return res


def compare(trained: dict, base: dict | None) -> dict[str, dict]:
    """Per leaf: kind, metric, n, base, trained, delta."""
    rows = {}
    for leaf, r in trained["leaves"].items():
        b = (base or {}).get("leaves", {}).get(leaf, {}).get("score")
        t = r["score"]
        rows[leaf] = {"kind": r["kind"], "branch": r["branch"], "metric": r["metric"], "n": r["n"], "trained": t,
                      "base": b, "delta": (t - b) if (t is not None and b is not None) else None}
    return rows


def run_eval(cfg, model_path: str, base: bool = True, teacher=None) -> dict:
    """Evaluate `model_path` (a checkpoint / HF directory or SmolLM2-135M-Instruct) on the run's eval sets,
    optionally also the base model (cfg.eval.base_model); results are cached per model files + eval
    sets + settings in eval/cache/, so re-evaluating an unchanged model is free. Writes
    runs/<name>/eval/results.json. Returns {"model", "base_model", "trained", "base", "comparison",
    "summary", "generation", "teacher_usage", "path"}."""
    from lab_ray.eval.teacher import LazyTeacher

    StudentModel.check(materialize(str(model_path)))  # a wrong MODEL fails before any teacher work
    if base:
        StudentModel.check(cfg.eval.base_model)
    own = teacher is None
    teacher = teacher or LazyTeacher(cfg)
    try:
        sets = build_eval_sets(cfg, teacher)
        trained = evaluate_cached(model_path, cfg, sets, teacher)
        base_res = evaluate_cached(cfg.eval.base_model, cfg, sets, teacher) if base else None
        usage = teacher.usage if hasattr(teacher, "usage") else {}
    finally:
        if own:
            teacher.close()
    result = {"model": str(model_path), "base_model": cfg.eval.base_model if base else None, "trained": trained,
              "base": base_res, "comparison": compare(trained, base_res),
              "summary": {"trained": trained["summary"], "base": base_res["summary"] if base_res else None},
              "generation": sets.generation, "teacher_usage": usage,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = eval_dir(cfg) / "results.json"
    atomic_write_json(path, result)
    result["path"] = str(path)
    return result
