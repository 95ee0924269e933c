"""Training metrics: JSONL in the run directory.

Ray Train V2 calls `MetricsCallback.after_report` on its controller (beside
the driver) with every worker's reported metrics; rank 0's go to
`train/metrics.jsonl` with the checkpoint path, if any. The driver tails that
file for its progress display (train/progress.py), so it never slows the workers.
"""

from __future__ import annotations

import json
import time

from ray.train import UserCallback


def append(path, record: dict) -> None:
    """One JSON line more. An object store has no append: the file is rewritten whole
    (metrics files are small: a line per step)."""
    from lab_ray.storage import StoragePath

    p = StoragePath(path)
    line = json.dumps(record, default=str) + "\n"
    if p.is_local:
        with open(p.local_path(), "a", encoding="utf-8") as f:
            f.write(line)
    else:
        p.write_text((p.read_text() if p.is_file() else "") + line)


def read(path) -> list[dict]:
    from lab_ray.storage import StoragePath

    p = StoragePath(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            continue
    return out


class MetricsCallback(UserCallback):
    def __init__(self, path: str):
        self.path = path

    def after_report(self, run_context, metrics, checkpoint):
        rec = dict(metrics[0]) if metrics else {}
        rec["event"] = "step" if not rec.get("final") else "final"
        rec["time"] = time.time()
        if checkpoint is not None:
            rec["checkpoint"] = checkpoint.path
        append(self.path, rec)
