"""Packing efficiency: real tokens / tokens computed, FFD packing vs naive padding.

Tokenises a run's training data (the SDG output: knowledge_train/, skills_train/)
with the student's chat template, then counts, for the same rows:
  - naive padding: batches of --batch rows in data order, each padded to its longest row;
  - our packing: first-fit-decreasing bins of max_seq_len over a --window stream window,
    counted as fixed-size rows of max_seq_len (the static-shape worst case).
Usage: python bench/packing_efficiency.py [--data-dir runs/<name>/data] [--max-seq-len 512]
Without --data-dir it writes the tests' synthetic LAB-format data to a temp dir.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "train"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir")
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()

    from lab_ray.embedded_model import resolve_model
    from lab_ray.train.packing import pack_stream
    from lab_ray.train.tokenize import load_tokenizer, shift_targets, tokenize_conversation

    data = Path(a.data_dir) if a.data_dir else None
    if data is None:
        from datagen import write_run_data

        data = write_run_data(Path(tempfile.mkdtemp()) / "data", 300, 100, 300)
    tok = load_tokenizer(resolve_model("SmolLM2-135M-Instruct"))
    rows, dropped = [], 0
    for path in sorted(glob.glob(str(data / "*_train" / "*.jsonl"))):
        for line in open(path, encoding="utf-8"):
            r = json.loads(line)
            ids, labels = tokenize_conversation(tok, r["messages"])
            if len(ids) > a.max_seq_len:
                dropped += 1
                continue
            rows.append({"id": r["id"], "input_ids": ids, "targets": shift_targets(labels)})
    real = sum(len(r["input_ids"]) for r in rows)
    naive = 0
    for k in range(0, len(rows), a.batch):
        batch = rows[k:k + a.batch]
        naive += len(batch) * max(len(r["input_ids"]) for r in batch)
    bins = list(pack_stream(iter(rows), a.max_seq_len, a.window))
    packed = len(bins) * a.max_seq_len
    print(f"data={data} rows={len(rows)} dropped_over_length={dropped} real_tokens={real} "
          f"max_seq_len={a.max_seq_len} window={a.window} bins={len(bins)}")
    print(f"naive padding (batch {a.batch}, pad to longest): computed={naive}")
    print(f"FFD packing (fixed {a.max_seq_len}-token rows): computed={packed}")
    print(f"packing_efficiency={real / packed:.4f} naive_padding_efficiency={real / naive:.4f}")


if __name__ == "__main__":
    main()
