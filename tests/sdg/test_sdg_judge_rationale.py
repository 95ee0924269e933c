"""Judges with a rationale (sdg.judge.rationale): reasons first, then the constrained verdict
after them; both requests are the judge's tokens; calibration judges references the same way.

The teacher here records the requests it gets (the point is what reaches the verdict request
and how the row is accounted), a scripted stand-in named for what it is; the path on the real
teacher runs in tests/sdg/test_sdg_real_teacher.py.
"""

from __future__ import annotations

import pandas as pd
import pytest

from lab_ray.errors import ConfigError
from lab_ray.sdg.calibration import calibrate
from lab_ray.sdg.stages import JudgePair, ROW_SCHEMA, check_rationale
from lab_ray.sdg.tasks import expand
from lab_ray.teacher.client import TeacherReply

SDG = {"temperature": 0.7, "seed": 1, "response_max_tokens": 8,
       "judge": {"pair_min_score": 2.0, "min_separation": 0.05, "max_references": 2,
                 "rationale": ["judge_pair"], "rationale_max_tokens": 12}}
REASONS = "The answer lists two real synonyms."


class RecordingTeacher:
    """Scripted replies, every request kept: reasons are REASONS (or a failure for rows whose
    question says FAIL), verdicts are "good" with a probability."""

    requests: list[tuple[str, dict]] = []

    def run_many(self, calls):
        out = []
        for kind, body in calls:
            RecordingTeacher.requests.append((kind, body))
            if kind == "chat":
                failed = "FAIL" in body["messages"][-1]["content"]
                out.append(TeacherReply(False, error="timeout", detail="scripted") if failed else
                           TeacherReply(True, [REASONS], prompt_tokens=50, completion_tokens=7))
            else:
                out.append(TeacherReply(True, ["good"], prompt_tokens=60, completion_tokens=1,
                                        choice_logprobs={"poor": -4.0, "fair": -2.0, "good": -0.1}))
        return out


@pytest.fixture
def teacher(monkeypatch):
    RecordingTeacher.requests = []
    monkeypatch.setattr("lab_ray.sdg.stages.make_teacher", lambda spec: RecordingTeacher())
    monkeypatch.setattr("lab_ray.sdg.calibration.make_teacher", lambda spec: RecordingTeacher())
    return RecordingTeacher


def _rows(questions: list[str]) -> pd.DataFrame:
    spec = {"leaf": "compositional_skills/x", "branch": "compositional_skills", "kind": "freeform",
            "task_description": "synonyms", "domain": "", "persona": "Be precise.",
            "examples": [{"question": "Synonyms of big?", "answer": "large, huge", "context": ""}], "chunks": []}
    rows = [{**{c.name: c.default for c in ROW_SCHEMA.values()}, **r, "question": q, "answer": "quick, fast"}
            for r, q in zip(expand(spec, 0, len(questions), 1), questions)]
    return pd.DataFrame(rows)


def test_the_verdict_comes_after_the_judges_own_reasons(teacher):
    out = JudgePair({"kind": "python"}, SDG)(_rows(["Synonyms of rapid?", "FAIL synonyms of slow?"]))
    ok, failed = out.iloc[0], out.iloc[1]
    asks = [b for k, b in teacher.requests if k == "chat"]
    verdicts = [b for k, b in teacher.requests if k == "choose"]
    assert len(asks) == 2 and len(verdicts) == 1  # no verdict for the row whose reasons failed
    assert asks[0]["temperature"] == 0.0 and asks[0]["max_tokens"] == 12
    assert asks[0]["messages"][-1]["content"].endswith("Do not give the answer yet.")
    # the verdict request: the judge's question, the reasons as the judge's turn, then the ask for the verdict
    tail = verdicts[0]["messages"][-3:]
    assert [m["role"] for m in tail] == ["user", "assistant", "user"]
    assert "Synonyms of rapid?" in tail[0]["content"] and tail[1]["content"] == REASONS
    assert tail[2]["content"] == "Now answer with one of: poor, fair, good."
    assert verdicts[0]["choices"] == ["poor", "fair", "good"]
    # the row: reasons kept, verdict scored from its probabilities, both requests charged to the judge
    assert ok["status"] == "ok" and ok["judge_pair_rationale"] == REASONS and ok["pair_score"] > 2.5
    assert (ok["judge_pair_prompt_tokens"], ok["judge_pair_completion_tokens"]) == (50 + 60, 7 + 1)
    assert ok["prompt_tokens"] == 110
    assert (failed["status"], failed["drop_stage"], failed["drop_reason"]) == ("dropped", "judge_pair",
                                                                               "teacher_error")
    assert failed["judge_pair_rationale"] == "" and failed["judge_pair_prompt_tokens"] == 0


def test_without_the_option_a_judge_asks_once(teacher):
    out = JudgePair({"kind": "python"}, {**SDG, "judge": {**SDG["judge"], "rationale": []}})(_rows(["Synonyms?"]))
    assert [k for k, _ in teacher.requests] == ["choose"]
    assert out.iloc[0]["judge_pair_rationale"] == "" and len(teacher.requests[0][1]["messages"]) == 2


def test_calibration_judges_references_with_reasons_too(teacher):
    spec = {"leaf": "compositional_skills/x", "kind": "freeform", "branch": "compositional_skills",
            "task_description": "synonyms", "domain": "", "persona": "",
            "seeds": [{"question": f"Synonyms of {w}?", "answer": a, "context": ""}
                      for w, a in (("big", "large"), ("small", "tiny"))]}
    levels = calibrate([spec], {"kind": "python"}, SDG)
    assert "compositional_skills/x" in levels["judge_pair"]
    pair = [b for k, b in teacher.requests if k == "choose" and b["choices"] == ["poor", "fair", "good"]]
    assert pair and all(b["messages"][-2] == {"role": "assistant", "content": REASONS} for b in pair)


def test_an_unknown_judge_is_a_config_error():
    with pytest.raises(ConfigError, match="'gen_response' is not a judge stage"):
        check_rationale({"judge": {"rationale": ["gen_response"]}})


def test_a_graded_judge_needs_separation_on_its_own_scale():
    """min_separation is a fraction of the score's span: a 1-3 grade whose references differ by
    0.08 (seen with vLLM's first-token scores on the 135M teacher) is noise, not a calibration;
    P(yes) levels 0.08 apart are not."""
    from lab_ray.sdg.stages import JudgeInstruction

    leaf = "compositional_skills/x"
    sdg = {**SDG, "judge": {**SDG["judge"], "rationale": []}}
    pair = JudgePair(None, sdg, {"judge_pair": {leaf: [2.20, 2.28]}})
    assert pair.score_range() == 2.0 and pair.calibrated(leaf, 2.24) is None  # raw threshold instead
    wide = JudgePair(None, sdg, {"judge_pair": {leaf: [1.6, 2.6]}})
    assert wide.calibrated(leaf, 2.1) == pytest.approx(2.0)  # halfway: grade 2 on the calibrated scale
    yes_no = JudgeInstruction(None, {**sdg, "judge": {**sdg["judge"], "instruction_min": 0.5}},
                              {"judge_instruction": {leaf: [0.40, 0.48]}})
    assert yes_no.calibrated(leaf, 0.44) == pytest.approx(0.5)
