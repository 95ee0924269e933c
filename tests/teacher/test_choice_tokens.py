"""Judge choices must differ at their first token when the teacher scores by first token (vLLM).

No server here: the tokenizers are the embedded SmolLM2's (BPE, digits one per
token) and a small sentencepiece-style one built like Llama/Mistral's (a lone
"▁" before a digit), and the scoring function is the client's own
`choice_logprobs_from_top` fed the top_logprobs a vLLM server sends.
"""

from __future__ import annotations

import shutil

import pytest

from lab_ray.config import load_config
from lab_ray.errors import ConfigError
from lab_ray.prompts import load_prompt
from lab_ray.resources import conf_dir
from lab_ray.teacher import tokenizer as tk
from lab_ray.teacher.client import TeacherReply, choice_logprobs_from_top

MT_BENCH = [f"[[{i}]]" for i in range(1, 11)]
DIGITS = [str(i) for i in range(1, 10)]


@pytest.fixture(scope="module")
def smollm2():
    return tk._load(tk.resolve_model(tk.EMBEDDED))


@pytest.fixture(scope="module")
def sentencepiece_like():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁": 1, "[": 2, "]": 3, "n": 4, "o": 5, "y": 6, "e": 7, "s": 8, "ye": 9, "yes": 10,
             "▁n": 11, "▁no": 12, "▁yes": 13, **{str(d): 20 + d for d in range(10)}}
    merges = [("y", "e"), ("ye", "s"), ("▁", "yes"), ("▁", "n"), ("▁n", "o")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace("▁", prepend_scheme="always"),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace("▁", prepend_scheme="always")
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    assert t.convert_ids_to_tokens(t.encode("7", add_special_tokens=False)) == ["▁", "7"]  # as Llama-2 splits it
    return t


def test_first_pieces_under_both_tokenizers(smollm2, sentencepiece_like):
    for tok in (smollm2, sentencepiece_like):
        assert [tk.first_piece(c, tok) for c in DIGITS] == DIGITS  # the lone "▁" is skipped
        assert tk.collisions(DIGITS, tok) == []
        assert tk.collisions(["yes", "no"], tok) == []
        assert {p for _, _, p in tk.collisions(MT_BENCH, tok)} <= {"[", "[["}
        assert len(tk.collisions(MT_BENCH, tok)) == 10 * 9  # every pair
        assert ("1", "10", "1") in tk.collisions(DIGITS + ["10"], tok)  # "1" is a prefix of "10"
    assert tk.collisions(["poor", "fair", "good"], smollm2) == []
    # Same first character, different first tokens: only the tokenizer can tell them apart.
    assert tk.collisions(["good", "great"]) and not tk.collisions(["good", "great"], smollm2)


def test_first_token_scoring_of_the_new_scale_is_not_uniform_and_the_old_one_was():
    """What vLLM sends under structured_outputs: one top token per allowed first token (masked)."""
    top = [{"token": d, "logprob": -0.3 * i} for i, d in enumerate(DIGITS)] + [{"token": "<x>", "logprob": -9999.0}]
    reply = TeacherReply(ok=True, texts=["1"], choice_logprobs=choice_logprobs_from_top(
        {"content": [{"token": "1", "top_logprobs": top}]}, DIGITS))
    probs = reply.choice_probs()
    assert list(probs) == DIGITS and probs["1"] > probs["5"] > probs["9"]
    from lab_ray.eval.runner import expected_score

    scores = load_prompt("eval_judge").scores
    assert 1.0 < expected_score(probs, scores) < 5.5
    # [[1]]..[[10]]: the only top token is "[[", shared by all. It once gave every rating 0.1 (every
    # answer 5.5); now choices that would share a token get no first-token probability at all.
    old = choice_logprobs_from_top({"content": [{"token": "[[", "top_logprobs": [{"token": "[[", "logprob": 0.0}]}]},
                                   MT_BENCH)
    assert old is None and TeacherReply(ok=True, choice_logprobs=old).choice_probs() is None


def test_eval_judge_scale_keeps_the_1_to_10_range():
    p = load_prompt("eval_judge")
    assert list(p.choices) == DIGITS and set(p.scores) == set(p.choices)
    assert [p.scores[c] for c in DIGITS] == [pytest.approx(1 + (r - 1) * 9 / 8) for r in range(1, 10)]


def _prompts_dir(tmp_path, **choices):
    d = tmp_path / "prompts"
    shutil.copytree(conf_dir() / "prompts", d)
    for name, cs in choices.items():
        text = (d / f"{name}.yaml").read_text().split("\nchoices:")[0]
        (d / f"{name}.yaml").write_text(text + f"\nchoices: {cs!r}\nscores: { {c: i for i, c in enumerate(cs)}!r}\n")
    return d


def test_colliding_choices_are_a_config_error_naming_file_and_choices(tmp_path):
    d = _prompts_dir(tmp_path, eval_judge=MT_BENCH)
    prompt = load_prompt("eval_judge", str(d))
    cfg = load_config(["teacher=vllm-cpu"])
    with pytest.raises(ConfigError, match=r"eval_judge\.yaml: choices '\[\[1\]\]' and '\[\[2\]\]' share their "
                                          r"first token '\[\[' under the tokenizer of SmolLM2-135M-Instruct.*"
                                          r"single digits 1-9"):
        tk.check_choice_prompts(cfg, [prompt])
    # The CPU teacher scores whole choices, whichever field asks for the choice: the same prompt is fine there.
    tk.check_choice_prompts(load_config([]), [prompt])
    tk.check_choice_prompts(load_config(["teacher.client.choice_field=structured_outputs"]), [prompt])
    # An external vLLM (< 0.12: guided_choice) scored by top_logprobs is checked too.
    with pytest.raises(ConfigError, match="share their first token"):
        tk.check_choice_prompts(load_config(["teacher.backend=openai", "teacher.client.choice_top_logprobs=5"]),
                                [prompt])


def test_shipped_prompts_pass_without_loading_any_tokenizer(monkeypatch):
    names = sorted(p.stem for p in (conf_dir() / "prompts").glob("*.yaml") if p.stem not in {"calibration", "personas", "judge_rationale"})
    prompts = [load_prompt(n) for n in names]
    assert sum(bool(p.choices) for p in prompts) >= 6
    monkeypatch.setattr(tk, "served_tokenizer", lambda cfg: pytest.fail("loaded a tokenizer"))
    for profile in ("vllm-cpu", "mixtral-vllm"):
        tk.check_choice_prompts(load_config([f"teacher={profile}"]), prompts)


def test_a_remote_teacher_without_a_local_tokenizer_falls_back_to_first_characters(tmp_path, monkeypatch):
    monkeypatch.setattr(tk, "served_tokenizer", lambda cfg: None)
    prompt = load_prompt("pair_judge", str(_prompts_dir(tmp_path, pair_judge=["good", "great", "bad"])))
    with pytest.raises(ConfigError, match="'good' and 'great' share their first token 'g' under an unknown tokenizer"):
        tk.check_choice_prompts(load_config(["teacher=mixtral-vllm"]), [prompt])
