"""Several rows judged in one request (sdg.judge.rows_per_request): the joint verdict, each
row's probabilities from it, grouping by what the rows share, and the token accounting.

The teacher in the stage tests is a scripted stand-in, named for what it is: the point is what
the requests carry and how replies are split back to rows. The real CPU teacher's joint scores
are checked in tests/teacher/test_choice_scoring.py, vLLM's per-token path in
tests/teacher/test_vllm_serve.py.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from lab_ray.errors import ConfigError
from lab_ray.sdg import judge_batch
from lab_ray.sdg.stages import JudgeInstruction, JudgePair, ROW_SCHEMA
from lab_ray.sdg.tasks import expand
from lab_ray.teacher.client import TeacherReply, choice_logprobs_from_top

SDG = {"temperature": 0.7, "seed": 1,
       "judge": {"instruction_min": 0.5, "pair_min_score": 2.0, "min_separation": 0.05, "max_references": 2,
                 "rationale": [], "rows_per_request": 3}}


def test_marginals_are_the_sums_of_the_joint_probabilities():
    choices = ["yes", "no"]
    joint = judge_batch.joint_choices(choices, 2)
    assert joint == ["1: yes\n2: yes", "1: yes\n2: no", "1: no\n2: yes", "1: no\n2: no"]
    p = {"1: yes\n2: yes": 0.5, "1: yes\n2: no": 0.2, "1: no\n2: yes": 0.2, "1: no\n2: no": 0.1}
    rows = judge_batch.marginals({k: math.log(v) - 3.0 for k, v in p.items()}, choices, 2)  # unnormalised
    assert rows[0]["yes"] == pytest.approx(0.7) and rows[1]["yes"] == pytest.approx(0.7)
    assert rows[0]["no"] == pytest.approx(0.3)
    assert judge_batch.marginals({k: 0.0 for k in joint[:3]}, choices, 2) is None  # one joint verdict unscored


def _tok(token: str, top: dict[str, float] | None = None) -> dict:
    return {"token": token, "logprob": -0.1, "top_logprobs": [{"token": t, "logprob": v} for t, v in (top or {}).items()]}


def test_per_token_probabilities_are_read_at_each_rows_verdict():
    """The OpenAI logprobs form vLLM returns for "1: yes\\n2: no": each verdict token's top list."""
    content = [_tok("1"), _tok(":"), _tok(" yes", {" yes": math.log(0.8), " no": math.log(0.2)}), _tok("\n"),
               _tok("2"), _tok(":"), _tok(" no", {" no": math.log(0.6), " yes": math.log(0.3), " maybe": -5})]
    rows = judge_batch.from_token_logprobs({"content": content}, ["yes", "no"], 2)
    assert rows[0]["yes"] == pytest.approx(0.8) and rows[1]["yes"] == pytest.approx(1 / 3)
    assert judge_batch.from_token_logprobs({"content": content[:4]}, ["yes", "no"], 2) is None  # row 2 missing
    # a first-token top list cannot score joint verdicts: they all start with "1"
    joint = judge_batch.joint_choices(["yes", "no"], 2)
    assert choice_logprobs_from_top({"content": [_tok("1", {"1": -0.01, "2": -5})]}, joint) is None
    assert choice_logprobs_from_top({"content": [_tok("yes", {"yes": -0.1, "no": -2})]}, ["yes", "no"]) is not None


def test_verbatim_verdicts_and_replies_that_are_not_one_line_per_row():
    assert judge_batch.verbatim("1: good\n2: poor", ["poor", "fair", "good"], 2) == [
        {"poor": 0.0, "fair": 0.0, "good": 1.0}, {"poor": 1.0, "fair": 0.0, "good": 0.0}]
    for bad in ("1: good", "1: good\n3: poor", "1: great\n2: poor", ""):
        assert judge_batch.verbatim(bad, ["poor", "fair", "good"], 2) is None, bad


