"""MCQ parsing (incl. adversarial teacher output), cloze fallback, grounding, judge faults, likelihood scoring."""

from __future__ import annotations

import pytest

from lab_ray.eval.mcq import MCQ, cloze_mcqs, parse_mcq, support, validate_mcq
from lab_ray.eval.runner import expected_score, judge, summarize
from lab_ray.taxonomy.leaf import Example

GOOD = "[Question] Where is Varrow Island?\n[A] In the Baltic\n[B] In the Selden Sea\n[C] In a lake\n[D] On the moon\n[Answer] B\n[End]"


@pytest.mark.parametrize("text,question,options,answer", [
    (GOOD, "Where is Varrow Island?", ["In the Baltic", "In the Selden Sea", "In a lake", "On the moon"], 1),
    ("Question: What is the only town?\nA) Pellan\nB) Harrowgate\nC) Mossgarth\nD) Skerry Point\nAnswer: (b)",
     "What is the only town?", ["Pellan", "Harrowgate", "Mossgarth", "Skerry Point"], 1),
    (("Sure! Here is a question:\n**Question:** Who designed the lighthouse?\n(A) Tomas Greer (B) Marta Quill "
     "(C) A sheep (D) The sea\nThe correct answer is B."), "Who designed the lighthouse?",
     ["Tomas Greer", "Marta Quill", "A sheep", "The sea"], 1),
    ("Q: How tall is the tower?\nA. 38 metres\nB. 40 metres\nC. 486 metres\nD. 9 metres\nAnswer: 38 metres",
     "How tall is the tower?", ["38 metres", "40 metres", "486 metres", "9 metres"], 0),
    ("[question] When was it finished?\n[a] 1849\n[b] 1991\n[c] 1781\n[d] 2001\n[answer] c) 1781",
     "When was it finished?", ["1849", "1991", "1781", "2001"], 2),
    # no [End], trailing chatter after the answer line is ignored
    ("[Question] How many sheep live there?\nA: 7,000\nB: 4,200\nC: 3,100\nD: 900\n[Answer] A\nI hope this helps!",
     "How many sheep live there?", ["7,000", "4,200", "3,100", "900"], 0),
])
def test_parse_formats(text, question, options, answer):
    items, reasons = parse_mcq(text)
    assert reasons == []
    assert items == [{"question": question, "options": options, "answer": answer}]


@pytest.mark.parametrize("text,reason", [
    ("", "empty"),
    ("   \n\n", "empty"),
    ("I cannot help with that.", "not_four_options"),
    ("[Question] Which one is right here?\n[A] x1\n[B] x2\n[C] x3\n[Answer] A", "not_four_options"),
    ("[Question] Which one is right here?\n[A] a1\n[B] b1\n[C] c1\n[D] d1\n[E] e1\n[Answer] A", "not_four_options"),
    ("[Question] Which one is right here?\n[A] Blue.\n[B] blue\n[C] red\n[D] green\n[Answer] C", "duplicate_options"),
    ("[Question] Which one is right here?\n[A] one\n[B] \n[C] three\n[D] four\n[Answer] A", "empty_option"),
    ("[Question] Which one is right here?\n[A] one\n[B] two\n[C] three\n[D] four\n[Answer] E", "answer_not_an_option"),
    ("[Question] Which one is right here?\n[A] one\n[B] two\n[C] three\n[D] four\n[Answer] seventeen",
     "answer_not_an_option"),
    ("[Question] Which one is right here?\n[A] one\n[B] two\n[C] three\n[D] four", "no_answer"),
    ("[Question] Which one is right here?\n[A] one\n[B] two\n[C] three\n[D] four\n[Answer] ", "no_answer"),
    # a sentence starting with the article "A" is not option A
    (("[Question] What does the fair remember?\n[A] storm victims\n[B] a war\n[C] a king\n[D] a ship\n"
     "[Answer] A small island"), "answer_not_an_option"),
    ("[Question] Which colour is the sky today?\n[A] light blue\n[B] dark blue\n[C] red\n[D] green\n[Answer] blue",
     "ambiguous_answer"),
    ("[Question] Which one is right here?\n[A] Which one is right here?\n[B] two\n[C] three\n[D] four\n[Answer] B",
     "option_repeats_question"),
])
def test_parse_rejects_with_reason(text, reason):
    items, reasons = parse_mcq(text)
    assert items == []
    assert reason in reasons


def test_parse_several_items_and_garbage_between():
    text = (GOOD + "\n\nblah blah [Question] ??? \n" + GOOD.replace("Varrow Island", "Harrowgate")
            + "\n[Question] Is this one complete enough?\n[A] yes\n[B] no")
    items, reasons = parse_mcq(text)
    assert [i["question"] for i in items] == ["Where is Varrow Island?", "Where is Harrowgate?"]
    assert len(reasons) == 2


def test_parse_never_raises_on_noise():
    import random

    rng = random.Random(0)
    alphabet = "[]()ABCDabcd:.\n Question Answer End 123"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        items, _reasons = parse_mcq(text)
        for it in items:
            assert len(it["options"]) == 4 and 0 <= it["answer"] < 4


def test_validate_direct():
    item, why = validate_mcq("What is two plus two?", [("A", "3"), ("B", "4"), ("C", "5"), ("D", "22")], "B")
    assert why is None and item["answer"] == 1
    assert validate_mcq("What is two plus two?", [("A", "3"), ("C", "4"), ("B", "5"), ("D", "6")], "A")[1] \
        == "not_four_options"


