"""Tolerant parsing of a weak teacher's output.

Tagged sections (`[Question] ... [Answer] ... [End]`) may come with odd case,
missing brackets or colons, extra chatter, several items per completion, or
no final [End]. Whatever cannot be read as a complete item is reported as
unparsable by the caller (None / empty list), never an exception.
"""

from __future__ import annotations

import re

_LEADS = re.compile(r"^\s*(?:sure|here(?: is|'s)|okay|ok)\b[^\n]*:\s*\n", re.IGNORECASE)


def _tag_pattern(tag: str) -> str:
    return rf"(?:\[\s*{tag}\s*\]|\*\*\s*{tag}\s*:?\s*\*\*|(?m:^\s*{tag}\s*:))"


def parse_tagged(text: str, tags: tuple[str, ...] | list[str], end_tag: str = "End") -> list[dict[str, str]]:
    """All complete items: each has every tag, in order, with non-empty text."""
    if not text or not tags:
        return []
    first, rest = tags[0], list(tags[1:])
    starts = [m for m in re.finditer(_tag_pattern(first), text, flags=re.IGNORECASE)]
    items = []
    for i, m in enumerate(starts):
        stop = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        chunk = text[m.end():stop]
        end = re.search(_tag_pattern(end_tag), chunk, flags=re.IGNORECASE)
        if end:
            chunk = chunk[: end.start()]
        values, ok = {}, True
        current = first
        for tag in rest:
            nxt = re.search(_tag_pattern(tag), chunk, flags=re.IGNORECASE)
            if not nxt:
                ok = False
                break
            values[current.lower()] = chunk[: nxt.start()].strip()
            chunk, current = chunk[nxt.end():], tag
        if not ok:
            continue
        values[current.lower()] = chunk.strip()
        if all(values.get(t.lower()) for t in tags):
            items.append(values)
    return items


def clean_single(text: str, max_chars: int = 2000) -> str | None:
    """A one-item free-text output (an instruction, a context): trimmed, or None if empty/garbage."""
    if not text:
        return None
    text = _LEADS.sub("", text).strip()
    text = re.sub(r"^(?:\[\s*\w+\s*\]|\w+:)\s*", "", text) if re.match(r"^\[\s*(question|task)\s*\]", text, re.I) else text
    text = text.strip().strip('"').strip()
    if len(text) < 3 or not any(ch.isalpha() for ch in text) or len(text) > max_chars:
        return None
    return text