def test_rows_per_request_is_checked_and_capped_by_the_joint_verdicts():
    assert judge_batch.rows_for(2, 8) == 8 and judge_batch.rows_for(3, 8) == 5 and judge_batch.rows_for(3, 1) == 1
    for bad in (0, 9, 2.5, True, "4"):
        with pytest.raises(ConfigError, match="rows_per_request"):
            judge_batch.check_rows_per_request({"judge": {"rows_per_request": bad}})
    assert JudgePair(None, {**SDG, "judge": {**SDG["judge"], "rows_per_request": 8}}).rows_per_request == 5
    # a judge that writes its reasons first asks one row per request
    assert JudgePair(None, {**SDG, "judge": {**SDG["judge"], "rationale": ["judge_pair"]}}).rows_per_request == 1


class JointScoringTeacher:
    """Scripted stand-in for a teacher that scores every allowed string (as the CPU teacher does):
    a joint verdict's log P is the sum over its lines of log 0.9 for "yes" on a question
    containing "good" (or "no" on any other), log 0.1 otherwise. A request whose first question
    says GARBLE gets a reply that is not one line per row and no scores."""

    requests: list[tuple[str, dict]] = []
    replies: list[TeacherReply] = []

    def run_many(self, calls):
        out = self.replies_to(calls)
        JointScoringTeacher.replies += out
        return out

    def replies_to(self, calls):
        out = []
        for kind, body in calls:
            JointScoringTeacher.requests.append((kind, body))
            user = body["messages"][-1]["content"]
            questions = [line.split(": ", 1)[1] for line in user.split("\n") if line.startswith("Task")]
            if "GARBLE" in questions[0]:
                out.append(TeacherReply(True, ["yes"], prompt_tokens=101, completion_tokens=1))
                continue
            scores = {}
            for joint in body["choices"]:
                verdicts = [line.split(": ")[-1] for line in joint.split("\n")]
                scores[joint] = sum(math.log(0.9 if (v == "yes") == ("good" in q) else 0.1)
                                    for v, q in zip(verdicts, questions))
            best = max(scores, key=scores.get)
            out.append(TeacherReply(True, [best], prompt_tokens=100 + len(questions), completion_tokens=4 * len(questions),
                                    cached_tokens=50, choice_logprobs=scores))
        return out


@pytest.fixture
def teacher(monkeypatch):
    JointScoringTeacher.requests, JointScoringTeacher.replies = [], []
    monkeypatch.setattr("lab_ray.sdg.stages.make_teacher", lambda spec: JointScoringTeacher())
    return JointScoringTeacher


def _rows(questions: list[str], contexts: list[str] | None = None) -> pd.DataFrame:
    spec = {"leaf": "compositional_skills/x", "branch": "compositional_skills", "kind": "freeform",
            "task_description": "synonyms", "domain": "", "persona": "Be precise.",
            "examples": [{"question": "Synonyms of big?", "answer": "large, huge", "context": ""}], "chunks": []}
    contexts = contexts or [""] * len(questions)
    rows = [{**{c.name: c.default for c in ROW_SCHEMA.values()}, **r, "question": q, "context": c}
            for r, q, c in zip(expand(spec, 0, len(questions), 1), questions, contexts)]
    return pd.DataFrame(rows)


