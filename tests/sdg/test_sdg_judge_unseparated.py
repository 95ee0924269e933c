"""sdg.judge.unseparated: a judge that cannot tell a leaf's references apart either judges the
leaf's rows on its raw score ("raw", the default) or does not judge them ("skip": no request,
no tokens, the score left empty). The teacher is the scripted stand-in of test_sdg_judge_batch."""

from __future__ import annotations

import math

import pytest
from test_sdg_judge_batch import SDG, JointScoringTeacher, _rows

from lab_ray.errors import ConfigError
from lab_ray.sdg.stages import JudgeInstruction, check_unseparated

LEAF = "compositional_skills/x"


@pytest.fixture
def teacher(monkeypatch):
    JointScoringTeacher.requests, JointScoringTeacher.replies = [], []
    monkeypatch.setattr("lab_ray.sdg.stages.make_teacher", lambda spec: JointScoringTeacher())
    return JointScoringTeacher


@pytest.mark.parametrize("levels, mode, asked", [
    ([0.40, 0.42], "skip", 0),   # 0.02 apart: less than min_separation (0.05) -> not judged
    ([0.40, 0.42], "raw", 2),    # the same leaf judged on the raw score
    ([0.10, 0.90], "skip", 2),   # references that separate are always judged
])
def test_a_judge_that_cannot_tell_the_references_apart_is_skipped_only_when_asked(teacher, levels, mode, asked):
    sdg = {**SDG, "judge": {**SDG["judge"], "rows_per_request": 1, "unseparated": mode}}
    out = JudgeInstruction({"kind": "python"}, sdg, {"judge_instruction": {LEAF: levels}})(_rows(["good a", "bad b"]))
    assert len(teacher.requests) == asked
    if asked:
        assert out["instruction_score"].notna().all() and out["judge_instruction_prompt_tokens"].sum() > 0
    else:  # passed unjudged: kept, no score, no tokens
        assert (out["status"] == "ok").all() and out["instruction_score"].map(math.isnan).all()
        assert out["judge_instruction_prompt_tokens"].sum() == 0


def test_unseparated_takes_raw_or_skip():
    with pytest.raises(ConfigError, match="sdg.judge.unseparated='drop'"):
        check_unseparated({"judge": {"unseparated": "drop"}})
    assert check_unseparated({"judge": {}}) == "raw"
