"""The test-only teachers keep the client's contract and are deterministic per request."""

from __future__ import annotations

from collections import Counter

import pytest

from lab_ray.testing.fake_teachers import FaultyTeacher, InstantTeacher, read_fates
from lab_ray.sdg.parsing import clean_single, parse_tagged
from lab_ray.prompts import load_prompt

ROW = {"task_description": "Write a haiku.", "domain": "geography", "context": "Varrow Island is small.",
       "question": "What?", "answer": "That.", "persona": "You are precise."}
EX = [{"question": "Where is it?", "answer": "North.", "context": "Varrow Island lies north."}]


def _chat(name, seed, max_tokens=64):
    return ("chat", {"messages": load_prompt(name).render(ROW, EX), "max_tokens": max_tokens,
                     "temperature": 0.8, "seed": seed})


def _choose(name, i=0):
    p = load_prompt(name)
    return ("choose", {"messages": p.render({**ROW, "question": f"q{i}"}, []), "choices": list(p.choices)})


def test_instant_replies_parse_for_every_stage_and_vary_by_seed():
    t = InstantTeacher()
    qa = [r.text for r in t.run_many([_chat("knowledge_qa", s) for s in range(50)])]
    items = [parse_tagged(x, ("Question", "Answer")) for x in qa]
    assert all(len(i) == 1 for i in items)
    assert len({(i[0]["question"], i[0]["answer"]) for i in items}) == 50
    for name in ("skill_instruction", "skill_context", "skill_response"):
        texts = [r.text for r in t.run_many([_chat(name, s) for s in range(50)])]
        assert all(clean_single(x, max_chars=600) == x for x in texts) and len(set(texts)) == 50
        assert not any("[Question]" in x for x in texts)
    assert len(t.run_many([_chat("skill_instruction", 1, max_tokens=4)])[0].text.split()) == 4


def test_instant_choose_gives_the_positive_choice_with_high_probability():
    t = InstantTeacher()
    yes, grade = t.run_many([_choose("instruction_judge"), _choose("pair_judge")])
    assert yes.text == "yes" and yes.choice_probs()["yes"] > 0.85
    assert grade.text == "good" and grade.choice_probs()["good"] > 0.85
    replies = InstantTeacher(reject_fraction=0.3).run_many([_choose("knowledge_faithfulness", i) for i in range(400)])
    rejected = sum(r.text == "no" for r in replies)
    assert 80 < rejected < 160 and all(r.ok for r in replies)


def test_replies_are_deterministic_across_instances():
    calls = [_chat("knowledge_qa", s) for s in range(5)] + [_choose("pair_judge", i) for i in range(5)]
    a, b = InstantTeacher(reject_fraction=0.5).run_many(calls), InstantTeacher(reject_fraction=0.5).run_many(calls)
    assert [(r.text, r.choice_logprobs) for r in a] == [(r.text, r.choice_logprobs) for r in b]
    fa, fb = FaultyTeacher().run_many(calls), FaultyTeacher().run_many(calls)
    assert [(r.ok, r.error, r.text) for r in fa] == [(r.ok, r.error, r.text) for r in fb]


def test_faulty_teacher_fails_its_fraction_and_garbage_is_unparsable(tmp_path):
    t = FaultyTeacher(fraction=0.3, garbage_share=0.5, log_dir=str(tmp_path))
    calls = [_chat("knowledge_qa", s) for s in range(300)] + [_chat("skill_instruction", s) for s in range(300)] + \
        [_choose("instruction_judge", i) for i in range(300)]
    replies = t.run_many(calls)
    fates = read_fates(tmp_path)
    assert len(fates) == len(calls)
    c = Counter(f for _, f in fates)
    assert 0.25 < (c["error"] + c["garbage"]) / len(calls) < 0.35 and c["error"] and c["garbage"]
    for (kind, kw), reply, (_, fate) in zip(calls, replies, fates):
        if fate == "error":
            assert not reply.ok and reply.error in ("timeout", "http_500", "http_503", "connection")
        elif fate == "garbage" and kind == "choose":
            assert not reply.ok and reply.error == "unparsable"
        elif fate == "garbage":  # what each stage would make of it: nothing
            assert reply.ok
            if "[Question]" in kw["messages"][2]["content"]:  # knowledge Q/A: no complete item
                assert parse_tagged(reply.text, ("Question", "Answer")) == []
            else:  # an instruction, a context, a response: too short to be one
                assert clean_single(reply.text) is None and len(reply.text.strip()) < 2
        else:
            assert reply.ok


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_faulty_teacher_extremes(fraction):
    replies = FaultyTeacher(fraction=fraction).run_many([_chat("skill_response", s) for s in range(20)])
    assert all(r.text and r.ok for r in replies) if fraction == 0 else \
        all((not r.ok) or parse_tagged(r.text, ("Question", "Answer")) == [] for r in replies)
