"""Dedup within a leaf: exact (normalised text hash), then near-duplicates by
MinHash LSH (datasketch) over word 3-shingles of question + answer. The
first sample by id wins, so the result does not depend on arrival order."""

from __future__ import annotations

import hashlib
import re

import pandas as pd


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", str(text).casefold())).strip()


def _shingles(text: str, k: int = 3) -> set[str]:
    words = text.split()
    return {" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


def dedup_leaf(group: pd.DataFrame, near_threshold: float, num_perm: int) -> pd.DataFrame:
    """Marks duplicates among the kept rows of one leaf as dropped at stage `dedup`."""
    from datasketch import MinHash, MinHashLSH

    group = group.sort_values("id").reset_index(drop=True)
    kept_mask = group["status"] == "ok"
    seen: set[str] = set()
    lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
    for i in group.index[kept_mask]:
        text = _norm(f"{group.at[i, 'context'] if group.at[i, 'kind'] == 'grounded' else ''} "
                     f"{group.at[i, 'question']} {group.at[i, 'answer']}")
        digest = hashlib.sha1(text.encode()).hexdigest()
        reason = None
        if digest in seen:
            reason = "exact duplicate"
        else:
            mh = MinHash(num_perm=num_perm, seed=1)
            for s in _shingles(text):
                mh.update(s.encode())
            if lsh.query(mh):
                reason = "near duplicate"
            else:
                lsh.insert(str(i), mh)
                seen.add(digest)
        if reason:
            group.loc[i, ["status", "drop_stage", "drop_reason", "drop_detail"]] = \
                ["dropped", "dedup", "duplicate", reason]
    return group
