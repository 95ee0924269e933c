"""Training progress: per phase, step / total, loss, learning rate, tokens/s, ETA and
the checkpoint just written; what selection scores and how long it takes.

The workers already report every step through `ray.train.report`; Ray Train
hands those to `metrics.MetricsCallback` on its controller, which appends
them to `train/metrics.jsonl`. The driver tails that file (new complete lines
only) from a thread, so progress never slows the workers, and shows it as a
rich live table on a terminal or one plain line per event otherwise (logs,
Ray Jobs). `train/progress.json` (pid, host, phase, step, last error) is
rewritten on every event for `lab-ray status`.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from lab_ray.durations import hms as _hms
from lab_ray.storage import StoragePath, atomic_write_json

PROGRESS_FILE = "progress.json"  # under the run's train/ directory



class MetricsTail:
    """New complete JSON lines of a growing file (a line cut mid-write waits for its end).
    The file may be in an object store (lab_ray.storage): then it is read whole each
    time (a metrics file is small) and the offset skips what was seen."""

    def __init__(self, path, from_end: bool = True):
        self.path = StoragePath(path)
        self.offset = 0
        self.offset = len(self._new_bytes()) if from_end else 0

    def _new_bytes(self) -> bytes:
        """The file's bytes past the offset (a local file is read from there on)."""
        if not self.path.is_file():
            return b""
        if self.path.is_local:
            with open(self.path.local_path(), "rb") as f:
                f.seek(self.offset)
                return f.read()
        return self.path.read_bytes()[self.offset:]

    def read(self) -> list[dict]:
        data = self._new_bytes()
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in data[:end].splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def step_line(r: dict, eta_s: float | None) -> str:
    line = (f"train {r['phase']} step {r['step']}/{r['total_steps']} | loss {r['loss']:.4f} | lr {r['lr']:.2e} | "
            f"{r['tokens_per_s']:.0f} tokens/s | {r.get('step_s', 0):.1f} s/step | ETA {_hms(eta_s)}")
    if r.get("checkpoint"):
        line += f" | checkpoint {r['checkpoint']}"
    return line


class TrainProgress:
    """Driver side of training progress (a context manager around the phases)."""

    def __init__(self, tdir, live: bool = True, stream=None, tty: bool | None = None,
                 poll_s: float = 1.0):
        self.tdir = StoragePath(tdir)
        self.stream = stream or sys.stdout
        self.tty = (self.stream.isatty() if tty is None else tty) and live and not os.environ.get("CI")
        self.poll_s = poll_s
        self.tail = MetricsTail(self.tdir / "metrics.jsonl")
        self.latest: dict[str, dict] = {}
        self.step_times: dict[str, list[float]] = {}
        self.selecting: dict[str, dict] = {}
        self.state = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.time(), "interval_s": poll_s, "phase": None, "step": 0,
                      "total_steps": None, "error": None}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None
        self._lock = threading.Lock()

    # -- output -------------------------------------------------------------------
    def _print(self, text: str) -> None:
        if self._live is not None:
            self._live.console.print(text, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def announce(self, text: str) -> None:
        """A message between steps (a phase starting, a selection)."""
        with self._lock:
            self._print(f"train: {text}")
            self._save()

    def _save(self) -> None:
        self.state["updated"] = time.time()
        try:
            atomic_write_json(self.tdir / PROGRESS_FILE, self.state, indent=None)
        except OSError:
            pass

    def eta(self, r: dict) -> float | None:
        times = self.step_times.get(r["phase"], [])
        if not times:
            return None
        recent = times[-10:]
        return (int(r["total_steps"]) - int(r["step"])) * sum(recent) / len(recent)

    def handle(self, r: dict) -> None:
        ev = r.get("event")
        if ev == "step" and "loss" in r:
            self.step_times.setdefault(r["phase"], []).append(float(r.get("step_s", 0.0)))
            self.latest[r["phase"]] = {**r, "eta_s": self.eta(r),
                                       "checkpoint": r.get("checkpoint") or
                                       self.latest.get(r["phase"], {}).get("checkpoint")}
            self.state.update(phase=r["phase"], step=r["step"], total_steps=r["total_steps"])
            if self._live is None:
                self._print(step_line(r, self.eta(r)))
        elif ev == "final":
            ck = f", checkpoint {r['checkpoint']}" if r.get("checkpoint") else ""
            self._print(f"train {r['phase']}: finished at step {r.get('step')}/{r.get('total_steps')}{ck}")
        elif ev == "phase_start":
            self.state.update(phase=r["phase"], step=0, total_steps=r.get("total_steps"))
            self._print(f"train {r['phase']}: {r.get('total_steps')} steps on {r.get('workers')} workers, "
                        f"{r.get('rows')} training rows")
        elif ev == "select":
            self.selecting[r["group"]] = r
            self._print(f"train: select {r['group']}: scoring {r.get('candidates')} checkpoints with "
                        f"{', '.join(r.get('scorers', []))} ({r.get('metric')})")
        elif ev == "score":
            started = self.selecting.get(r.get("group"), {}).get("time")
            took = f" after {r['time'] - started:.0f} s" if started and r.get("time") else ""
            metric = self.selecting.get(r.get("group"), {}).get("metric")
            value = f" {metric} {r[metric]:.4f}" if metric in r and isinstance(r[metric], (int, float)) else ""
            mark = " <- selected" if r.get("selected") else ""
            self._print(f"train: select {r.get('group')}{took}: {r.get('checkpoint')}{value}{mark}")
        elif ev == "phase":
            self._print(f"train {r['phase']}: {r.get('status')} in {_hms(r.get('wall_s'))}")

    def poll(self) -> None:
        records = self.tail.read()
        if not records:
            return
        with self._lock:
            for r in records:
                self.handle(r)
            self._save()
            if self._live is not None:
                self._live.update(self.table())

    def table(self):
        from rich.table import Table

        t = Table(title="lab-ray train", title_justify="left")
        for c in ("phase", "step", "loss", "lr", "tokens/s", "ETA", "last checkpoint"):
            t.add_column(c, justify="left" if c in ("phase", "last checkpoint") else "right")
        for ph, r in self.latest.items():
            t.add_row(ph, f"{r['step']}/{r['total_steps']}", f"{r['loss']:.4f}", f"{r['lr']:.2e}",
                      f"{r['tokens_per_s']:.0f}", _hms(r.get("eta_s")), Path(r.get("checkpoint") or "-").name)
        return t

    # -- lifecycle ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def __enter__(self):
        self._save()
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self.table(), console=Console(file=self.stream), refresh_per_second=1)
            self._live.__enter__()
        self._thread = threading.Thread(target=self._run, name="train-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.poll()
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
        self.state["state"] = "failed" if exc_type else "done"
        if exc_type:
            self.state["error"] = f"{exc_type.__name__}: {exc}"[:1000]
        self._save()
        return False
