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
    kept = group[group["status"] == "ok"]
    texts = [_norm(f"{c if k == 'grounded' else ''} {q} {a}")
             for c, k, q, a in zip(kept["context"], kept["kind"], kept["question"], kept["answer"])]
    # One MinHash per row, computed in bulk (permutations initialised once,
    # update_batch per row): the same signatures as one update per shingle.
    signatures = MinHash.generator(([s.encode() for s in _shingles(t)] for t in texts), num_perm=num_perm, seed=1)
    seen: set[str] = set()
    lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
    dups, details = [], []
    for i, text, mh in zip(kept.index, texts, signatures):
        digest = hashlib.sha1(text.encode()).hexdigest()
        if digest in seen:
            reason = "exact duplicate"
        elif lsh.query(mh):
            reason = "near duplicate"
        else:
            lsh.insert(str(i), mh)
            seen.add(digest)
            continue
        dups.append(i)
        details.append(reason)
    if dups:
        group.loc[dups, ["status", "drop_stage", "drop_reason"]] = ["dropped", "dedup", "duplicate"]
        group.loc[dups, "drop_detail"] = details
    return group
