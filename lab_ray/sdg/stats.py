"""Stats: per leaf and stage, rows in, kept, dropped by reason, teacher tokens.

Finalize tasks count each block (`block_counts`); the driver sums the small
counts (`sum_counts`) and turns them into the funnel (`funnel`) that
stats.json, the CLI table and the report show.
"""

from __future__ import annotations

import time

import pandas as pd

from lab_ray.sdg.stages import stage_order

GROUP_KEYS = ("leaf", "kind", "status", "drop_stage", "drop_reason")
COUNT_KEYS = ("rows", "prompt_tokens", "completion_tokens")


def block_counts(batch: pd.DataFrame) -> pd.DataFrame:
    """Rows and teacher tokens per (leaf, kind, status, drop stage, drop reason) of one block."""
    if not len(batch):
        return pd.DataFrame({k: [] for k in (*GROUP_KEYS, *COUNT_KEYS)})
    g = batch.groupby(list(GROUP_KEYS), dropna=False, sort=False)
    return g.agg(rows=("status", "size"), prompt_tokens=("prompt_tokens", "sum"),
                 completion_tokens=("completion_tokens", "sum")).reset_index()


def sum_counts(partial: list[dict]) -> list[dict]:
    """Block counts summed per group."""
    totals: dict[tuple, list[int]] = {}
    for r in partial:
        t = totals.setdefault(tuple(r[k] for k in GROUP_KEYS), [0] * len(COUNT_KEYS))
        for i, k in enumerate(COUNT_KEYS):
            t[i] += int(r[k] or 0)
    return [{**dict(zip(GROUP_KEYS, k)), **dict(zip(COUNT_KEYS, v))}
            for k, v in sorted(totals.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]


def funnel(groups: list[dict]) -> dict:
    """Per leaf and stage: rows in, kept, dropped by reason; tokens per leaf."""
    leaves: dict[str, dict] = {}
    for g in groups:
        leaf = leaves.setdefault(g["leaf"], {"kind": g["kind"], "rows": 0, "kept": 0, "dropped": {},
                                             "prompt_tokens": 0, "completion_tokens": 0, "_by_stage": {}})
        n = int(g["rows"])
        leaf["rows"] += n
        leaf["prompt_tokens"] += int(g["prompt_tokens"] or 0)
        leaf["completion_tokens"] += int(g["completion_tokens"] or 0)
        if g["status"] == "ok":
            leaf["kept"] += n
        else:
            leaf["dropped"][g["drop_reason"]] = leaf["dropped"].get(g["drop_reason"], 0) + n
            by = leaf["_by_stage"].setdefault(g["drop_stage"], {})
            by[g["drop_reason"]] = by.get(g["drop_reason"], 0) + n
    for leaf in leaves.values():
        remaining, stages = leaf["rows"], []
        for stage in stage_order(leaf["kind"]):
            dropped = leaf["_by_stage"].get(stage, {})
            d = sum(dropped.values())
            stages.append({"stage": stage, "in": remaining, "kept": remaining - d, "dropped": dropped})
            remaining -= d
        leaf["stages"] = stages
        del leaf["_by_stage"]
    total = {k: sum(v[k] for v in leaves.values()) for k in ("rows", "kept", "prompt_tokens", "completion_tokens")}
    reasons: dict[str, int] = {}
    for v in leaves.values():
        for r, n in v["dropped"].items():
            reasons[r] = reasons.get(r, 0) + n
    total["dropped"] = reasons
    return {"leaves": dict(sorted(leaves.items())), "total": total, "written_at": time.time()}