def test_rows_sharing_the_prompt_are_judged_together_and_charged_an_even_share(teacher):
    questions = ["good one", "bad one", "good two", "GARBLE bad", "good three", "good four", "bad two"]
    contexts = ["", "", "", "P2", "", "P2", "P2"]  # two passages: rows of different passages never share
    out = JudgeInstruction({"kind": "python"}, SDG)(_rows(questions, contexts))
    asked = [b for _, b in teacher.requests]
    # 4 rows on no passage -> groups of 3 and 1; 3 rows on P2 -> one group
    assert sorted(len(b["choices"]) for b in asked) == [2, 8, 8]
    assert all(b["choices"][0].startswith("1: yes") for b in asked)
    texts = [b["messages"][-1]["content"] for b in asked]
    assert all(("Passage: P2" in t) == ("GARBLE" in t) for t in texts)
    by_q = out.set_index("question")
    # each row's verdict is its own marginal: good questions kept, bad ones judged out
    for q in ("good one", "good two", "good three"):
        assert by_q.loc[q, "status"] == "ok" and by_q.loc[q, "instruction_score"] == pytest.approx(0.9)
    assert by_q.loc["bad one", "drop_reason"] == "judged_out"
    # the garbled group: its rows are dropped as unparsable, each with its share of the tokens
    for q in ("GARBLE bad", "good four", "bad two"):
        assert by_q.loc[q, "drop_reason"] == "unparsable" and "not one line per row" in by_q.loc[q, "drop_detail"]
    assert by_q.loc[["GARBLE bad", "good four", "bad two"], "judge_instruction_prompt_tokens"].tolist() == [34, 34, 33]
    # every token of every request is charged to exactly one row
    assert out["judge_instruction_prompt_tokens"].sum() == sum(r.prompt_tokens for r in teacher.replies)
    assert out["judge_instruction_completion_tokens"].sum() == sum(r.completion_tokens for r in teacher.replies)
    assert out["cached_prompt_tokens"].sum() == 50 * 2


class PositionFollowingTeacher(JointScoringTeacher):
    """Scripted stand-in for a small teacher's joint verdicts: "yes" on line 1, "no" on every
    other line, whatever the rows say; one row per request it judges as JointScoringTeacher."""

    def replies_to(self, calls):
        out = super().replies_to(calls)
        for (kind, body), reply in zip(calls, out):
            if len(body["choices"]) > 2 and reply.choice_logprobs:
                reply.choice_logprobs = {j: sum(math.log(0.9 if (line.endswith("yes") == line.startswith("1:")) else 0.1)
                                                for line in j.split("\n")) for j in body["choices"]}
        return out


def _spec(n_seeds: int) -> dict:
    seeds = [{"question": f"good seed {i}", "answer": "a", "context": ""} for i in range(n_seeds)]
    return {"leaf": "compositional_skills/x", "branch": "compositional_skills", "kind": "freeform",
            "task_description": "synonyms", "domain": "", "persona": "p", "seeds": seeds}


@pytest.mark.parametrize("teacher_cls, kept", [(JointScoringTeacher, 3), (PositionFollowingTeacher, 1)])
def test_calibration_keeps_several_rows_per_request_only_where_the_references_still_separate(
        teacher, monkeypatch, teacher_cls, kept):
    """References are judged one by one and k per request (shuffled); a leaf keeps k only where
    the joint verdicts tell good from bad about as well, and then uses the levels measured so."""
    from lab_ray.sdg.calibration import calibrate

    monkeypatch.setattr("lab_ray.sdg.calibration.make_teacher", lambda spec: teacher_cls())
    sdg = {**SDG, "judge": {**SDG["judge"], "max_references": 3}}
    out = calibrate([_spec(3)], {"kind": "python"}, sdg)
    leaf = "compositional_skills/x"
    assert out["rows_per_request"]["judge_instruction"] == {leaf: kept}
    sizes = [len(b["choices"]) for _, b in teacher.requests]
    # the instruction judge: 3 good and 4 bad references one by one, then in groups of 3, 3 and 1,
    # in each of three shuffled orders
    assert sizes[:16] == [2] * 7 + [8, 8, 2] * 3
    single_levels = [pytest.approx(0.1), pytest.approx(0.9)]
    assert out["judge_instruction"][leaf] == single_levels  # perfect either way, or the one-by-one levels kept
    # the stage follows the choice: a leaf calibrated to 1 is asked one row per request, in the single form
    teacher.requests = []
    rows = _rows(["good a", "bad b", "good c"])
    JudgeInstruction({"kind": "python"}, sdg, out)(rows)
    assert [len(b["choices"]) for _, b in teacher.requests] == ([8] if kept == 3 else [2, 2, 2])
