"""Labels are -100 exactly outside assistant tokens, for several chat templates."""

from __future__ import annotations

import copy

import pytest

from lab_ray.train.tokenize import IGNORE, load_tokenizer, shift_targets, tokenize_conversation

# Templates in the style of common model families (rendered by the same tokenizer).
TEMPLATES = {
    "native (SmolLM2/ChatML)": None,
    "llama2-inst": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}<<SYS>>{{ m['content'] }}<</SYS>>"
        "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %} {{ m['content'] }}{{ eos_token }}"
        "{% endif %}{% endfor %}"),
    "zephyr": (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"),
    "granite-style": (
        "{% for m in messages %}<|start_of_role|>{{ m['role'] }}<|end_of_role|>{{ m['content'] }}"
        "<|end_of_text|>\n{% endfor %}{% if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>"
        "{% endif %}"),
}

# What each template appends after an assistant's content (trained on, so the model learns to stop).
END = {"native (SmolLM2/ChatML)": "<|im_end|>\n", "llama2-inst": "EOS", "zephyr": "EOS\n",
       "granite-style": "<|end_of_text|>\n"}

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of Varrow?"},
     {"role": "assistant", "content": "Port Ell is the capital."}],
    [{"role": "system", "content": "You are terse."},
     {"role": "user", "content": "Name two tides."},
     {"role": "assistant", "content": "Spring and neap."},
     {"role": "user", "content": "And a third?"},
     {"role": "assistant", "content": "King tides, sometimes."}],
    [{"role": "user", "content": "Count: one"}, {"role": "assistant", "content": "two"},
     {"role": "user", "content": "three"}, {"role": "assistant", "content": "four five six"},
     {"role": "user", "content": "seven"}, {"role": "assistant", "content": "eight."}],
]


@pytest.fixture(scope="module")
def base_tok():
    from lab_ray.embedded_model import resolve_model

    return load_tokenizer(resolve_model("SmolLM2-135M-Instruct"))


def _runs(ids, labels):
    runs, cur = [], []
    for i, l in zip(ids, labels):
        if l != IGNORE:
            assert l == i, "a labelled position must carry its own input token"
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])


@pytest.mark.parametrize("template", list(TEMPLATES))
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_labels_cover_exactly_the_assistant_turns(base_tok, template, conv):
    tok = copy.copy(base_tok)
    if TEMPLATES[template]:
        tok.chat_template = TEMPLATES[template]
    msgs = CONVERSATIONS[conv]
    ids, labels = tokenize_conversation(tok, msgs)
    runs = [tok.decode(r) for r in _runs(ids, labels)]
    assistants = [m["content"] for m in msgs if m["role"] == "assistant"]
    # One contiguous labelled run per assistant turn, starting with its content
    # and holding nothing but it and the template's end-of-turn marker.
    assert len(runs) == len(assistants), runs
    for run, content in zip(runs, assistants):
        assert run.lstrip().startswith(content), (run, content)
        tail = run.lstrip()[len(content):]
        assert not any(m["content"] in tail for m in msgs if m["role"] != "assistant"), tail
        assert tail == END[template].replace("EOS", tok.eos_token), f"unexpected extra text {tail!r}"
    # Everything outside those runs is masked: user and system text never labelled.
    masked = tok.decode([i for i, l in zip(ids, labels) if l == IGNORE])
    for m in msgs:
        if m["role"] != "assistant":
            assert m["content"] in masked
    assert sum(l != IGNORE for l in labels) < len(ids)


def test_train_on_user_tokens_option(base_tok):
    msgs = CONVERSATIONS[1]
    ids, labels = tokenize_conversation(base_tok, msgs, train_roles=("assistant", "user"))
    labelled = base_tok.decode([i for i, l in zip(ids, labels) if l != IGNORE])
    for m in msgs:
        assert (m["content"] in labelled) == (m["role"] != "system"), m
    # The template's role headers stay masked.
    assert "<|im_start|>user" not in labelled


def test_shifted_targets_end_each_sample():
    assert shift_targets([IGNORE, 5, 6, 7]) == [5, 6, 7, IGNORE]


def test_tokenize_batch_drops_and_counts_over_length(base_tok, tmp_path):
    import pandas as pd

    from lab_ray.embedded_model import resolve_model
    from lab_ray.train.tokenize import tokenize_batch

    rows = pd.DataFrame({"id": ["a", "b"], "messages": [CONVERSATIONS[0], CONVERSATIONS[2]],
                         "metadata": [{"kind": "freeform", "length": "short"}, {"kind": "freeform", "length": "short"}]})
    n0 = len(tokenize_conversation(base_tok, CONVERSATIONS[0])[0])
    n2 = len(tokenize_conversation(base_tok, CONVERSATIONS[2])[0])
    assert n0 != n2
    out = tokenize_batch(rows, model_dir=resolve_model("SmolLM2-135M-Instruct"), max_seq_len=min(n0, n2),
                         seed=0, heldout_fraction=0.0)
    assert list(out["over_length"]) == [int(n0 > n2), int(n2 > n0)]
    long_row = out[out["over_length"] == 1].iloc[0]
    assert len(long_row["input_ids"]) == 0  # never truncated: dropped whole
    assert long_row["num_tokens"] == max(n0, n2)
