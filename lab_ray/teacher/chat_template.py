"""Chat templates of served (and trained) models: the system role and template-less models.

Two real-world cases a teacher or student model brings:
- a template that rejects the `system` role (Mixtral-8x7B-Instruct-v0.1's raises
  "Conversation roles must alternate user/assistant/user/assistant/..."). SDG
  prompts carry a system persona, so this is detected once at start-up by
  rendering a probe conversation, and the system text is then folded into the
  first user turn: `fold_system` for messages (the CPU engine) or
  `folding_template` (a Jinja prefix that does the same inside the template, so
  vLLM's own OpenAI server applies it to every request).
- a base model without any chat template (`mistralai/Mistral-7B-v0.1`):
  `DEFAULT_CHAT_TEMPLATE` (ChatML: `<|im_start|>role\\ncontent<|im_end|>\\n` per
  message, then `<|im_start|>assistant\\n` as the generation prompt) is used
  instead of an exception. ChatML's markers are plain text to a base model's
  tokenizer; training on that format teaches it, which is what fine-tuning a
  base student does anyway.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

# ChatML, the format SmolLM2 / Qwen / many instruct models use; no implicit system message.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# Rebinds `messages` before the model's own template runs: a leading system message is
# joined (blank line between) to the first user turn, or becomes that turn if none follows.
_FOLD_PREFIX = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set _lab_sys = messages[0]['content'] -%}"
    "{%- set _lab_rest = messages[1:] -%}"
    "{%- if _lab_rest and _lab_rest[0]['role'] == 'user' -%}"
    "{%- set messages = [{'role': 'user', 'content': _lab_sys ~ '\\n\\n' ~ _lab_rest[0]['content']}]"
    " + _lab_rest[1:] -%}"
    "{%- else -%}"
    "{%- set messages = [{'role': 'user', 'content': _lab_sys}] + _lab_rest -%}"
    "{%- endif -%}"
    "{%- endif -%}"
)

SYSTEM_ROLE_MODES = ("auto", "fold", "keep")

_PROBE = [{"role": "system", "content": "You are a careful assistant."},
          {"role": "user", "content": "Say hello."}]


def fold_system(messages: list[dict]) -> list[dict]:
    """The conversation without a system message: its text opens the first user turn."""
    if not messages or messages[0].get("role") != "system":
        return list(messages)
    system, rest = str(messages[0].get("content") or ""), list(messages[1:])
    if rest and rest[0].get("role") == "user":
        first = dict(rest[0], content=f"{system}\n\n{rest[0].get('content') or ''}")
        return [first, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


def folding_template(template: str) -> str:
    """`template` with system folding in front (for servers that render the template themselves)."""
    return _FOLD_PREFIX + template


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def ensure_chat_template(tokenizer) -> bool:
    """Give a tokenizer without a chat template DEFAULT_CHAT_TEMPLATE; True if it did.

    The one call a trainer needs for a base student (call it right after loading the tokenizer).
    """
    if has_template(tokenizer):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    log.warning("%s has no chat template: using lab-ray's default (ChatML)",
                getattr(tokenizer, "name_or_path", "the model"))
    return True


def rejects_system(tokenizer) -> bool:
    """Does the tokenizer's chat template refuse a system message? (renders one probe)."""
    try:
        tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
        return False
    except Exception as e:  # jinja's TemplateError from raise_exception(...), or a template bug
        folded = fold_system(_PROBE)
        try:
            tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)
        except Exception:
            raise  # the template fails without a system message too: not a system-role problem
        log.info("chat template rejects the system role (%s): folding it into the first user turn", e)
        return True


def should_fold(tokenizer, mode: str = "auto") -> bool:
    if mode not in SYSTEM_ROLE_MODES:
        raise ValueError(f"system_role must be one of {list(SYSTEM_ROLE_MODES)}, not {mode!r}")
    if mode == "auto":
        return rejects_system(tokenizer)
    return mode == "fold"


def prepare_tokenizer(tokenizer, mode: str = "auto") -> bool:
    """Default template if it has none; returns whether system messages must be folded."""
    ensure_chat_template(tokenizer)
    return should_fold(tokenizer, mode)


def served_template(model_source: str, mode: str = "auto", template: str | None = None) -> str | None:
    """The chat template a server should use for `model_source`, or None to keep the model's own.

    Loads only the tokenizer (small files; local for the embedded model). None when
    the model has a template that accepts `system` and nothing was configured.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_source)
    if template:
        tok.chat_template = _read_template(template)
    changed = ensure_chat_template(tok) or bool(template)
    if should_fold(tok, mode):
        base = tok.chat_template
        if isinstance(base, dict):  # several named templates: the default one is the chat's
            base = base.get("default") or next(iter(base.values()))
        return folding_template(base)
    return tok.chat_template if changed else None


def _read_template(template: str) -> str:
    """A template given as a path to a file, or as the template text itself."""
    from pathlib import Path

    if "{" not in template and Path(template).expanduser().is_file():
        return Path(template).expanduser().read_text()
    return template
