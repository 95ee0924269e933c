"""Every SDG stage reads and writes exactly the columns it declares.

Reads are the free variables of the stage's prompt templates plus what its
`request` / `apply` code looks up in the row; writes are what `apply` changes.
Both are held to `Stage.inputs` / `Stage.outputs`, and every input must be a
task column or an output of an earlier stage of the flow for that row kind.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lab_ray.prompts import load_prompt
from lab_ray.sdg.columns import STATE_COLUMNS, TASK_COLUMNS
from lab_ray.sdg.stages import PIPELINE, ROW_KEYS, ROW_SCHEMA, SCORE_COLUMNS, JudgeStage, stage_order, stages_for
from lab_ray.sdg.tasks import expand
from lab_ray.teacher.client import TeacherReply

SDG = {"temperature": 0.7, "seed": 1, "context_max_tokens": 8, "instruction_max_tokens": 8, "response_max_tokens": 8,
       "knowledge": {"max_tokens": 8},
       "judge": {"instruction_min": 0.5, "pair_min_score": 2.0, "faithfulness_min": 0.5, "relevance_min": 0.5,
                 "question_min": 0.5, "min_separation": 0.05}}
STATE = {c.name for c in STATE_COLUMNS}


class ReadTracking(dict):
    """A row that records which keys the code looks up."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)


def _row(kind: str) -> dict:
    spec = {"leaf": "compositional_skills/x", "branch": "compositional_skills", "kind": kind,
            "task_description": "list facts", "domain": "geo", "persona": "Be precise.",
            "examples": [{"question": "Name a fact.", "answer": "Water is wet.", "context": "Some passage."}] * 2,
            "chunks": ["A chunk of a document."] if kind == "knowledge" else []}
    row = next(expand(spec, 0, 1, 2))
    return {**{c.name: c.default for c in ROW_SCHEMA.values()}, **row,
            "question": "Name another fact?", "answer": "Fire is hot."}


def _reply(stage) -> TeacherReply:
    if issubclass(stage, JudgeStage):
        prompt = stage(None, SDG).prompt
        best = prompt.positive or max(prompt.scores, key=prompt.scores.get)  # a verdict that keeps the row
        return TeacherReply(True, [best], choice_logprobs={c: 0.0 if c == best else -5.0 for c in prompt.choices})
    if stage.prompt_name == "knowledge_qa":
        return TeacherReply(True, ["[Question] What is new? [Answer] This is new. [End]"])
    return TeacherReply(True, ["A brand new line of text."])


def test_task_rows_are_exactly_the_task_columns():
    assert set(_row("freeform")) == set(ROW_SCHEMA)
    spec = {"leaf": "l", "branch": "b", "kind": "freeform", "task_description": "", "domain": "", "persona": "",
            "examples": [{"question": "q", "answer": "a", "context": ""}], "chunks": []}
    assert list(next(expand(spec, 0, 1, 1))) == [c.name for c in TASK_COLUMNS]


@pytest.mark.parametrize("stage", PIPELINE, ids=lambda s: s.stage)
def test_reads_match_the_declared_inputs(stage):
    prompt = load_prompt(stage.prompt_name)
    template_reads = prompt.variables()
    assert template_reads <= set(stage.inputs), f"{stage.stage}: templates read {template_reads - set(stage.inputs)}"
    row = ReadTracking(_row(stage.kinds[0]))
    s = stage(None, SDG, {stage.stage: {}})
    s.request(row)
    s.apply(row, _reply(stage))
    code_reads = row.read - set(ROW_KEYS)
    # an undeclared read fails; so does a declared input nothing reads (a stale declaration)
    assert code_reads | template_reads <= set(stage.inputs), code_reads - set(stage.inputs)
    assert set(stage.inputs) <= code_reads | template_reads, set(stage.inputs) - code_reads - template_reads


@pytest.mark.parametrize("stage", PIPELINE, ids=lambda s: s.stage)
def test_writes_match_the_declared_outputs(stage):
    before = _row(stage.kinds[0])
    row = dict(before)
    s = stage(None, SDG, {stage.stage: {}})
    s.apply(row, _reply(stage))
    assert row["status"] == "ok", row["drop_detail"]
    written = {k for k in row if row[k] != before[k] and not (isinstance(row[k], float) and math.isnan(row[k])
                                                              and math.isnan(before[k]))}
    assert written == {c.name for c in stage.outputs}, f"{stage.stage} wrote {written}"


@pytest.mark.parametrize("kind", ["grounded", "freeform", "knowledge"])
def test_every_input_is_a_task_column_or_an_earlier_output(kind):
    # Every optional stage on (knowledge augmentation); when one is off, what it would write
    # is its output columns' defaults (the row schema holds every stage's outputs).
    on = {s.stage: 2 for s in PIPELINE if getattr(s, "optional", False)}
    available = {c.name for c in TASK_COLUMNS}
    for stage in stages_for({kind}, on):
        missing = set(stage.inputs) - available
        assert not missing, f"{stage.stage} reads {missing}, which nothing before it writes"
        available |= {c.name for c in stage.outputs}
    assert stage_order(kind, on)[:-1] == [s.stage for s in stages_for({kind}, on)]
    assert stage_order(kind)[:-1] == [s.stage for s in stages_for({kind})]
    assert all(c.name in ROW_SCHEMA for s in PIPELINE for c in s.outputs)


def test_schema_and_score_columns_are_derived_from_declarations():
    judges = [s for s in PIPELINE if issubclass(s, JudgeStage)]
    assert SCORE_COLUMNS == tuple(s.outputs[0].name for s in judges)
    assert all(ROW_SCHEMA[c].dtype == "float64" for c in SCORE_COLUMNS)
    assert set(ROW_SCHEMA) == ({c.name for c in TASK_COLUMNS} | STATE
                               | {c.name for s in PIPELINE for c in s.outputs}
                               | {c.name for s in PIPELINE for c in s.state_columns()})


def test_a_stage_returns_the_whole_schema_with_fixed_types():
    """A batch of rows no stage applies to still leaves with every column, typed (one Parquet schema)."""
    spec = {"kind": "python", "factory": "lab_ray.testing.fake_teachers:InstantTeacher", "args": {}}
    task = {k: v for k, v in _row("knowledge").items() if k in {c.name for c in TASK_COLUMNS}}
    stage = [s for s in PIPELINE if s.stage == "judge_pair"][0]
    out = stage(spec, SDG)(pd.DataFrame([task]))
    assert set(out.columns) == set(ROW_SCHEMA)
    for c in ROW_SCHEMA.values():
        if c.dtype == "str":
            assert pd.api.types.is_string_dtype(out[c.name]) or out[c.name].dtype == object, c.name
        else:
            assert str(out[c.name].dtype) == c.dtype, c.name


@pytest.mark.parametrize("shown, turns", [(None, 2), (1, 1), (0, 0)])
def test_the_response_shows_as_many_example_turns_as_sdg_response_examples_says(shown, turns):
    from lab_ray.sdg.stages import GenerateResponse

    stage = GenerateResponse(None, {**SDG, "response_examples": shown})
    row = _row("freeform")
    _, body = stage.request(row)
    msgs = body["messages"]
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * turns + ["user"]
    assert msgs[-1]["content"] == "Name another fact?"
    assert all(m["content"] == "Water is wet." for m in msgs[2:-1:2])
    # the memo keys on how many were shown: a row rendered after another count gets its own turns
    assert len(stage.request(row)[1]["messages"]) == len(msgs)
