"""Durable outputs: atomic shards during generation, then the final dataset.

During generation every batch that has passed all stages is written as one
Parquet shard under `sdg/shards/` of the run's storage (local or an object
store), atomically (lab_ray.storage), so a kill at any moment leaves either
a whole shard or nothing that is ever read. Every row (kept or dropped) is in exactly one shard;
a task is done when all its rows are stored (one row, or every child of a fan-out: see
tasks.task_shares), so the shards say what work is already done.
"""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lab_ray.sdg.stages import SCORE_COLUMNS
from lab_ray.storage import StoragePath, atomic_write_bytes, atomic_write_text
from lab_ray.training_data import TRAINING_DATASETS, dataset_for_branch

SHARD_GLOB = "part-*.parquet"


class ShardWriter:
    def __init__(self, shard_dir: str):
        self.dir = StoragePath(shard_dir)
        self.dir.mkdir()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if len(batch):
            atomic_write_bytes(self.dir / f"part-{uuid.uuid4().hex}.parquet", parquet_bytes(batch), fsync=True)
        summary = batch.groupby(["leaf", "status"]).size().reset_index(name="rows") if len(batch) else \
            pd.DataFrame({"leaf": pd.Series(dtype=str), "status": pd.Series(dtype=str), "rows": pd.Series(dtype=int)})
        return summary


def shard_files(shard_dir) -> list[str]:
    return [str(p) for p in StoragePath(shard_dir).glob(SHARD_GLOB)]


def read_parquet(location: str, columns: list[str] | None = None) -> pa.Table:
    p = StoragePath(location)
    return pq.read_table(p.path, filesystem=p.fs, columns=columns)


def parquet_columns(location: str) -> list[str]:
    p = StoragePath(location)
    return pq.read_schema(p.path, filesystem=p.fs).names


def parquet_bytes(df: pd.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), sink)
    return sink.getvalue().to_pybytes()


RESUME_COLUMNS = ("leaf", "id", "task_id", "item_path")


def stored_rows(shard_dir):
    """Per complete shard, the columns that say which task each stored row belongs to (shards
    written before fan-out existed have no task_id / item_path: every row is its own task)."""
    for f in shard_files(shard_dir):
        names = set(parquet_columns(f))
        yield read_parquet(f, [c for c in RESUME_COLUMNS if c in names]).to_pandas()


def message_record(r: dict, long_words: int) -> dict:
    """One InstructLab messages row: {"id", "messages", "metadata"}."""
    context = r.get("context") or ""
    user = r["question"] if r["kind"] == "knowledge" or not context else f"{context}\n\n{r['question']}"
    words = len(str(r["answer"]).split())
    scores = {k: (None if pd.isna(r[k]) else float(r[k])) for k in SCORE_COLUMNS}
    meta = {"leaf": r["leaf"], "branch": r["branch"], "kind": r["kind"],
            "length": "long" if words > long_words else "short", "answer_words": words,
            "scores": {k: v for k, v in scores.items() if v is not None}}
    if r["kind"] == "knowledge":
        meta["chunk"] = context
        meta["chunk_index"] = int(r["chunk_index"])
        if r.get("view"):  # knowledge augmentation: the view of the chunk the Q/A came from
            meta["view"] = r["view"]
    return {"id": r["id"], "messages": [{"role": "user", "content": user},
                                         {"role": "assistant", "content": r["answer"]}], "metadata": meta}


def write_jsonl(batch: pd.DataFrame, data_dir: str, long_words: int) -> pd.DataFrame:
    """Writes kept rows as messages JSONL shards, split by training dataset (a Ray Data task)."""
    counts = []
    dataset = batch["branch"].map(dataset_for_branch)
    for phase in TRAINING_DATASETS:
        part = batch[dataset == phase]
        if not len(part):
            continue
        name = StoragePath(data_dir) / phase / f"part-{uuid.uuid4().hex}.jsonl"
        lines, short = [], 0
        for r in part.sort_values("id").to_dict("records"):
            rec = message_record(r, long_words)
            short += rec["metadata"]["length"] == "short"
            lines.append(json.dumps(rec, ensure_ascii=False))
        atomic_write_text(name, "\n".join(lines) + "\n")
        counts.append({"phase": phase, "rows": len(lines), "short": short})
    return pd.DataFrame(counts, columns=["phase", "rows", "short"])
