"""Training metrics: JSONL in the run directory, and a live view of it.

Ray Train V2 calls `MetricsCallback.after_report` on its controller (beside
the driver) with every worker's reported metrics; rank 0's go to
`train/metrics.jsonl` with the checkpoint path, if any. The driver tails that
file for the live display, so the display never slows the workers.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ray.train import UserCallback


def append(path: Path | str, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")


def read(path: Path | str) -> list[dict]:
    p = Path(path)
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


class LiveView:
    """Rich live table of the latest step per phase (disabled when CI is set or live=False)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled and not os.environ.get("CI")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _table(self):
        from rich.table import Table

        latest: dict[str, dict] = {}
        for r in read(self.path):
            if r.get("event") == "step":
                latest[r["phase"]] = r
        t = Table(title="lab-ray train")
        for c in ("phase", "step", "loss", "lr", "tokens/s", "real-token frac"):
            t.add_column(c, justify="left" if c == "phase" else "right")
        for ph, r in latest.items():
            t.add_row(ph, f"{r['step']}/{r['total_steps']}", f"{r['loss']:.4f}", f"{r['lr']:.2e}",
                      f"{r['tokens_per_s']:.0f}", f"{r['real_token_fraction']:.3f}")
        return t

    def _run(self):
        from rich.live import Live

        with Live(self._table(), refresh_per_second=1, transient=False) as live:
            while not self._stop.wait(1.0):
                live.update(self._table())
            live.update(self._table())

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
