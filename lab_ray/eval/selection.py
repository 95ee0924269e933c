"""Checkpoint-selection scorers for the training stage.

Listed in the training config as import paths ("module:function") and called
as `fn(checkpoint_dir, phase, cfg) -> dict[str, float]` for each candidate
checkpoint of a phase; higher is better for every metric returned, the first
key is the headline metric.

- `knowledge_score` (knowledge phase): MMLU-branch accuracy, mean over the
  knowledge leaves, plus one entry per leaf. Needs no teacher once the MCQ set
  is cached in runs/<name>/eval/ (it is built on the first call).
- `skills_score` (skills phase): MT-Bench-branch judge score (1-10), mean over
  the skill leaves, plus compositional / foundational means and one entry per
  leaf. The teacher is reused if one is serving (as in `lab-ray run`), else
  deployed once per process and kept for the later calls.

- `phase_score`: one metric for both phases, for a trainer that optimises a
  single `train.selection.metric`: "phase_score" is the MMLU-branch accuracy
  for the knowledge phase and the MT-Bench-branch score / 10 for the skills
  phase (both 0..1, higher is better); the detail metrics come along.
  Config: train.selection.scorers=[lab_ray.eval.selection:phase_score,
  lab_ray.train.selection:heldout_loss], metric=phase_score, mode=max.

Eval sets are cached per process and run, so each call costs one student load
plus scoring: a few seconds for knowledge, well under a minute for skills with
the 135M student on CPU. The trainer scores candidates in parallel Ray tasks:
building the sets (the first call of a run, if `lab-ray run` has not built
them already) is serialised by a lock file in runs/<name>/eval/, so the MCQs
are generated once and the others read the cache.
"""

from __future__ import annotations

from lab_ray.eval.runner import evaluate_model
from lab_ray.eval.sets import EvalSets, build_eval_sets
from lab_ray.eval.teacher import shared_teacher

_SETS: dict[str, EvalSets] = {}


def _sets(cfg) -> EvalSets:
    import fcntl

    from lab_ray.storage import run_dir
    from lab_ray.eval.sets import lock_file

    key = f"{run_dir(cfg)}|{cfg.taxonomy.path}|{list(cfg.eval.leaves)}"
    if key not in _SETS:
        with open(lock_file(cfg, ".build.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                _SETS[key] = build_eval_sets(cfg, shared_teacher(cfg))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return _SETS[key]


def _metrics(result: dict, headline: str, extra: tuple[str, ...], metric: str) -> dict[str, float]:
    out: dict[str, float] = {}
    value = result["summary"].get(headline)
    out[headline] = float(value) if value is not None else float("nan")
    for key in extra:
        if result["summary"].get(key) is not None:
            out[key] = float(result["summary"][key])
    for leaf, row in result["leaves"].items():
        if row["metric"] == metric and row["score"] is not None:
            out[f"{headline}/{leaf}"] = float(row["score"])
    return out


def knowledge_score(checkpoint_dir: str, phase: str, cfg) -> dict[str, float]:
    """{"mmlu_branch": mean accuracy over knowledge leaves, "mmlu_branch/<leaf>": accuracy, ...}."""
    sets = _sets(cfg)
    result = evaluate_model(str(checkpoint_dir), cfg, sets, None, parts=("knowledge",))
    return _metrics(result, "mmlu_branch", (), "accuracy")


def skills_score(checkpoint_dir: str, phase: str, cfg) -> dict[str, float]:
    """{"mt_bench_branch": mean 1-10 judge score over skill leaves, "mt_bench_branch/compositional",
    "mt_bench_branch/foundational", "mt_bench_branch/<leaf>": score, ...}."""
    sets = _sets(cfg)
    result = evaluate_model(str(checkpoint_dir), cfg, sets, shared_teacher(cfg), parts=("skills",))
    return _metrics(result, "mt_bench_branch", ("mt_bench_branch/compositional", "mt_bench_branch/foundational"),
                    "judge_1_10")


def phase_score(checkpoint_dir: str, phase: str, cfg) -> dict[str, float]:
    """{"phase_score": knowledge accuracy (phase "knowledge") or skills score / 10 (phase "skills"), ...details}."""
    if phase == "skills":
        out = skills_score(checkpoint_dir, phase, cfg)
        head = out["mt_bench_branch"] / 10.0
    else:
        out = knowledge_score(checkpoint_dir, phase, cfg)
        head = out["mmlu_branch"]
    return {"phase_score": head, **out}