def _examples(answers):
    return [Example(f"Question number {i}?", a, "ctx") for i, a in enumerate(answers)]


def test_cloze_fallback_deterministic_and_correct():
    ex = _examples(["Harrowgate.", "Mount Cairnell.", "1849.", "Marta Quill.", "Harl sheep.", "Lake Tarn."])
    a = cloze_mcqs("knowledge/x", ex, seed=7)
    b = cloze_mcqs("knowledge/x", ex, seed=7)
    c = cloze_mcqs("knowledge/x", ex, seed=8)
    assert [q.to_dict() for q in a] == [q.to_dict() for q in b]
    assert [q.options for q in a] != [q.options for q in c]
    assert len(a) == len(ex)
    for q, e in zip(a, ex):
        assert q.source == "cloze" and q.question == e.question
        assert len(q.options) == 4 and len(set(q.options)) == 4
        assert q.options[q.answer] == e.answer
        assert set(q.options) <= {x.answer for x in ex}  # distractors are the leaf's own answers
    # too few distinct answers: fewer options, and none at all below two
    two = cloze_mcqs("k", _examples(["yes", "no", "Yes."]), seed=1)
    assert all(len(q.options) == 2 for q in two)
    assert cloze_mcqs("k", _examples(["same", "Same."]), seed=1) == []


def test_support_grounding():
    doc = "The Varrow lighthouse was finished in 1849 and designed by Marta Quill."
    assert support("It was designed by Marta Quill", doc) == 1.0
    assert support("The village of Hill near Glen", doc) < 0.5


def test_mcq_roundtrip():
    q = MCQ("id1", "leaf", "Question text?", ["a", "b", "c", "d"], 2, "teacher", 3, {"attempt": 1})
    assert MCQ.from_dict(q.to_dict()) == q


class _FailingTeacher:
    """A judge that never answers (the point of this test is the fault)."""

    def run_many(self, calls):
        from lab_ray.teacher.client import TeacherReply

        return [TeacherReply(False, error="timeout") for _ in calls]


def test_judge_fault_is_counted_not_fatal():
    from lab_ray.prompts import load_prompt

    prompt = load_prompt("eval_judge")
    items = [{"question": "Write a haiku about snow.", "reference": "White snow falls"}]
    out = judge(lambda: _FailingTeacher(), prompt, items, ["Snow is cold and white"], "m-fault")
    assert out[0]["score"] is None and out[0]["error"] == "timeout"
    s = summarize({"a": {"metric": "judge_1_10", "score": None, "branch": "compositional_skills"},
                   "b": {"metric": "judge_1_10", "score": 6.0, "branch": "compositional_skills"},
                   "k": {"metric": "accuracy", "score": 0.5, "branch": "knowledge"}})
    assert s["mt_bench_branch"] == 6.0 and s["mmlu_branch"] == 0.5 and s["mt_bench_branch/foundational"] is None


def test_expected_score():
    scores = {f"[[{i}]]": i for i in range(1, 11)}
    assert expected_score({"[[1]]": 0.5, "[[10]]": 0.5}, scores) == 5.5
    assert expected_score(None, scores) is None


@pytest.fixture(scope="module")
def student():
    from lab_ray.eval.student import StudentModel

    return StudentModel.load("SmolLM2-135M-Instruct")


def test_likelihood_picks_the_obvious_answer(student):
    options = ["A green banana", "The number seven", "Paris", "Blue whale"]
    pred, scores = student.pick("What is the capital of France?", options, "chars")
    assert options[pred] == "Paris"
    assert len(scores) == 4
    # the raw sums agree on this one too
    assert options[student.pick("What is the capital of France?", options, "none")[0]] == "Paris"


def test_student_rejects_non_model_dir(tmp_path):
    from lab_ray.errors import LabRayError
    from lab_ray.eval.student import StudentModel

    with pytest.raises(LabRayError, match="not a Hugging Face model directory"):
        StudentModel.load(str(tmp_path))


def test_shared_prompt_scoring_matches_full_forward(student):
    prompt = student._prompt_ids("Which bay does the River Ness flow into?")
    conts = [student.tokenizer.encode(c, add_special_tokens=False)
             for c in ["Harrow Bay, on the east coast.", "Lake Tarn", "Gannet Head"]]
    shared, full = student._scores_shared_prompt(prompt, conts), student._scores_full(prompt, conts)
    for (a, n), (b, m) in zip(shared, full):
        assert n == m and a == pytest.approx(b, abs=1e-3)


def test_a_checkpoint_uri_has_one_fingerprint_on_every_node(tmp_path, monkeypatch):
    """The eval cache lives in the run's storage; its key must not depend on which node downloaded
    the checkpoint (each has its own copy, path and mtimes), and a changed file must change it."""
    from lab_ray.eval.runner import model_fingerprint
    from lab_ray.train.checkpoints import materialize

    ckpt = tmp_path / "store" / "checkpoint_1"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w" * 10)
    (ckpt / "config.json").write_text("{}")
    uri = f"file://{ckpt}"
    first = model_fingerprint(uri)
    # two nodes' downloaded copies differ in path (and mtime) ...
    copies = {materialize(uri, cache_root=str(tmp_path / node)) for node in ("head", "worker")}
    assert len(copies) == 2
    monkeypatch.setenv("LAB_RAY_CHECKPOINT_CACHE", str(tmp_path / "worker"))
    assert model_fingerprint(uri) == first  # ... the URI's fingerprint does not
    (ckpt / "model.safetensors").write_bytes(b"w" * 11)
    assert model_fingerprint(uri) != first
