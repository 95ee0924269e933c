"""Token-aware chunking of knowledge documents, with overlap.

Chunks are cut on the teacher's own tokenizer (so a chunk of N tokens is N
tokens to the teacher), then moved back to the nearest paragraph or sentence
break so a chunk does not start or end mid-sentence where that is possible.
"""

from __future__ import annotations

import bisect
import re


def chunk_text(text: str, tokenizer, chunk_tokens: int, overlap: int) -> list[str]:
    text = re.sub(r"\n{3,}", "\n\n", text.strip())
    if not text:
        return []
    if tokenizer is None:  # whitespace tokens: only for tests without a tokenizer
        words = text.split()
        step = max(1, chunk_tokens - overlap)
        return [" ".join(words[i:i + chunk_tokens]) for i in range(0, max(1, len(words) - overlap), step)]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= chunk_tokens:
        return [text]
    ends = [e for _, e in offsets]
    chunks, start_tok = [], 0
    while start_tok < len(offsets):
        end_tok = min(start_tok + chunk_tokens, len(offsets))
        start_char, end_char = offsets[start_tok][0], offsets[end_tok - 1][1]
        if end_tok < len(offsets):
            window = text[start_char:end_char]
            cut = max(window.rfind("\n\n"), window.rfind(". "))
            if cut > len(window) // 2:
                end_char = start_char + cut + 1
                # the chunk now ends at the last token inside the snapped end
                end_tok = max(start_tok + 1, bisect.bisect_right(ends, end_char))
        chunks.append(text[start_char:end_char].strip())
        if end_tok >= len(offsets):
            break
        # The next chunk starts `overlap` tokens before this one's (snapped)
        # end, so every token of the document is in some chunk.
        start_tok = max(start_tok + 1, end_tok - overlap)
    return [c for c in chunks if c]
