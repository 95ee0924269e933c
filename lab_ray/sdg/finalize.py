"""Finalize: shards -> deduplicated final data, samples, messages JSONL, recipe, stats.

Idempotent: everything is rebuilt from the complete shards of this plan and
swapped in whole (`.tmp` directories renamed over the old ones), so a rerun
or a resume after a crash in finalize gives the same outputs.
"""

from __future__ import annotations

import json
import uuid

import yaml

from lab_ray.errors import LabRayError
from lab_ray.sdg.dedup import SIGNATURE_COLUMNS, duplicates, mark_duplicates, signature_rows
from lab_ray.sdg.limits import task_pool
from lab_ray.sdg.mixing import plan_datasets
from lab_ray.sdg.stages import effective_fanout
from lab_ray.sdg.columns import token_columns
from lab_ray.sdg.stats import GROUP_KEYS, block_counts, funnel, sum_counts
from lab_ray.sdg.tasks import in_plan
from lab_ray.sdg.writer import parquet_bytes, parquet_columns, read_parquet, shard_files, write_jsonl
from lab_ray.storage import StoragePath, atomic_write_bytes, read_json, replace_dir, run_dir
from lab_ray.training_data import BRANCHES, TRAINING_DATASETS


def finalize(cfg, out: StoragePath) -> dict:
    """Dedup per leaf, write final/ + samples/ + data/ (messages JSONL, recipe, stats); returns the stats."""
    import ray

    out = StoragePath(out)
    files = shard_files(out / "shards")
    if not files:
        raise LabRayError(f"no generated shards under {out / 'shards'}")
    # The shards are read by our own tasks (one shard at a time), not by
    # read_parquet: its file listing and footer-reader actors are extra worker
    # processes, and the shards are few, complete files of one known schema.
    paths = ray.data.from_items([{"path": f} for f in files], override_num_blocks=max(1, min(len(files), 200)))
    plan = read_json(out / "plan.json")
    dups_ref = [ray.put(find_duplicates(cfg, paths, plan))]
    rdir = run_dir(cfg)
    final_tmp, samples_tmp, data_tmp = out / "final.tmp", rdir / "samples.tmp", rdir / "data.tmp"
    counts = write_outputs(cfg, paths, plan, dups_ref, final_tmp, samples_tmp, data_tmp)
    stats = funnel(sum_counts(counts["stats"]), effective_fanout(cfg.sdg))
    seconds = (read_json(out / "timing.json") or {}).get("generation_seconds")
    if seconds is not None:
        stats["total"]["seconds"] = round(seconds, 3)
    for name in TRAINING_DATASETS:
        (data_tmp / name).mkdir(parents=True, exist_ok=True)
    mixing = plan_datasets(cfg, data_tmp)  # per-leaf sampling of each training dataset, or None
    (data_tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe(cfg, counts["phases"], stats, mixing),
                                                         sort_keys=False))
    (data_tmp / "stats.json").write_text(json.dumps(stats, indent=1))
    replace_dir(final_tmp, out / "final")
    replace_dir(samples_tmp, rdir / "samples")
    replace_dir(data_tmp, rdir / "data")
    return stats


def find_duplicates(cfg, paths, plan: dict) -> dict[str, str]:
    """{id: why} of the rows dedup drops (exact, then MinHash near-duplicates, per leaf).

    Dedup works on signatures so that no full row is ever shuffled: a streaming
    pass computes each kept row's text digest and MinHash signature (~300
    bytes); only those are grouped by leaf, where the verdicts are made (first
    by id wins). Memory grows with the signatures, not with the rows (a
    groupby of the rows holds the whole dataset in the shuffle's aggregators).
    """
    dd = cfg.sdg.dedup
    if not dd.enabled:
        return {}
    ids = plan.get("ids")
    sigs = paths.map_batches(_shard_signatures, fn_args=(dd.num_perm, ids), batch_format="pandas",
                             batch_size=None, num_cpus=0.1, compute=task_pool())
    # One partition per leaf at most: fewer than the default 200 saves most of the shuffle's overhead.
    partitions = max(1, min(len(plan["leaves"]), 64))
    dups = sigs.groupby("leaf", num_partitions=partitions).map_groups(
        duplicates, fn_args=(dd.near_threshold, dd.num_perm), batch_format="pandas", num_cpus=0.1,
        compute=task_pool()).take_all()
    return {d["id"]: d["drop_detail"] for d in dups}


