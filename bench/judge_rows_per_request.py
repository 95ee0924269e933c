"""Judging k rows per request against one row per request, on a leaf's calibration references,
with the real embedded CPU teacher (in process, no Ray): billed prompt tokens per judged row,
and how well each form tells the leaf's known-good references from its known-bad ones
(good-bad separation of the raw score, and AUC) - one by one, and k per request in several
shuffled orders (a row's line in its group must not decide its verdict).

    .venv/bin/python bench/judge_rows_per_request.py [leaf] [k] [orders]

This is what calibration checks before a leaf is judged k per request (sdg/calibration.py).
"""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

from lab_ray.config import load_config
from lab_ray.embedded_model import embedded_model_dir
from lab_ray.sdg.calibration import reference_rows, reference_texts
from lab_ray.sdg.plan import build_plan
from lab_ray.sdg.stages import JUDGES
from lab_ray.teacher.client import TeacherReply
from lab_ray.teacher.engine import Engine

FIXTURES = Path(__file__).resolve().parents[2] / "shared/fixtures"
TAXONOMY = FIXTURES / "instructlab-taxonomy"
# the fixture knowledge leaves' documents, offline
REPO_MAP = {"https://github.com/juliadenham/Summit_knowledge": str(FIXTURES / "knowledge-docs")}


class InProcessTeacher:
    """The embedded engine's exact choice scores, billed as the served teacher bills them."""

    def __init__(self):
        self.engine = Engine(str(embedded_model_dir()), threads=2)

    def run_many(self, calls):
        out = []
        for _, body in calls:
            prompt = self.engine.chat_prompt(body["messages"])
            scores = self.engine.choice_logprobs(prompt, body["choices"])
            best = max(scores, key=scores.get)
            out.append(TeacherReply(True, [best], prompt_tokens=len(prompt), choice_logprobs=scores,
                                    completion_tokens=len(self.engine.tokenizer.encode(best, add_special_tokens=False))))
        return out


def auc(good: list[float], bad: list[float]) -> float:
    return sum((g > b) + 0.5 * (g == b) for g in good for b in bad) / (len(good) * len(bad))


def figures(verdicts, labels) -> tuple[float, float, float]:
    """(separation, AUC, billed tokens per row)."""
    good = [raw for (_, raw), lab in zip(verdicts, labels) if lab == "good" and raw is not None]
    bad = [raw for (_, raw), lab in zip(verdicts, labels) if lab == "bad" and raw is not None]
    billed = sum(r.prompt_tokens + r.completion_tokens for r, _ in verdicts) / len(verdicts)
    return statistics.mean(good) - statistics.mean(bad), auc(good, bad), billed


def main() -> None:
    leaf = sys.argv[1] if len(sys.argv) > 1 else "compositional_skills/linguistics/synonyms"
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    orders = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    cfg = load_config([f"taxonomy.path={TAXONOMY}", f"sdg.leaves=[{leaf}]", "sdg.judge.max_references=6"])
    cfg.taxonomy.documents.repo_map.update(REPO_MAP)
    spec = build_plan(cfg)[0].to_dict()
    teacher = InProcessTeacher()
    sdg = {"temperature": 0.0, "seed": 0, "judge": {"rationale": [], "rows_per_request": k}}
    for judge_cls in JUDGES:
        judge = judge_cls(None, sdg)
        if spec["kind"] not in judge.kinds:
            continue
        good, bad = reference_rows(judge.stage, spec, [], reference_texts(None), 6)
        rows, labels = good + bad, ["good"] * len(good) + ["bad"] * len(bad)
        sep, a, billed = figures(judge.verdicts(rows, teacher, 1), labels)
        print(f"{judge.stage}: {len(good)} good, {len(bad)} bad references; one per request: "
              f"separation {sep:+.3f}, AUC {a:.2f}, {billed:.0f} billed tokens per row")
        kk = judge.rows_per_request
        for seed in range(orders):
            order = list(range(len(rows)))
            random.Random(seed).shuffle(order)
            out = judge.verdicts([rows[i] for i in order], teacher, kk)
            back = [None] * len(rows)
            for i, v in zip(order, out):
                back[i] = v
            sep, a, billed = figures(back, labels)
            print(f"  {kk} per request, order {seed}: separation {sep:+.3f}, AUC {a:.2f}, "
                  f"{billed:.0f} billed tokens per row")


if __name__ == "__main__":
    main()
