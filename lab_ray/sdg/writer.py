"""Durable outputs: atomic shards during generation, then the final dataset.

During generation every batch that has passed all stages is written as one
Parquet shard under `sdg/shards/`: to a `.tmp` name first, renamed when
complete, so a kill at any moment leaves either a whole shard or nothing
that is ever read. Each task has exactly one row (kept or dropped) in
exactly one shard, so the ids in the shards are the work already done.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lab_ray.sdg.stages import SCORE_COLUMNS
from lab_ray.storage import atomic_write_bytes, atomic_write_text
from lab_ray.training_data import TRAINING_DATASETS, dataset_for_branch

SHARD_GLOB = "part-*.parquet"


class ShardWriter:
    def __init__(self, shard_dir: str):
        self.dir = Path(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if len(batch):
            sink = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pandas(batch, preserve_index=False), sink)
            atomic_write_bytes(self.dir / f"part-{uuid.uuid4().hex}.parquet", sink.getvalue().to_pybytes(), fsync=True)
        summary = batch.groupby(["leaf", "status"]).size().reset_index(name="rows") if len(batch) else \
            pd.DataFrame({"leaf": pd.Series(dtype=str), "status": pd.Series(dtype=str), "rows": pd.Series(dtype=int)})
        return summary


def shard_files(shard_dir: Path) -> list[str]:
    return sorted(str(p) for p in Path(shard_dir).glob(SHARD_GLOB))


def done_ids(shard_dir: Path) -> set[str]:
    files = shard_files(shard_dir)
    if not files:
        return set()
    ids: set[str] = set()
    for f in files:  # only the id column is read
        ids.update(pq.read_table(f, columns=["id"]).column("id").to_pylist())
    return ids


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
        name = Path(data_dir) / phase / f"part-{uuid.uuid4().hex}.jsonl"
        lines, short = [], 0
        for r in part.sort_values("id").to_dict("records"):
            rec = message_record(r, long_words)
            short += rec["metadata"]["length"] == "short"
            lines.append(json.dumps(rec, ensure_ascii=False))
        atomic_write_text(name, "\n".join(lines) + "\n")
        counts.append({"phase": phase, "rows": len(lines), "short": short})
    return pd.DataFrame(counts, columns=["phase", "rows", "short"])
