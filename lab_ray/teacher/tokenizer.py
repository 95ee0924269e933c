"""The served teacher's tokenizer, and the check that first-token scoring can tell choices apart.

A vLLM teacher gives a constrained choice its probability from the first
generated token's top_logprobs (client.choice_logprobs_from_top): choices
that start with the same token get one probability between them, so a judge
with such choices scores every verdict alike (MT-Bench's [[1]]..[[10]] all
start with "[["). `check_choice_prompts` makes that a config error when the
prompts are loaded, naming the file and the colliding choices.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import permutations

from lab_ray.embedded_model import resolve_model
from lab_ray.errors import ConfigError

EMBEDDED = "SmolLM2-135M-Instruct"


def teacher_source(cfg) -> str:
    """Where the served teacher's weights and tokenizer come from: a vLLM teacher serves
    teacher.vllm.model_source under the name teacher.model."""
    if cfg.teacher.model_path:
        return cfg.teacher.model_path
    return cfg.teacher.vllm.model_source if cfg.teacher.backend == "vllm" else cfg.teacher.model


@lru_cache(maxsize=8)
def _load(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def served_tokenizer(cfg):
    """The teacher's own tokenizer, or None when it cannot be loaded (a remote teacher's name)."""
    try:
        return _load(resolve_model(teacher_source(cfg)))
    except (OSError, ValueError):
        return None


def teacher_tokenizer(cfg):
    """The teacher's tokenizer, else the embedded model's (to chunk documents for a remote teacher)."""
    return served_tokenizer(cfg) or _load(resolve_model(EMBEDDED))


def first_token_scoring(teacher) -> bool:
    """Does the client score choices by their first token? Against any server but our CPU app
    (which returns whole-choice likelihoods for either field) when it asks for structured_outputs
    (vLLM >= 0.12) or for top_logprobs."""
    client = teacher.client
    field = str(getattr(client.choice_field, "value", client.choice_field))
    return teacher.backend != "cpu" and (field == "structured_outputs" or int(client.choice_top_logprobs) > 0)


def first_piece(choice: str, tokenizer=None) -> str:
    """The text of the choice's first non-blank token (a sentencepiece "▁" alone is blank);
    without a tokenizer its first non-blank character, which no tokenizer's first token undercuts."""
    if tokenizer is None:
        return choice.strip()[:1]
    for tok in tokenizer.encode(choice, add_special_tokens=False):
        piece = tokenizer.decode([tok]).strip()
        if piece:
            return piece
    return ""


def collisions(choices, tokenizer=None) -> list[tuple[str, str, str]]:
    """(a, b, piece): choice b also starts with a's first token `piece`, so the top-logprob
    that scores a scores b too (the client matches top tokens by prefix)."""
    pieces = {c: first_piece(c, tokenizer) for c in choices}
    return [(a, b, pieces[a]) for a, b in permutations(choices, 2) if b.strip().startswith(pieces[a])]


def check_choice_prompts(cfg, prompts) -> None:
    """ConfigError when a prompt's choices cannot be told apart by their first token and the
    teacher scores that way. Cheap: choices that differ at their first character pass without
    a tokenizer; only others load the served model's tokenizer (once per process)."""
    if not first_token_scoring(cfg.teacher):
        return
    for prompt in prompts:
        if not prompt.choices or not collisions(prompt.choices):
            continue
        tokenizer = served_tokenizer(cfg)
        found = collisions(prompt.choices, tokenizer)
        if not found:
            continue
        a, b, piece = found[0]
        under = (f"the tokenizer of {teacher_source(cfg)}" if tokenizer is not None
                 else "an unknown tokenizer (the teacher's is not local)")
        raise ConfigError(
            f"prompt file {prompt.path or prompt.name}: choices {a!r} and {b!r} share their first token "
            f"{piece!r} under {under}; teacher.client.choice_field={cfg.teacher.client.choice_field} scores "
            f"a choice by its first token only, so these would get one probability between them and every "
            f"verdict would look alike. Make each choice start differently (e.g. single digits 1-9, or "
            f"distinct words), or use a teacher that scores whole choices (teacher.backend=cpu)")
