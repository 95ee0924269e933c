"""Generation progress: what every stage has done, what is left, and when it ends.

Counting never touches a row in the driver:

- Each stage actor counts its own batches (rows in, kept, dropped by reason,
  teacher tokens, retries, requests in flight) and sends the sums to one
  small Ray actor (`ProgressCounter`, 0 CPUs, anywhere in the cluster) at
  most every `flush_s` seconds, from a thread of the stage actor. That is a
  handful of tiny calls per second at any scale, and it works wherever the
  stage actors run (no shared files).
- The shard writer returns per-batch block counts (`stats.block_counts`:
  leaf x status x drop reason) instead of rows; the driver's Ray Data loop
  adds those small frames up. They are exact, so the finished rows and the
  kept rows per leaf reach the final totals.

The driver renders a snapshot every `sdg.progress_interval_s`: a rich live
table on a terminal, one plain line otherwise (logs, `ray job submit`), and
writes it to `sdg/progress.json` so `lab-ray status` can answer from another
shell while the run goes and after it died.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Any

import pandas as pd

from lab_ray.durations import hms as _hms
from lab_ray.sdg.stats import GROUP_KEYS, block_counts, funnel
from lab_ray.sdg.stages import effective_fanout, stage_kinds, stages_for
from lab_ray.sdg.tasks import quota_rows
from lab_ray.sdg.writer import shard_files
from lab_ray.storage import StoragePath, atomic_write_json

PROGRESS_FILE = "progress.json"  # under the run's sdg/ directory


# -- counting inside the stage actors ------------------------------------------
def _empty_stage() -> dict:
    return {"in": 0, "kept": 0, "dropped": {}, "prompt_tokens": 0, "completion_tokens": 0, "retries": 0}


def _merge(into: dict, delta: dict) -> None:
    for k, v in delta.items():
        if k == "dropped":
            for reason, n in v.items():
                into["dropped"][reason] = into["dropped"].get(reason, 0) + n
        else:
            into[k] = into.get(k, 0) + v


class StageCounter:
    """Per stage actor: sums batches locally, sends them every `flush_s` (never per row)."""

    def __init__(self, stage: str, sink, flush_s: float):
        self.stage, self.sink, self.flush_s = stage, sink, flush_s
        self.key = f"{stage}/{os.getpid()}/{id(self)}"
        self.pending = _empty_stage()
        self.in_flight = 0
        self.dirty = False
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self, n: int) -> None:
        with self.lock:
            self.in_flight += n
            self.dirty = True
        if self.thread is None:  # lazily: the actor is built by Ray Data, the thread lives with it
            self.thread = threading.Thread(target=self._loop, name=f"progress-{self.stage}", daemon=True)
            self.thread.start()

    def finish(self, n: int, delta: dict) -> None:
        with self.lock:
            self.in_flight -= n
            _merge(self.pending, delta)
            self.dirty = True

    def flush(self) -> None:
        with self.lock:
            if not self.dirty:
                return
            delta, in_flight = self.pending, self.in_flight
            self.pending, self.dirty = _empty_stage(), False
        try:
            self.sink.add.remote(self.stage, self.key, delta, in_flight)  # fire and forget
        except Exception:  # noqa: BLE001 - progress never fails a run
            pass

    def _loop(self) -> None:
        while True:
            time.sleep(self.flush_s)
            self.flush()


def batch_delta(stage: str, before: pd.DataFrame, out: pd.DataFrame, n_live: int) -> dict:
    """What one stage did to one batch (whole-column operations, no per-row Python)."""
    here = out[(out["status"] == "dropped") & (out["drop_stage"] == stage)]
    dropped = {str(k): int(v) for k, v in here["drop_reason"].value_counts().items()}

    def tokens(df, col):
        return int(df[col].sum()) if col in df.columns else 0

    # Kept: the rows of the stage's kinds still ok after it (a fan-out stage makes several of one).
    kinds = stage_kinds(stage)
    kept = int(((out["status"] == "ok") & out["kind"].isin(kinds)).sum()) if kinds else n_live - len(here)
    return {"in": n_live, "kept": kept, "dropped": dropped,
            "prompt_tokens": tokens(out, "prompt_tokens") - tokens(before, "prompt_tokens"),
            "completion_tokens": tokens(out, "completion_tokens") - tokens(before, "completion_tokens")}


def counted(stage_cls, sink, flush_s: float = 0.5):
    """`stage_cls` whose batches are counted into `sink` (a ProgressCounter handle)."""

    class Counted(stage_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._counter = StageCounter(stage_cls.stage, sink, flush_s)

        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            status = batch["status"] if "status" in batch.columns else pd.Series("ok", index=batch.index)
            n_live = int(((status == "ok") & batch["kind"].isin(self.kinds)).sum())
            usage = getattr(self.teacher, "usage", None)
            retries = getattr(usage, "retries", 0)
            self._counter.start(n_live)
            out = None
            try:
                out = super().__call__(batch)
            finally:
                delta = batch_delta(stage_cls.stage, batch, out, n_live) if out is not None else {}
                if usage is not None:
                    delta["retries"] = getattr(usage, "retries", 0) - retries
                self._counter.finish(n_live, delta)
            return out

    Counted.__name__ = Counted.__qualname__ = stage_cls.__name__  # Ray Data names its operators after it
    return Counted


def counted_writer(writer_cls):
    """`writer_cls` that returns the block counts of what it stored (for the driver's totals)."""

    class CountedWriter(writer_cls):
        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            super().__call__(batch)
            return block_counts(batch)

    CountedWriter.__name__ = CountedWriter.__qualname__ = writer_cls.__name__
    return CountedWriter


class ProgressCounterImpl:
    """The sums of every stage actor's counts (a Ray actor: `ProgressCounter`)."""

    def __init__(self):
        self.stages: dict[str, dict] = {}
        self.in_flight: dict[str, tuple[str, int]] = {}

    def add(self, stage: str, key: str, delta: dict, in_flight: int) -> None:
        _merge(self.stages.setdefault(stage, _empty_stage()), delta)
        self.in_flight[key] = (stage, in_flight)

    def snapshot(self) -> dict:
        flight: dict[str, int] = {}
        for stage, n in self.in_flight.values():
            flight[stage] = flight.get(stage, 0) + n
        return {"stages": self.stages, "in_flight": flight}


# -- the driver's view -----------------------------------------------------------

class GenerationProgress:
    """Driver side: start the counter actor, wrap the stages, render and save snapshots.

    Used by `sdg.run.generate_shards`:

        progress = GenerationProgress(cfg, plan, out, resumed)
        ... map_batches(progress.counted(stage_cls)) ... map_batches(progress.counted_writer(ShardWriter))
        with progress:
            for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
                progress.observe(batch)
    """

    def __init__(self, cfg, plan, out, resume_from=None,
                 stream=None, tty: bool | None = None):
        """resume_from: the shard directory when this pass resumes (its rows count as done)."""
        self.out = StoragePath(out)
        self.enabled = bool(cfg.sdg.progress)
        self.interval = max(0.05, float(cfg.sdg.progress_interval_s))
        self.flush_s = min(1.0, self.interval / 2)
        self.quotas = {s.leaf: int(s.quota) for s in plan.specs}
        self.kinds = {s.leaf: s.kind for s in plan.specs}
        self.fanout = effective_fanout(cfg.sdg)
        self.total = sum(self.quotas.values())
        self.stage_names = [s.stage for s in stages_for(set(self.kinds.values()), self.fanout)]
        self.leaves = {leaf: {"done": 0, "kept": 0} for leaf in self.quotas}
        resumed = resumed_counts(shard_files(resume_from), self.fanout) if resume_from else {}
        for leaf, c in resumed.items():
            if leaf in self.leaves:
                self.leaves[leaf] = {"done": min(c.get("done", 0), self.quotas[leaf]),
                                     "kept": min(c.get("kept", 0), self.quotas[leaf])}
        self.resumed = sum(v["done"] for v in self.leaves.values())
        self.this_pass = 0
        self.groups: dict[tuple, list[int]] = {}  # exact block counts of this pass (stats.GROUP_KEYS)
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.started = time.time()
        self.actor = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_tokens = (self.started, 0)
        self._tok_s = 0.0
        self._stages_snapshot: dict = {"stages": {}, "in_flight": {}}
        if self.enabled:
            import ray

            self.actor = ray.remote(num_cpus=0)(ProgressCounterImpl).remote()

    # -- wrapping the pipeline's callables -------------------------------------
    def counted(self, stage_cls):
        return counted(stage_cls, self.actor, self.flush_s) if self.enabled else stage_cls

    def counted_writer(self, writer_cls):
        return counted_writer(writer_cls)

    def observe(self, batch) -> None:
        """One writer batch's block counts (a few rows: leaf x status x reason)."""
        df = batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(batch)
        if not len(df) or "rows" not in df.columns:
            return
        with self._lock:
            counts_cols = [c for c in df.columns if c not in GROUP_KEYS]
            for rec in zip(*(df[k].tolist() for k in (*GROUP_KEYS, *counts_cols))):
                key, counts = rec[:len(GROUP_KEYS)], dict(zip(counts_cols, rec[len(GROUP_KEYS):]))
                leaf, status, rows = str(key[0]), key[2], int(counts["rows"])
                quota_part = rows * quota_rows(str(key[1]), int(key[5] or 0), self.fanout)
                c = self.leaves.setdefault(leaf, {"done": 0, "kept": 0})
                c["done"] += quota_part
                c["kept"] += rows if status == "ok" else 0
                self.this_pass += quota_part
                g = self.groups.setdefault(key, {})
                for k, n in counts.items():
                    g[k] = g.get(k, 0) + int(n or 0)

    # -- snapshots ----------------------------------------------------------------
    def snapshot(self, state: str = "running", error: str | None = None) -> dict:
        now = time.time()
        if self.actor is not None:
            import ray

            try:
                self._stages_snapshot = ray.get(self.actor.snapshot.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - keep the last one
                pass
        stages = self._stages_snapshot.get("stages", {})
        if state == "done":
            stages = self._exact_stages(stages)
        tokens = sum(s.get("completion_tokens", 0) for s in stages.values())
        t_prev, tok_prev = self._last_tokens
        if state != "running":  # the pass's average
            self._tok_s = tokens / max(now - self.started, 1e-6)
        elif now - t_prev > 0.2:  # the rate since the last snapshot
            self._tok_s = (tokens - tok_prev) / (now - t_prev)
            self._last_tokens = (now, tokens)
        with self._lock:
            leaves = {k: dict(v, quota=self.quotas.get(k, 0)) for k, v in self.leaves.items()}
            this_pass = self.this_pass
        done = sum(v["done"] for v in leaves.values())
        elapsed = now - self.started
        left = max(0, self.total - done)
        if state == "done" or left == 0:
            eta = 0.0
        elif this_pass > 0 and elapsed > 0:
            eta = left / (this_pass / elapsed)
        else:  # nothing through every stage yet: how fast rows enter the pipeline
            todo = self.total - self.resumed
            entered = min(_entered(stages), todo)  # a batch Ray retried counts twice
            eta = (todo - entered) / (entered / elapsed) if 0 < entered < todo and elapsed > 0 else None
        flight = {} if state != "running" else self._stages_snapshot.get("in_flight", {})
        retries = sum(s.get("retries", 0) for s in stages.values())
        errors = sum(s.get("dropped", {}).get("teacher_error", 0) for s in stages.values())
        return {
            "state": state, "error": error, "pid": os.getpid(), "host": socket.gethostname(),
            "started": self.started, "updated": now, "interval_s": self.interval, "elapsed_s": round(elapsed, 1),
            "total": self.total, "done": done, "resumed": self.resumed,
            "kept": sum(v["kept"] for v in leaves.values()), "eta_s": None if eta is None else round(eta, 1),
            "completion_tokens": tokens, "completion_tokens_per_s": round(self._tok_s, 1),
            "in_flight": sum(flight.values()),
            "retries": retries, "teacher_errors": errors,
            "stages": {st: dict(stages[st], in_flight=flight.get(st, 0))
                       for st in self.stage_names if st in stages},
            "leaves": leaves,
        }

    def _exact_stages(self, live: dict) -> dict:
        """Per stage in/kept/dropped/tokens of this pass from the writer's exact counts (the stage
        actors' own counts include batches Ray retried after an actor died, and their last
        flushes may not have arrived); retries stay the actors' counts."""
        with self._lock:
            groups = [{**dict(zip(GROUP_KEYS, k)), **v} for k, v in self.groups.items()]
        out: dict[str, dict] = {}
        for leaf in funnel(groups, self.fanout)["leaves"].values():
            for st in leaf["stages"]:
                if st["stage"] == "dedup":
                    continue
                s = out.setdefault(st["stage"], {**_empty_stage(), "retries": live.get(st["stage"], {}).get("retries", 0)})
                _merge(s, {k: st[k] for k in ("in", "kept", "dropped", "prompt_tokens", "completion_tokens")})
        return out

    def save(self, snap: dict) -> None:
        try:
            atomic_write_json(self.out / PROGRESS_FILE, snap, indent=None)
        except OSError:
            pass

    # -- rendering ------------------------------------------------------------------
    def line(self, snap: dict) -> str:
        return progress_line(snap)

    def table(self, snap: dict):
        return progress_table(snap)

    def _run(self) -> None:
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            with Live(self.table(self.snapshot()), console=Console(file=self.stream), refresh_per_second=2,
                      transient=True) as live:
                while not self._stop.wait(min(self.interval, 1.0)):
                    snap = self.snapshot()
                    self.save(snap)
                    live.update(self.table(snap))
            return
        while not self._stop.wait(self.interval):
            snap = self.snapshot()
            self.save(snap)
            print(self.line(snap), file=self.stream, flush=True)

    def __enter__(self):
        self.save(self.snapshot())
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="sdg-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        failed = exc_type is not None
        snap = self.snapshot("failed" if failed else "done",
                             f"{exc_type.__name__}: {exc}"[:500] if failed else None)
        self.save(snap)
        if self.enabled:
            if self.tty:
                from rich.console import Console

                Console(file=self.stream).print(self.table(snap))
            else:
                print(self.line(snap), file=self.stream, flush=True)
        if self.actor is not None:
            import ray

            try:
                ray.kill(self.actor)
            except Exception:  # noqa: BLE001
                pass
        return False


def _entered(stages: dict) -> int:
    """Rows that entered their first stage (grounded rows pass gen_context, then gen_instruction)."""
    def get(stage, key):
        return stages.get(stage, {}).get(key, 0)

    return (get("gen_qa", "in") + get("gen_context", "in")
            + max(0, get("gen_instruction", "in") - get("gen_context", "kept")))


def progress_line(snap: dict) -> str:
    """One log line: rows, kept, stages (in>kept), in flight, tokens/s, faults, ETA."""
    total, done = snap["total"], snap["done"]
    pct = 100.0 * done / total if total else 100.0
    stages = " ".join(f"{st} {s['in']}>{s['kept']}" for st, s in snap["stages"].items())
    leaves = snap["leaves"]
    with_kept = sum(1 for v in leaves.values() if v["kept"] > 0)
    head = "sdg done" if snap["state"] == "done" else ("sdg FAILED" if snap["state"] == "failed" else "sdg")
    return (f"{head} {_hms(snap['elapsed_s'])} | rows {done}/{total} ({pct:.0f}%) kept {snap['kept']} | "
            f"leaves with kept rows {with_kept}/{len(leaves)} | stages in>kept: {stages or '-'} | "
            f"in flight {snap['in_flight']} | {snap['completion_tokens_per_s']:.0f} tok/s | "
            f"retries {snap['retries']} teacher errors {snap['teacher_errors']} | ETA {_hms(snap['eta_s'])}")


def progress_table(snap: dict, max_leaves: int = 15):
    from rich.console import Group
    from rich.table import Table

    stages = Table(title=f"generation {_hms(snap['elapsed_s'])}: rows {snap['done']}/{snap['total']}, "
                         f"kept {snap['kept']}, ETA {_hms(snap['eta_s'])}", title_justify="left")
    for c in ("stage", "in", "kept", "dropped", "in flight", "completion tokens"):
        stages.add_column(c, justify="left" if c in ("stage", "dropped") else "right")
    for st, s in snap["stages"].items():
        dropped = ", ".join(f"{r} {n}" for r, n in sorted(s["dropped"].items())) or "-"
        stages.add_row(st, str(s["in"]), str(s["kept"]), dropped, str(s.get("in_flight", 0)),
                       str(s["completion_tokens"]))
    stages.caption = (f"{snap['completion_tokens_per_s']:.0f} completion tok/s, {snap['in_flight']} requests in "
                      f"flight, {snap['retries']} retries, {snap['teacher_errors']} teacher errors")
    leaves = Table(title="per leaf (kept: before dedup)", title_justify="left")
    for c in ("leaf", "kept", "done", "quota"):
        leaves.add_column(c, justify="left" if c == "leaf" else "right")
    items = sorted(snap["leaves"].items(), key=lambda kv: (kv[1]["done"] / max(1, kv[1]["quota"]), kv[0]))
    for leaf, v in items[:max_leaves]:
        leaves.add_row(leaf, str(v["kept"]), str(v["done"]), str(v["quota"]))
    if len(items) > max_leaves:
        leaves.caption = f"the {max_leaves} least finished of {len(items)} leaves"
    return Group(stages, leaves)


def resumed_counts(shard_files: list[str], fanout: dict | None = None) -> dict[str, dict]:
    """Quota rows done and rows kept per leaf in complete shards (a resume's starting point;
    a few columns read). A row dropped before a fan-out counts for the children it never had."""
    from lab_ray.sdg.stats import fanout_depth
    from lab_ray.sdg.writer import parquet_columns, read_parquet

    out: dict[str, dict] = {}
    for f in shard_files:
        names = set(parquet_columns(f))
        t = read_parquet(f, [c for c in ("leaf", "kind", "status", "item_path") if c in names]).to_pandas()
        t["depth"] = fanout_depth(t["item_path"]) if "item_path" in t else 0
        if "kind" not in t:
            t["kind"] = ""
        for (leaf, kind, status, depth), n in t.groupby(["leaf", "kind", "status", "depth"]).size().items():
            c = out.setdefault(str(leaf), {"done": 0, "kept": 0})
            c["done"] += int(n) * quota_rows(str(kind), int(depth), fanout or {})
            c["kept"] += int(n) if status == "ok" else 0
    return out


def read_progress(sdg_dir) -> dict[str, Any] | None:
    from lab_ray.storage import read_json

    return read_json(StoragePath(sdg_dir) / PROGRESS_FILE)
