"""Chat-template tokenisation with assistant-only labels, as a Ray Data map.

Spans come from rendering the conversation prefix by prefix with the student's
own chat template: the text one assistant turn adds (its content and the
template's end-of-turn marker) is what the model learns to produce. Token
labels are set from the character offsets of a single tokenisation of the
full text, so they line up with exactly what the model sees. Rows longer than
max_seq_len are flagged (counted and dropped by the caller), never truncated.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Iterable

import numpy as np
import pandas as pd

IGNORE = -100


@functools.lru_cache(maxsize=4)
def load_tokenizer(model_dir: str):
    """The tokenizer of a model directory or of a checkpoint in the run's storage (URI)."""
    from transformers import AutoTokenizer

    from lab_ray.train.checkpoints import materialize

    from lab_ray.teacher.chat_template import ensure_chat_template

    tok = AutoTokenizer.from_pretrained(materialize(model_dir))
    ensure_chat_template(tok)  # a base model without one gets lab-ray's documented default (ChatML)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _render(tok, messages: list[dict], generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def trained_spans(tok, messages: list[dict], train_roles: Iterable[str] = ("assistant",)) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans whose tokens carry labels."""
    roles = set(train_roles)
    text = _render(tok, messages)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] not in roles:
            continue
        before = _render(tok, messages[:i], generation_prompt=m["role"] == "assistant")
        upto = _render(tok, messages[: i + 1])
        if text.startswith(upto) and upto.startswith(before):
            start, end = len(before), len(upto)
        else:  # a template that rewrites earlier turns: fall back to the content itself
            start = text.find(m["content"], spans[-1][1] if spans else 0)
            if start < 0:
                continue
            end = start + len(m["content"])
        if m["role"] != "assistant":  # user turns: content only, not the template's scaffolding
            s = text.find(m["content"], start, end)
            start, end = (s, s + len(m["content"])) if s >= 0 else (start, end)
        spans.append((start, end))
    return text, spans


def tokenize_conversation(tok, messages: list[dict], train_roles: Iterable[str] = ("assistant",)) -> tuple[list[int], list[int]]:
    """input_ids and labels (IGNORE outside trained spans), unshifted."""
    text, spans = trained_spans(tok, messages, train_roles)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    k = 0
    for j, (a, b) in enumerate(enc["offset_mapping"]):
        while k < len(spans) and spans[k][1] <= a:
            k += 1
        if k < len(spans) and a >= spans[k][0] and b > a:
            labels[j] = ids[j]
    return ids, labels


def shift_targets(labels: list[int]) -> list[int]:
    """targets[t] = label of token t+1, so a packed row never predicts across samples."""
    return list(labels[1:]) + [IGNORE]


def is_heldout(row_id: str, seed: int, fraction: float) -> bool:
    h = int.from_bytes(hashlib.sha1(f"{seed}:{row_id}".encode()).digest()[:4], "big")
    return h < fraction * 2**32


def _plain(x: Any) -> Any:
    """Arrow/pandas nested values (numpy arrays of dicts) back to Python."""
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    return x


def tokenize_batch(batch: pd.DataFrame, *, model_dir: str, max_seq_len: int, seed: int, heldout_fraction: float,
                   split: str = "train", length: str = "", train_on_user_kinds: tuple = (),
                   selection: dict | None = None, round: int = 0) -> pd.DataFrame:
    """Ray Data map_batches fn: one output row per input row of the wanted split/length.

    Training split with a mixing selection (lab_ray.sdg.mixing): pass `round` j keeps the
    rows the recipe uses more than j times, so passes 0..max_repeats-1 give each row its
    copies, a whole pass apart (never side by side in one packing window)."""
    from lab_ray.sdg.mixing import copies

    tok = load_tokenizer(model_dir)
    out: dict[str, list] = {k: [] for k in ("id", "kind", "leaf", "input_ids", "targets", "num_tokens",
                                          "num_label_tokens", "over_length")}
    for row_id, messages, meta in zip(batch["id"], batch["messages"], batch["metadata"]):
        meta = _plain(meta) or {}
        if length and meta.get("length") != length:
            continue
        if is_heldout(str(row_id), seed, heldout_fraction) != (split == "heldout"):
            continue
        leaf = str(meta.get("leaf") or "")
        if (copies(str(row_id), leaf, selection) if split == "train" else 1) <= round:
            continue
        kind = str(meta.get("kind") or "")
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in _plain(messages)]
        roles = ("assistant", "user") if kind in train_on_user_kinds else ("assistant",)
        ids, labels = tokenize_conversation(tok, msgs, roles)
        targets = shift_targets(labels)
        over = len(ids) > max_seq_len
        out["id"].append(str(row_id))
        out["kind"].append(kind)
        out["leaf"].append(leaf)
        out["input_ids"].append(np.asarray(ids if not over else [], dtype=np.int32))
        out["targets"].append(np.asarray(targets if not over else [], dtype=np.int32))
        out["num_tokens"].append(len(ids))
        out["num_label_tokens"].append(sum(t != IGNORE for t in targets))
        out["over_length"].append(int(over))
    return pd.DataFrame(out)


def tokenized_dataset(paths: list[str], *, model_dir: str, max_seq_len: int, seed: int, heldout_fraction: float,
                      split: str = "train", length: str = "", train_on_user_kinds=(), cpus: float = 0.25,
                      selection: dict | None = None):
    """Streaming Ray Dataset of tokenised rows (over-length rows still flagged, not dropped).

    `selection`: the training split's mixing recipe (lab_ray.sdg.mixing.training_selection);
    each row then appears as many times as the recipe uses it, one read of the shards per
    repeat (a row is tokenised once per copy, as it would be for copies on disk)."""
    import ray.data

    from lab_ray.sdg.mixing import max_repeats

    rounds = max_repeats(selection) if split == "train" else 1
    parts = [ray.data.read_json(paths, file_extensions=["jsonl", "json"]).map_batches(
        tokenize_batch, batch_format="pandas", batch_size=64, num_cpus=cpus,
        fn_kwargs=dict(model_dir=model_dir, max_seq_len=max_seq_len, seed=seed, heldout_fraction=heldout_fraction,
                       split=split, length=length, train_on_user_kinds=tuple(train_on_user_kinds),
                       selection=selection, round=j)) for j in range(rounds)]
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
