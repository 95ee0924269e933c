"""Prompts are data: YAML files rendered with a strict template engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sdg_helpers import SAMPLE_TAXONOMY, instant_spec, sdg_config

from lab_ray.resources import conf_dir
from lab_ray.errors import ConfigError
from lab_ray.prompts import load_prompt
from lab_ray.sdg.personas import load_personas, persona_for

STAGE_PROMPTS = ["skill_context", "skill_instruction", "instruction_judge", "skill_response", "pair_judge",
                 "knowledge_qa", "knowledge_faithfulness", "knowledge_relevance", "knowledge_question"]
ROW = {"task_description": "Write a haiku about the sea.", "domain": "poetry", "context": "", "question": "Q?",
       "answer": "A.", "persona": "You are a poet.", "leaf": "compositional_skills/writing/poetry/haiku"}
EXAMPLES = [{"question": f"seed question {i}", "answer": f"seed answer {i}", "context": f"seed context {i}"}
            for i in range(3)]


@pytest.mark.parametrize("name", STAGE_PROMPTS)
def test_every_shipped_prompt_loads_and_renders_with_a_full_row(name):
    prompt = load_prompt(name)
    messages = prompt.render(ROW, EXAMPLES if prompt.turn_assistant else [])
    assert messages[-1]["role"] == "user" and messages[-1]["content"]
    assert all(m["content"].strip() for m in messages[1:])
    if prompt.choices:  # judges answer by constrained choice with a known positive or a score per choice
        assert prompt.positive in prompt.choices or set(prompt.scores) == set(prompt.choices)


def test_examples_become_chat_turns_in_order():
    prompt = load_prompt("skill_instruction")
    messages = prompt.render(ROW, EXAMPLES)
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert [m["content"] for m in messages[2:-1:2]] == [e["question"] for e in EXAMPLES]
    assert ROW["task_description"] in messages[-1]["content"]


def test_knowledge_prompt_puts_the_chunk_and_tagged_examples():
    prompt = load_prompt("knowledge_qa")
    row = {**ROW, "context": "The chunk text about Varrow Island."}
    messages = prompt.render(row, EXAMPLES[:1])
    assert "[Question] seed question 0" in messages[2]["content"] and "[End]" in messages[2]["content"]
    assert "seed context 0" in messages[1]["content"]  # the example's own context, not the row's
    assert "The chunk text about Varrow Island." in messages[-1]["content"]
    assert tuple(prompt.output_tags) == ("Question", "Answer")


def test_missing_variable_is_a_config_error_not_an_empty_string():
    prompt = load_prompt("skill_instruction")
    row = {k: v for k, v in ROW.items() if k != "task_description"}
    with pytest.raises(ConfigError, match="task_description"):
        prompt.render(row, [])
    # a missing field of an in-context example too
    with pytest.raises(ConfigError, match="skill_instruction"):
        prompt.render(ROW, [{"answer": "no question here", "context": ""}])


def _user_prompts(tmp_path: Path) -> Path:
    d = tmp_path / "my-prompts"
    shutil.copytree(conf_dir() / "prompts", d)
    return d


def test_user_prompts_dir_is_used(tmp_path):
    d = _user_prompts(tmp_path)
    (d / "skill_instruction.yaml").write_text(
        "system: MY-OWN-SYSTEM {{ task_description }}\n"
        "turn_user: 'MY-OWN-USER {{ task_description }}'\n"
        "turn_assistant: '{{ example.question }}'\n")
    prompt = load_prompt("skill_instruction", str(d))
    messages = prompt.render(ROW, EXAMPLES[:1])
    assert messages[0]["content"] == f"MY-OWN-SYSTEM {ROW['task_description']}"
    assert messages[-1]["content"] == f"MY-OWN-USER {ROW['task_description']}"
    assert load_prompt("skill_instruction").system != prompt.system  # the shipped one is untouched

    # ... and a stage built from config sends the user's prompt to the teacher
    from omegaconf import OmegaConf

    from lab_ray.sdg.stages import GenerateInstruction

    cfg = sdg_config(tmp_path, "p", f"sdg.prompts_dir={d}")
    stage = GenerateInstruction(instant_spec(), OmegaConf.to_container(cfg.sdg, resolve=True))
    kind, kw = stage.request({**ROW, "id": "0123456789abcdef0123", "examples": "[]"})
    assert kind == "chat" and kw["messages"][-1]["content"].startswith("MY-OWN-USER")


@pytest.mark.parametrize("content, match", [
    ("system: hi\nturn_user: '{{ oops '\n", "template error"),
    ("system: hi\n", "turn_user"),
    ("- a list\n", "mapping"),
    ("system: hi\nturn_user: x\nturn_users: typo\n", "unknown key"),
    ("system: [unclosed\n", "not valid YAML"),
])
def test_broken_user_prompt_files_are_config_errors(tmp_path, content, match):
    d = _user_prompts(tmp_path)
    (d / "pair_judge.yaml").write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_prompt("pair_judge", str(d))


def test_pipeline_plan_fails_early_on_a_missing_user_prompt(tmp_path):
    from lab_ray.sdg.plan import build_plan

    d = _user_prompts(tmp_path)
    (d / "judge_question.yaml").unlink(missing_ok=True)
    (d / "knowledge_question.yaml").unlink()
    cfg = sdg_config(tmp_path, "p", f"sdg.prompts_dir={d}", "sdg.samples_per_leaf=1",
                     f"sdg.leaves=[{'compositional_skills/writing/poetry/haiku'}]")
    with pytest.raises(ConfigError, match="knowledge_question"):
        build_plan(cfg)


def test_plan_refuses_judge_choices_a_vllm_teacher_cannot_tell_apart(tmp_path):
    """vLLM scores a choice by its first token: choices sharing it would all score alike."""
    from lab_ray.sdg.plan import build_plan

    d = _user_prompts(tmp_path)
    text = (d / "pair_judge.yaml").read_text().split("\nchoices:")[0]
    leaf = "sdg.leaves=[compositional_skills/writing/poetry/haiku]"
    (d / "pair_judge.yaml").write_text(text + '\nchoices: ["good", "great", "bad"]\nscores: {good: 2, great: 3, bad: 1}\n')
    build_plan(sdg_config(tmp_path, "p", f"sdg.prompts_dir={d}", "teacher=vllm-cpu", leaf))  # one token apart
    (d / "pair_judge.yaml").write_text(text + '\nchoices: ["[[poor]]", "[[good]]"]\nscores: {"[[poor]]": 1, "[[good]]": 3}\n')
    build_plan(sdg_config(tmp_path, "p", f"sdg.prompts_dir={d}", leaf))  # the CPU teacher scores whole choices
    with pytest.raises(ConfigError, match=r"pair_judge\.yaml: choices '\[\[poor\]\]' and '\[\[good\]\]' share"):
        build_plan(sdg_config(tmp_path, "p", f"sdg.prompts_dir={d}", "teacher=vllm-cpu", leaf))


def test_personas_need_a_default_and_map_by_longest_path_prefix(tmp_path):
    personas = load_personas()
    assert {"default", "creative", "precise"} <= set(personas)
    mapping = {"compositional_skills/writing": "creative", "compositional_skills/writing/poetry/limerick": "precise",
               "knowledge": "precise"}
    assert persona_for("compositional_skills/writing/poetry/haiku", mapping) == "creative"
    assert persona_for("compositional_skills/writing/poetry/limerick", mapping) == "precise"
    assert persona_for("compositional_skills/writing", mapping) == "creative"
    assert persona_for("compositional_skills/writingx/foo", mapping) == "default"  # a prefix is a path prefix
    assert persona_for("foundational_skills/reasoning", mapping) == "default"
    d = _user_prompts(tmp_path)
    (d / "personas.yaml").write_text("creative: be creative\n")
    with pytest.raises(ConfigError, match="default"):
        load_personas(str(d))


def test_sample_taxonomy_leaves_get_fitting_personas(tmp_path):
    from lab_ray.sdg.plan import build_plan

    cfg = sdg_config(tmp_path, "p", "sdg.samples_per_leaf=1")
    personas = load_personas()
    by_leaf = {s.leaf: s.persona for s in build_plan(cfg)}
    assert by_leaf["compositional_skills/writing/poetry/haiku"] == personas["creative"]
    assert by_leaf["compositional_skills/extraction/facts_to_list"] == personas["precise"]
    assert by_leaf["knowledge/geography/islands/varrow_island"] == personas["precise"]
    assert SAMPLE_TAXONOMY.is_dir()
