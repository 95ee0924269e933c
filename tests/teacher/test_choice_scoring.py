"""Constrained choice with a shared prompt cache equals the plain definition of log P(choice | prompt)."""

import pytest
import torch


@pytest.fixture(scope="module")
def engine():
    from lab_ray.embedded_model import embedded_model_dir
    from lab_ray.teacher.engine import Engine

    return Engine(str(embedded_model_dir()), threads=1)


def reference_logprob(engine, prompt_ids: list[int], choice: str) -> float:
    """Sum of log P(token) over the choice's tokens, from one forward pass of prompt + choice."""
    toks = engine.tokenizer.encode(choice, add_special_tokens=False)
    if not toks:
        return 0.0
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([prompt_ids + toks])).logits[0]
    logp = logits[len(prompt_ids) - 1: -1].float().log_softmax(-1)
    return float(logp[torch.arange(len(toks)), torch.tensor(toks)].sum())


def test_multi_token_single_token_and_empty_choices_match_the_reference(engine):
    scale = [str(i) for i in range(1, 11)]  # "10" is more than one token
    items = [
        (engine.chat_prompt([{"role": "user", "content": "Rate the answer 'Paris' to 'capital of France?'"}]), scale),
        (engine.chat_prompt([{"role": "user", "content": "Is fire cold?"}]), ["yes", "no", "", "not at all, never"]),
    ]
    assert any(len(engine.tokenizer.encode(c, add_special_tokens=False)) > 1 for c in scale)
    got = engine.choice_logprobs_many(items)
    for (prompt, choices), scores in zip(items, got):
        assert set(scores) == set(choices)
        for c in choices:
            assert scores[c] == pytest.approx(reference_logprob(engine, prompt, c), abs=2e-3), c
    assert got[1][""] == 0.0