def write_outputs(cfg, paths, plan: dict, dups_ref, final_dir: StoragePath, samples_dir: StoragePath,
                  data_dir: StoragePath) -> dict:
    """One streaming pass over the shards writes every output of a block: the
    block with its duplicates marked (final/), its kept rows (samples/), their
    messages JSONL by training dataset (data/). Returns the blocks' small
    counts ({"phases": rows per dataset, "stats": rows and tokens per group});
    no output is read back."""
    for tmp in (final_dir, samples_dir, data_dir):
        tmp.rmtree()
    counts = paths.map_batches(
        _write_outputs, fn_args=(dups_ref, str(final_dir), str(samples_dir), str(data_dir),
                                 int(cfg.sdg.long_response_words), plan.get("ids")),
        batch_format="pandas", batch_size=None, num_cpus=0.1, compute=task_pool()).take_all()
    return {"phases": [c for r in counts for c in json.loads(r["phases"])],
            "stats": [c for r in counts for c in json.loads(r["stats"])]}


def recipe(cfg, phase_counts: list[dict], stats: dict, mixing: dict | None = None) -> dict:
    """What feeds each training dataset, with the counts actually written, and (with
    sdg.mixing rules) how many samples of each leaf training takes (lab_ray.sdg.mixing)."""
    out = {"taxonomy": str(cfg.taxonomy.path), "teacher": cfg.teacher.model, "phases": {}}
    for name in TRAINING_DATASETS:
        rows = [c for c in phase_counts if c["phase"] == name]
        n, short = sum(c["rows"] for c in rows), sum(c["short"] for c in rows)
        out["phases"][name] = {"path": f"data/{name}", "branches": BRANCHES[name], "samples": n,
                               "short": short, "long": n - short}
    out["leaves"] = {leaf: s["kept"] for leaf, s in stats["leaves"].items()}
    if mixing:
        out["mixing"] = mixing
    return out


def _write_parquet(df, directory: str) -> None:
    atomic_write_bytes(StoragePath(directory) / f"part-{uuid.uuid4().hex}.parquet", parquet_bytes(df))


def _planned_rows(path: str, plan: dict | None, columns: list[str] | None = None):
    """One shard's rows that are tasks of this plan (see tasks.in_plan); every row
    when plan.json has no ids (written by hand or by an older lab-ray)."""
    if plan is None:
        return read_parquet(path, columns).to_pandas()
    if columns is not None:
        names = set(parquet_columns(path))
        columns = [c for c in dict.fromkeys([*columns, "request_index"]) if c in names]
    df = read_parquet(path, columns).to_pandas()
    keep = in_plan(df, plan)
    return df if all(keep) else df[keep].reset_index(drop=True)


def _shard_signatures(paths, num_perm: int, plan: dict | None):
    import pyarrow as pa

    return pa.concat_tables([signature_rows(_planned_rows(p, plan, SIGNATURE_COLUMNS), num_perm)
                             for p in paths["path"]])


def _write_outputs(paths, dups_ref, final_dir: str, samples_dir: str, data_dir: str, long_words: int,
                   plan: dict | None):
    """Shards -> final/samples/JSONL files and their counts (a finalize task)."""
    import pandas as pd
    import ray

    dups = ray.get(dups_ref[0])
    out = [_write_shard_outputs(_planned_rows(p, plan), dups, final_dir, samples_dir, data_dir, long_words)
           for p in paths["path"]]
    return pd.concat(out, ignore_index=True)


def _write_shard_outputs(batch, dups, final_dir: str, samples_dir: str, data_dir: str, long_words: int):
    """One shard: mark duplicates, write final/samples/JSONL, return the shard's counts."""
    import pandas as pd

    batch = mark_duplicates(batch, dups)
    phases, stats = [], []
    if len(batch):
        _write_parquet(batch, final_dir)
        kept = batch[batch["status"] == "ok"]
        if len(kept):
            _write_parquet(kept, samples_dir)
            phases = write_jsonl(kept, data_dir, long_words).to_dict("records")
        cols = [c for c in (*GROUP_KEYS, "item_path") if c in batch.columns] + token_columns(batch.columns)
        stats = block_counts(batch[cols]).to_dict("records")
    return pd.DataFrame({"phases": [json.dumps(phases, default=int)], "stats": [json.dumps(stats, default=int)]})
