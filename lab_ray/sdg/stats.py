"""Stats: per leaf and stage, rows in, kept, dropped by reason, teacher tokens.

Finalize tasks count each block (`block_counts`); the driver sums the small
counts (`sum_counts`) and turns them into the funnel (`funnel`) that
stats.json, the CLI table and the report show.
"""

from __future__ import annotations

import time

import pandas as pd

from lab_ray.sdg.columns import token_columns
from lab_ray.sdg.stages import stage_order

GROUP_KEYS = ("leaf", "kind", "status", "drop_stage", "drop_reason", "depth")
TOTALS = ("prompt_tokens", "completion_tokens", "cached_prompt_tokens")  # a row's tokens over all stages


def fanout_depth(item_path: pd.Series) -> pd.Series:
    """Fan-outs a row went through: 0 for a task row, 1 for "2", 2 for "0.3"."""
    path = item_path.fillna("").astype(str)
    return (path.str.count(r"\.") + 1).where(path != "", 0)


def block_counts(batch: pd.DataFrame) -> pd.DataFrame:
    """Rows and teacher tokens (totals and per stage) per (leaf, kind, status, drop stage, drop
    reason, fan-out depth) of one block."""
    tokens = token_columns(batch.columns)
    if not len(batch):
        return pd.DataFrame({k: [] for k in (*GROUP_KEYS, "rows", *tokens)})
    batch = batch.assign(depth=fanout_depth(batch["item_path"]) if "item_path" in batch else 0)
    g = batch.groupby(list(GROUP_KEYS), dropna=False, sort=False)
    return g.agg(rows=("status", "size"), **{c: (c, "sum") for c in tokens}).reset_index()


def sum_counts(partial: list[dict]) -> list[dict]:
    """Block counts summed per group (a count a block lacks counts 0: shards written before a
    column existed)."""
    totals: dict[tuple, dict[str, int]] = {}
    for r in partial:
        t = totals.setdefault(tuple(r[k] for k in GROUP_KEYS), {})
        for k, v in r.items():
            if k not in GROUP_KEYS:
                t[k] = t.get(k, 0) + int(v or 0)
    return [{**dict(zip(GROUP_KEYS, k)), "rows": 0, **dict.fromkeys(TOTALS, 0), **v}
            for k, v in sorted(totals.items(), key=lambda kv: tuple(str(x) for x in kv[0]))]


def stage_tokens(group: dict) -> dict[str, list[int]]:
    """stage -> [prompt, completion] tokens of one counted group."""
    out: dict[str, list[int]] = {}
    for k, v in group.items():
        for i, part in enumerate(("_prompt_tokens", "_completion_tokens")):
            if k.endswith(part) and k not in TOTALS and v:
                out.setdefault(k[: -len(part)], [0, 0])[i] += int(v)
    return out


def funnel(groups: list[dict], fanout: dict | None = None) -> dict:
    """Per leaf and stage: rows in, kept, dropped by reason, teacher tokens; tokens per leaf.

    Counts are in rows at that stage: a fan-out stage of width n takes `in` rows and makes
    n of each live one, so (in - rows it dropped whole) x n = kept + children it dropped.
    A row records its fan-out depth, so whole-row and child drops are told apart."""
    leaves: dict[str, dict] = {}
    for g in groups:
        leaf = leaves.setdefault(g["leaf"], {"kind": g["kind"], "rows": 0, "kept": 0, "dropped": {},
                                             **dict.fromkeys(TOTALS, 0), "_by_stage": {},
                                             "_tokens": {}})
        n = int(g["rows"])
        leaf["rows"] += n
        leaf["prompt_tokens"] += int(g["prompt_tokens"] or 0)
        leaf["completion_tokens"] += int(g["completion_tokens"] or 0)
        leaf["cached_prompt_tokens"] += int(g.get("cached_prompt_tokens") or 0)
        for stage, (p, c) in stage_tokens(g).items():
            t = leaf["_tokens"].setdefault(stage, [0, 0])
            t[0], t[1] = t[0] + p, t[1] + c
        if g["status"] == "ok":
            leaf["kept"] += n
        else:
            leaf["dropped"][g["drop_reason"]] = leaf["dropped"].get(g["drop_reason"], 0) + n
            by = leaf["_by_stage"].setdefault((g["drop_stage"], int(g.get("depth") or 0)), {})
            by[g["drop_reason"]] = by.get(g["drop_reason"], 0) + n
    for leaf in leaves.values():
        leaf["stages"] = _stage_counts(leaf["kind"], leaf["_by_stage"], leaf["rows"], fanout)
        for s in leaf["stages"]:  # the teacher tokens each stage spent on the leaf's rows
            s["prompt_tokens"], s["completion_tokens"] = leaf["_tokens"].get(s["stage"], [0, 0])
        del leaf["_by_stage"], leaf["_tokens"]
    total = {k: sum(v[k] for v in leaves.values()) for k in ("rows", "kept", *TOTALS)}
    reasons: dict[str, int] = {}
    for v in leaves.values():
        for r, n in v["dropped"].items():
            reasons[r] = reasons.get(r, 0) + n
    total["dropped"] = reasons
    return {"leaves": dict(sorted(leaves.items())), "total": total, "written_at": time.time()}


def _stage_counts(kind: str, by_stage: dict, rows: int, fanout: dict | None) -> list[dict]:
    """Walk the stages backwards from the final rows: rows into a stage = rows out of it plus
    what it dropped; before a fan-out of width n, (rows out + children dropped) / n parents
    were expanded, plus the parents it dropped whole."""
    from lab_ray.sdg.stages import fanout_width

    order = stage_order(kind, fanout)
    depth = sum(fanout_width(s, fanout) > 1 for s in order)
    out, stages = rows - sum(sum(d.values()) for d in by_stage.values()), []
    for stage in reversed(order):
        w = fanout_width(stage, fanout)
        if w > 1:
            children = by_stage.get((stage, depth), {})
            whole = by_stage.get((stage, depth - 1), {})
            made = out + sum(children.values())
            into = made // w + sum(whole.values())
            dropped = _add(children, whole)
            stages.append({"stage": stage, "in": into, "kept": out, "dropped": dropped, "fanout": w})
            depth -= 1
        else:
            dropped = by_stage.get((stage, depth), {})
            into = out + sum(dropped.values())
            stages.append({"stage": stage, "in": into, "kept": out, "dropped": dropped})
        out = into
    return stages[::-1]


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out
