"""Dedup within a leaf: exact (normalised text hash), then near-duplicates by
MinHash LSH (datasketch) over word 3-shingles of question + answer. The
first sample by id wins, so the result does not depend on arrival order."""

from __future__ import annotations

import hashlib
import re

import pandas as pd


def normalized(text: str) -> str:
    """The text dedup compares: casefolded, punctuation and repeated whitespace removed."""
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", str(text).casefold())).strip()


def _shingles(text: str, k: int = 3) -> set[str]:
    words = text.split()
    return {" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


def _texts(kept: pd.DataFrame) -> list[str]:
    return [normalized(f"{c if k == 'grounded' else ''} {q} {a}")
            for c, k, q, a in zip(kept["context"], kept["kind"], kept["question"], kept["answer"])]


SIGNATURE_COLUMNS = ["leaf", "id", "kind", "status", "context", "question", "answer"]


def signature_rows(batch: pd.DataFrame, num_perm: int):
    """The per-row half of dedup, for the kept rows of any batch: leaf, id, the
    normalised text's SHA-1 and its MinHash signature (bytes). Computed in bulk
    (permutations initialised once, update_batch per row): the same signatures
    as one MinHash.update per shingle."""
    import pyarrow as pa
    from datasketch import MinHash

    kept = batch[batch["status"] == "ok"]
    texts = _texts(kept)
    sigs = MinHash.generator(([s.encode() for s in _shingles(t)] for t in texts), num_perm=num_perm, seed=1)
    leaves = kept["leaf"].tolist() if "leaf" in kept else [""] * len(kept)
    return pa.table({"leaf": pa.array(leaves, pa.string()),
                     "id": pa.array(kept["id"].tolist(), pa.string()),
                     "digest": pa.array([hashlib.sha1(t.encode()).hexdigest() for t in texts], pa.string()),
                     "signature": pa.array([m.hashvalues.tobytes() for m in sigs], pa.binary())})


def duplicates(group: pd.DataFrame, near_threshold: float, num_perm: int):
    """The per-leaf half: signature rows of one leaf -> (id, reason) of its duplicates.

    Exact duplicates (same normalised text) first, then near-duplicates by
    MinHash LSH; the first sample by id wins, so the verdicts do not depend
    on arrival order."""
    import numpy as np
    import pyarrow as pa
    from datasketch import MinHash, MinHashLSH

    group = group.sort_values("id")
    base = MinHash(num_perm=num_perm, seed=1)
    seen: set[str] = set()
    lsh = MinHashLSH(threshold=near_threshold, num_perm=num_perm)
    ids, reasons = [], []
    for row_id, digest, sig in zip(group["id"], group["digest"], group["signature"]):
        if digest in seen:
            reason = "exact duplicate"
        else:
            mh = MinHash(seed=1, hashvalues=np.frombuffer(sig, dtype=base.hashvalues.dtype),
                         permutations=base.permutations, scheme=base.scheme)
            if lsh.query(mh):
                reason = "near duplicate"
            else:
                lsh.insert(row_id, mh)
                seen.add(digest)
                continue
        ids.append(row_id)
        reasons.append(reason)
    return pa.table({"id": pa.array(ids, pa.string()), "drop_detail": pa.array(reasons, pa.string())})


def mark_duplicates(batch: pd.DataFrame, dups: dict[str, str]) -> pd.DataFrame:
    """Marks the rows whose id is in dups (id -> reason) as dropped at stage `dedup`."""
    if not dups or not len(batch):
        return batch
    reason = batch["id"].map(dups)
    hit = reason.notna() & (batch["status"] == "ok")
    if hit.any():
        batch.loc[hit, ["status", "drop_stage", "drop_reason"]] = ["dropped", "dedup", "duplicate"]
        batch.loc[hit, "drop_detail"] = reason[hit]
    return batch


def dedup_leaf(group: pd.DataFrame, near_threshold: float, num_perm: int) -> pd.DataFrame:
    """Marks duplicates among the kept rows of one leaf as dropped at stage `dedup`."""
    group = group.sort_values("id").reset_index(drop=True)
    sigs = signature_rows(group, num_perm).to_pandas()
    dups = duplicates(sigs, near_threshold, num_perm).to_pandas()
    return mark_duplicates(group, dict(zip(dups["id"], dups["drop_detail"])))
