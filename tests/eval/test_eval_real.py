"""Evaluation end to end with the real CPU teacher and the real 135M student on the sample taxonomy."""

from __future__ import annotations

import json
import shutil

import pytest

from lab_ray.eval.runner import judge, run_eval
from lab_ray.eval.sets import build_eval_sets, eval_dir
from lab_ray.eval.teacher import LazyTeacher
from lab_ray.teacher.endpoint import serving_url

KNOWLEDGE_LEAF = "knowledge/geography/islands/varrow_island"
SKILL_LEAVES = {"compositional_skills/extraction/facts_to_list", "compositional_skills/writing/poetry/haiku",
                "foundational_skills/reasoning/arithmetic_word_problems"}


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A checkpoint-like directory: the base weights saved without tokenizer files (tokenizer borrowed)."""
    from lab_ray.embedded_model import resolve_model

    d = tmp_path_factory.mktemp("ckpt") / "checkpoint_000001"
    d.mkdir()
    src = resolve_model("SmolLM2-135M-Instruct")
    for name in ("config.json", "generation_config.json"):
        shutil.copy(f"{src}/{name}", d / name)
    for f in __import__("pathlib").Path(src).glob("*.safetensors"):
        shutil.copy(f, d / f.name)
    return str(d)


def test_knowledge_mcqs_built_once_and_cached(eval_cfg, teacher):
    assert serving_url(eval_cfg) == teacher[0]  # the deployed teacher is found, not redeployed
    lazy = LazyTeacher(eval_cfg)
    sets = build_eval_sets(eval_cfg, lazy)
    assert not lazy.deployed
    assert set(sets.knowledge) == {KNOWLEDGE_LEAF} and set(sets.skills) == SKILL_LEAVES
    mcqs = sets.knowledge[KNOWLEDGE_LEAF]
    gen = sets.generation[KNOWLEDGE_LEAF]
    assert gen["requests"] >= 2 and gen["prompt_tokens"] > 0
    assert len(mcqs) == 6  # min = max = 6: teacher MCQs, topped up by the cloze fallback
    assert gen["valid"] == sum(q.source == "teacher" for q in mcqs)
    for q in mcqs:
        assert len(q.options) == 4 and len({o.lower() for o in q.options}) == 4
        assert 0 <= q.answer < 4
    cache = eval_dir(eval_cfg) / "knowledge_mcq.jsonl"
    assert len(cache.read_text().splitlines()) == len(mcqs)
    lazy.close()
    # second build: from the cache, no teacher needed at all
    again = build_eval_sets(eval_cfg, teacher=None)
    assert [q.id for q in again.knowledge[KNOWLEDGE_LEAF]] == [q.id for q in mcqs]
    # skills set: held-out seed questions, grounded ones carry their context
    facts = again.skills["compositional_skills/extraction/facts_to_list"]
    assert len(facts) == 1 and "\n\n" in facts[0]["question"] and facts[0]["reference"].startswith("-")


def test_judge_scores_within_1_to_10(eval_cfg, teacher):
    from lab_ray.prompts import load_prompt

    prompt = load_prompt("eval_judge")
    items = [{"question": "Write a haiku about the rain.",
              "reference": "Soft rain on the roof\nthe garden drinks quietly\npuddles hold the sky"}] * 2
    with LazyTeacher(eval_cfg) as lazy:
        out = judge(lazy, prompt, [dict(i) for i in items],
                    ["Rain taps on the glass\nclouds drift over the dark hills\nthe street shines with light",
                     "banana banana banana"], "judge-test")
    for v in out:
        assert v["error"] is None and 1.0 <= v["score"] <= 10.0
        assert v["verdict"] in prompt.choices
    assert out[0]["score"] != out[1]["score"]  # a continuous expected score, not a constant


def test_run_eval_base_vs_trained_and_cli(eval_cfg, teacher, trained_dir, cli, eval_overrides):
    result = run_eval(eval_cfg, trained_dir, base=True)
    path = eval_dir(eval_cfg) / "results.json"
    assert result["path"] == str(path) and json.loads(path.read_text())["model"] == trained_dir
    comp = result["comparison"]
    assert set(comp) == SKILL_LEAVES | {KNOWLEDGE_LEAF}
    k = comp[KNOWLEDGE_LEAF]
    assert k["metric"] == "accuracy" and 0.0 <= k["trained"] <= 1.0 and k["n"] == 6
    for leaf in SKILL_LEAVES:
        assert comp[leaf]["metric"] == "judge_1_10" and 1.0 <= comp[leaf]["trained"] <= 10.0
    # the "trained" weights are the base weights: greedy answers and likelihoods are identical
    for row in comp.values():
        assert row["delta"] == pytest.approx(0.0, abs=1e-9)
    assert len(list(eval_dir(eval_cfg).glob("cache/*.json"))) == 2  # trained and base, cached per model files
    s = result["summary"]["trained"]
    assert s["mmlu_branch"] == k["trained"] and 1.0 <= s["mt_bench_branch"] <= 10.0

    # the CLI: same run and model files (cached sets and results), rich table per leaf with base vs model
    overrides = [f"run.root={eval_cfg.run.root}", f"run.name={eval_cfg.run.name}",
                 f"teacher.port={eval_cfg.teacher.port}", *eval_overrides]
    code, out, err = cli("eval", trained_dir, "--base", *overrides)
    assert code == 0, err
    for leaf in SKILL_LEAVES | {KNOWLEDGE_LEAF}:
        assert leaf.split("/")[-1] in out
    assert "base" in out and "delta" in out and "MMLU-branch" in out
    assert len(list(eval_dir(eval_cfg).glob("cache/*.json"))) == 2  # nothing re-evaluated


def test_selection_scorers(eval_cfg, teacher, trained_dir):
    from lab_ray.eval.selection import knowledge_score, phase_score, skills_score

    k = knowledge_score(trained_dir, "knowledge", eval_cfg)
    assert next(iter(k)) == "mmlu_branch" and 0.0 <= k["mmlu_branch"] <= 1.0
    assert k[f"mmlu_branch/{KNOWLEDGE_LEAF}"] == k["mmlu_branch"]
    s = skills_score(trained_dir, "skills", eval_cfg)
    assert next(iter(s)) == "mt_bench_branch" and 1.0 <= s["mt_bench_branch"] <= 10.0
    assert {f"mt_bench_branch/{leaf}" for leaf in SKILL_LEAVES} <= set(s)
    assert all(isinstance(v, float) for v in {**k, **s}.values())
    p = phase_score(trained_dir, "knowledge", eval_cfg)
    assert p["phase_score"] == k["mmlu_branch"]


def test_cli_errors_are_one_clear_line(cli, tmp_path):
    code, _out, err = cli("eval", str(tmp_path / "nope"), f"run.root={tmp_path}")
    assert code != 0 and "Traceback" not in err and "nope" in err
    code, _out, err = cli("eval")
    assert code == 2 and "usage: lab-ray eval MODEL" in err
    code, _out, err = cli("eval", "a", "b")
    assert code == 2 and "usage: lab-ray eval MODEL" in err and "got 'a b'" in err
