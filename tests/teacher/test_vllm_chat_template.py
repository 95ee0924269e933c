"""Chat templates of served models (lab_ray/teacher/chat_template.py), no vLLM engine:
a template that rejects the system role, and a base model without any template.

The models are copies of the embedded SmolLM2 (weights symlinked) with only the
template changed: `rejecting` has Mixtral-8x7B-Instruct's role check (it raises
"Conversation roles must alternate ..." on a system message), `templateless`
has none, as mistralai/Mistral-7B-v0.1. test_vllm_serve.py serves `rejecting`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lab_ray.teacher.chat_template import (
    DEFAULT_CHAT_TEMPLATE,
    ensure_chat_template,
    fold_system,
    rejects_system,
    served_template,
)

# Mixtral-8x7B-Instruct-v0.1's structure (strict user/assistant alternation), SmolLM2's markers.
REJECTING_TEMPLATE = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHAT = [{"role": "system", "content": "You are a precise teacher."},
        {"role": "user", "content": "Name a prime number."},
        {"role": "assistant", "content": "7"},
        {"role": "user", "content": "Another one?"}]


def model_copy(dest: Path, template: str | None) -> Path:
    """The embedded model with `template` as its chat template (None: no template at all)."""
    from lab_ray.embedded_model import resolve_model

    src = Path(resolve_model("SmolLM2-135M-Instruct"))
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == "chat_template.jinja":
            continue
        if f.suffix == ".safetensors":
            (dest / f.name).symlink_to(f)
        else:
            shutil.copy(f, dest / f.name)
    conf = json.loads((dest / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (dest / "tokenizer_config.json").write_text(json.dumps(conf))
    if template is not None:
        (dest / "chat_template.jinja").write_text(template)
    return dest


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"rejecting": model_copy(root / "rejecting", REJECTING_TEMPLATE),
            "templateless": model_copy(root / "templateless", None)}


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_fold_system_joins_the_system_text_to_the_first_user_turn():
    folded = fold_system(CHAT)
    assert [m["role"] for m in folded] == ["user", "assistant", "user"]
    assert folded[0]["content"] == "You are a precise teacher.\n\nName a prime number."
    assert fold_system(CHAT[1:]) == CHAT[1:]  # nothing to fold
    only = fold_system([{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}])
    assert only == [{"role": "user", "content": "S"}, {"role": "assistant", "content": "A"}]


def test_rejecting_template_is_detected_and_the_folding_template_renders_like_folded_messages(models):
    tok = _tok(models["rejecting"])
    with pytest.raises(Exception, match="roles must alternate"):
        tok.apply_chat_template(CHAT, tokenize=False)
    assert rejects_system(tok)
    template = served_template(str(models["rejecting"]))
    assert template is not None and template.endswith(REJECTING_TEMPLATE)
    served = tok.apply_chat_template(CHAT, chat_template=template, tokenize=False, add_generation_prompt=True)
    expected = tok.apply_chat_template(fold_system(CHAT), tokenize=False, add_generation_prompt=True)
    assert served == expected
    assert served.startswith("<|im_start|>user\nYou are a precise teacher.\n\nName a prime number.<|im_end|>")
    # Without a system message the folding template is the model's own.
    no_sys = CHAT[1:]
    assert (tok.apply_chat_template(no_sys, chat_template=template, tokenize=False)
            == tok.apply_chat_template(no_sys, tokenize=False))


def test_a_template_that_accepts_system_is_served_unchanged():
    from lab_ray.embedded_model import resolve_model

    tok = _tok(resolve_model("SmolLM2-135M-Instruct"))
    assert not rejects_system(tok)
    assert served_template(resolve_model("SmolLM2-135M-Instruct")) is None
    assert served_template(resolve_model("SmolLM2-135M-Instruct"), mode="fold").startswith("{%- if messages")


def test_a_base_model_without_template_gets_the_default_instead_of_an_exception(models):
    tok = _tok(models["templateless"])
    assert not tok.chat_template
    with pytest.raises(Exception):
        tok.apply_chat_template(CHAT, tokenize=False)
    assert ensure_chat_template(tok) and tok.chat_template == DEFAULT_CHAT_TEMPLATE
    assert not ensure_chat_template(tok)  # idempotent
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a precise teacher.<|im_end|>\n<|im_start|>user\nName a prime number."
                    "<|im_end|>\n<|im_start|>assistant\n7<|im_end|>\n<|im_start|>user\nAnother one?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert served_template(str(models["templateless"])) == DEFAULT_CHAT_TEMPLATE


def test_cpu_engine_folds_and_defaults_too(models):
    from lab_ray.teacher.engine import Engine

    rejecting = Engine(str(models["rejecting"]), threads=1)
    assert rejecting.fold_system
    ids = rejecting.chat_prompt(CHAT)
    assert rejecting.tokenizer.decode(ids).startswith("<|im_start|>user\nYou are a precise teacher.\n\n")
    base = Engine(str(models["templateless"]), threads=1)
    assert not base.fold_system and base.tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    assert base.tokenizer.decode(base.chat_prompt(CHAT)).endswith("<|im_start|>assistant\n")
