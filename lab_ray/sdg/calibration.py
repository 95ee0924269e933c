"""Per-leaf calibration of the judges against references with known verdicts.

Before generation, every judge scores (a) known-good rows: the leaf's own
seed examples, and (b) known-bad rows built from the same leaf: an answer
paired with another seed's question, an instruction that asks for a
real-world action or harm (conf/prompts/calibration.yaml), a seed question
of another leaf, an off-topic question against the leaf's chunk. The mean
raw score of each set gives the judge's "bad" and "good" levels for that
leaf; stages read their verdicts on that scale (stages.JudgeStage).

With sdg.judge.rows_per_request = k > 1, each judge's references are also judged k per
request, and a leaf is judged that way only where they still separate (see
_choose_rows_per_request).

The result is computed once per run in the driver (a few dozen constrained
choices per leaf), saved to sdg/calibration.json and reused on resume, so
verdicts never change between an interrupted and an uninterrupted run.
"""

from __future__ import annotations

import random

import yaml

from lab_ray.prompts import prompts_dir
from lab_ray.sdg.judge_batch import CALIBRATION_KEY, chosen_rows
from lab_ray.sdg.stages import JUDGES, ROW_SCHEMA
from lab_ray.storage import atomic_write_json, read_json
from lab_ray.teacher.client import make_teacher

# Orders the references are judged in, k per request, before a leaf may be judged so.
JOINT_SHUFFLES = 3


def reference_texts(path: str | None) -> dict:
    """conf/prompts/calibration.yaml (or sdg.prompts_dir's): the known-bad texts references use."""
    file = prompts_dir(path) / "calibration.yaml"
    data = yaml.safe_load(file.read_text(encoding="utf-8")) if file.exists() else {}
    return data or {}


def _row(spec: dict, **fields) -> dict:
    """A reference row: the schema's defaults, the leaf's own values, then `fields`."""
    row = {c.name: c.default for c in ROW_SCHEMA.values()}
    row.update({k: spec[k] for k in ("leaf", "kind", "branch", "task_description", "domain", "persona")})
    return {**row, **fields}


def reference_rows(stage: str, spec: dict, others: list[str], refs: dict, k: int) -> tuple[list[dict], list[dict]]:
    """(known-good rows, known-bad rows) for one judge and one leaf."""
    seeds = spec["seeds"][:k]
    n = len(seeds)
    good = [_row(spec, context=s["context"], question=s["question"], answer=s["answer"]) for s in seeds]
    # A seed's question with the next seed's answer: fluent, on-topic, wrong.
    swapped = [_row(spec, context=s["context"], question=s["question"], answer=seeds[(i + 1) % n]["answer"])
               for i, s in enumerate(seeds)] if n > 1 else []
    if stage == "judge_instruction":
        bad_text = list(refs.get("bad_instructions", [])) + others[:3]
        bad = [_row(spec, context=seeds[i % n]["context"], question=q) for i, q in enumerate(bad_text)]
    elif stage == "judge_question":
        bad = [_row(spec, context=seeds[i % n]["context"], question=q)
               for i, q in enumerate(list(refs.get("off_topic_questions", [])) + others[:3])]
    else:  # judge_pair, judge_faithfulness, judge_relevance
        bad = swapped
    return good, bad


def calibrate(specs: list[dict], teacher_spec: dict, sdg: dict) -> dict:
    """{stage: {leaf: [bad level, good level]}} for every judge that applies to a leaf."""
    teacher = make_teacher(teacher_spec)
    refs = reference_texts(sdg.get("prompts_dir"))
    k = int(sdg["judge"]["max_references"])
    out: dict[str, dict[str, list[float]]] = {}
    for judge_cls in JUDGES:
        judge = judge_cls(None, sdg)  # builds requests and scores replies; the calls go through `teacher`
        calls, index = [], []
        for spec in specs:
            if spec["kind"] not in judge.kinds or not spec["seeds"]:
                continue
            others = [s["seeds"][0]["question"] for s in specs if s["leaf"] != spec["leaf"] and s["seeds"]]
            good, bad = reference_rows(judge.stage, spec, others, refs, k)
            for label, rows in (("good", good), ("bad", bad)):
                for row in rows:
                    calls.append(row)
                    index.append((spec["leaf"], label))
        if not calls:
            continue
        # references are judged exactly as rows will be: with reasons first, k rows per request
        if judge.rationale:
            asked = set(map(id, judge.with_reasons(calls, teacher, charge=False)))
            index = [key for key, row in zip(index, calls) if id(row) in asked]
            calls = [row for row in calls if id(row) in asked]
        levels = out.setdefault(judge.stage, {})
        levels.update(_levels(judge, calls, index, teacher, 1))
        if judge.rows_per_request > 1:
            _choose_rows_per_request(judge, calls, index, teacher, levels, out)
    close = getattr(teacher, "close", None)
    if close:
        close()
    return out


def _levels(judge, calls: list[dict], index: list[tuple[str, str]], teacher, k: int) -> dict[str, list[float]]:
    """{leaf: [mean raw score of its bad references, of its good ones]}, judged k per request."""
    sums: dict[tuple[str, str], list[float]] = {}
    for key, (_, raw) in zip(index, judge.verdicts(calls, teacher, k)):
        if raw is not None:
            sums.setdefault(key, []).append(raw)
    levels = {}
    for leaf in {leaf for leaf, _ in index}:
        good, bad = sums.get((leaf, "good")), sums.get((leaf, "bad"))
        if good and bad:
            levels[leaf] = [sum(bad) / len(bad), sum(good) / len(good)]
    return levels


def _choose_rows_per_request(judge, calls, index, teacher, levels: dict, out: dict) -> None:
    """sdg.judge.rows_per_request per leaf: the references judged k per request, in
    JOINT_SHUFFLES shuffled orders (a row's line in its group says nothing about its label); a
    leaf keeps k, and the mean levels measured so, only where every order still separates good
    from bad (judge_batch.chosen_rows). One lucky order is not enough: SmolLM2-135M's joint
    verdicts separated in one order of five and inverted in two (bench/RESULTS.md). The choice
    goes to calibration.json, so a resumed run keeps it."""
    k = judge.rows_per_request
    runs = []
    for seed in range(JOINT_SHUFFLES):
        order = list(range(len(calls)))
        random.Random(seed).shuffle(order)
        runs.append(_levels(judge, [calls[i] for i in order], [index[i] for i in order], teacher, k))
    chosen = {}
    for leaf in sorted({leaf for leaf, _ in index}):
        joint = [run.get(leaf) for run in runs]
        chosen[leaf] = min(chosen_rows(judge, levels.get(leaf), j, k) for j in joint)
        if chosen[leaf] > 1:
            levels[leaf] = [sum(j[0] for j in joint) / len(joint), sum(j[1] for j in joint) / len(joint)]
    out.setdefault(CALIBRATION_KEY, {})[judge.stage] = chosen


def load_or_calibrate(path, specs: list[dict], teacher_spec: dict, sdg: dict) -> dict:
    if not sdg["judge"]["calibrate"]:
        return {}
    if path.exists():
        return read_json(path)
    result = calibrate(specs, teacher_spec, sdg)
    atomic_write_json(path, result, sort_keys=True)
    return result
