"""`lab-ray status [RUN] [--json]`: where a run is, read from its files only.

Answers from another shell while a run goes, and after it died: the steps of
`lab-ray run` (done / running / interrupted / pending, from `run.json`), the
generation snapshot (`sdg/progress.json`, rewritten every
`sdg.progress_interval_s`) or, once generation is final, `data/stats.json`;
the training phases (`train/journal.json`, the last step per phase from
`train/metrics.jsonl`, `train/progress.json`), the last error and the report.

A run is "running" while the process that writes it is alive: the writers
record their pid and host, so on the same host a dead process is told from
a slow one; elsewhere a snapshot much older than its interval says so.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from pathlib import Path

from lab_ray.durations import hms as _hms
from lab_ray.errors import LabRayError
from lab_ray.storage import read_json, run_dir

STEPS = ("validate", "generate", "train", "eval", "report")
PHASES = ("knowledge_short", "knowledge_long", "skills")
STALE_S = 300.0  # a snapshot this much older than its interval, from another host: probably dead


def register(sub, common) -> None:
    p = sub.add_parser("status", parents=[common],
                       help="where a run is: steps, samples per leaf, training step, last error, report")
    p.add_argument("--json", action="store_true", help="print the status as JSON (for scripts)")
    p.add_argument("args", nargs="*", metavar="RUN [key=value ...]",
                   help="a run directory (or URI), or a run name under run.root (default: run.name)")
    p.set_defaults(handler=_status, positional_range=(0, 1), usage="status [RUN_DIR_OR_NAME] [--json] [key=value ...]")


def resolve(target: str | None, cfg) -> Path:
    """The run directory: `target` as a path or URI (its parent is the root), a name under run.root, or run.name."""
    if target:
        t = target.rstrip("/") or "/"
        as_name = "/" not in t and (Path(cfg.run.root, t).is_dir() or not Path(t).is_dir())
        if as_name:
            cfg.run.name = t
        else:
            root, _, name = t.rpartition("/")
            cfg.run.root, cfg.run.name = root or ("/" if t.startswith("/") else "."), name
    return run_dir(cfg)


# -- reading -----------------------------------------------------------------------
def _alive(rec: dict | None) -> bool | None:
    """Is the process that wrote `rec` alive? None when that cannot be told from here."""
    if not rec or not rec.get("pid"):
        return None
    if rec.get("host") != socket.gethostname():
        updated = rec.get("updated") or 0
        return None if time.time() - updated < STALE_S + float(rec.get("interval_s", 0)) * 3 else False
    try:
        os.kill(int(rec["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_jsonl(path: Path) -> list[dict]:
    from lab_ray.train.metrics import read

    return read(path)


def collect(rdir: Path) -> dict:
    """Everything `lab-ray status` shows, as plain data (the --json output)."""
    run = read_json(rdir / "run.json")
    sdg_dir = rdir / "sdg"
    progress = read_json(sdg_dir / "progress.json")
    plan = read_json(sdg_dir / "plan.json")
    stats = read_json(rdir / "data" / "stats.json")
    if not (isinstance(stats, dict) and "total" in stats and "leaves" in stats):
        stats = None  # not written by lab-ray's finalize (hand-made training data)
    journal = read_json(rdir / "train" / "journal.json")
    train_progress = read_json(rdir / "train" / "progress.json")
    report = rdir / "report" / "report.md"
    if not any(x is not None for x in (run, progress, plan, stats, journal, train_progress)):
        raise LabRayError(f"{rdir}: not a lab-ray run (none of run.json, sdg/plan.json, sdg/progress.json, "
                          "data/stats.json, train/journal.json)")
    now = time.time()
    out: dict = {"run": str(rdir), "checked": now, "steps": {}, "generation": None, "training": None,
                 "last_error": None, "report": str(report) if report.is_file() else None}

    # generation
    gen_state = None
    if progress is not None:
        alive = _alive(progress) if progress.get("state") == "running" else None
        gen_state = {"running": "interrupted" if alive is False else "running"}.get(progress["state"], progress["state"])
        out["generation"] = {
            "state": gen_state, "rows": progress["done"], "total": progress["total"], "kept_before_dedup": progress["kept"],
            "eta_s": progress.get("eta_s") if gen_state == "running" else None,
            "updated": progress.get("updated"), "updated_ago_s": round(now - progress.get("updated", now), 1),
            "pid": progress.get("pid"), "host": progress.get("host"),
            "completion_tokens_per_s": progress.get("completion_tokens_per_s"),
            "teacher_errors": progress.get("teacher_errors"), "retries": progress.get("retries"),
            "leaves": {leaf: {"kept": v["kept"], "done": v["done"], "quota": v["quota"]}
                       for leaf, v in progress.get("leaves", {}).items()},
        }
        if progress.get("error"):
            out["last_error"] = {"where": "generate", "error": progress["error"], "time": progress.get("updated")}
    elif plan is not None:
        out["generation"] = {"state": "planned", "total": plan.get("rows", plan.get("tasks")),
                             "leaves": {k: {"quota": q} for k, q in plan.get("leaves", {}).items()}}
    shards = sdg_dir / "shards"
    if out["generation"] is not None and shards.is_dir():
        from lab_ray.sdg.writer import shard_files

        files = shard_files(shards)
        out["generation"]["shards"] = len(files)
        if out["generation"].get("state") in ("interrupted", "failed") and files:
            # what is on disk is what a resume keeps: count it (two columns of each shard)
            from lab_ray.sdg.progress import resumed_counts
            from lab_ray.sdg.stages import effective_fanout

            on_disk = resumed_counts(files, effective_fanout((plan or {}).get("config") or {}))
            leaves = out["generation"].setdefault("leaves", {})
            for leaf, c in on_disk.items():
                leaves.setdefault(leaf, {"quota": 0}).update(done=c["done"], kept=c["kept"])
            out["generation"]["rows"] = sum(c["done"] for c in on_disk.values())
            out["generation"]["kept_before_dedup"] = sum(c["kept"] for c in on_disk.values())
    if stats is not None:
        quotas = (plan or {}).get("leaves", {})
        final = {"state": "done", "kept": stats["total"]["kept"], "rows": stats["total"]["rows"],
                 "accepted": {leaf: {"accepted": s["kept"], "rows": s["rows"], "quota": quotas.get(leaf, s["rows"])}
                              for leaf, s in stats["leaves"].items()}}
        out["generation"] = {**(out["generation"] or {}), **final}
        gen_state = "done"

    # training
    if journal is not None or train_progress is not None:
        journal = journal or {"phases": {}, "selection": {}}
        last: dict[str, dict] = {}
        for r in _read_jsonl(rdir / "train" / "metrics.jsonl"):
            if r.get("event") in ("step", "final") and r.get("phase"):
                prev = last.get(r["phase"], {})
                if r.get("checkpoint"):
                    r = {**r, "last_checkpoint": r["checkpoint"]}
                elif prev.get("last_checkpoint"):
                    r = {**r, "last_checkpoint": prev["last_checkpoint"]}
                if r.get("event") == "final":
                    r = {**prev, **{k: v for k, v in r.items() if v is not None}}
                last[r["phase"]] = r
        alive = _alive(train_progress) if (train_progress or {}).get("state") == "running" else None
        phases = {}
        for ph in PHASES:
            e = journal.get("phases", {}).get(ph)
            if e is None and ph not in last:
                continue
            e = e or {}
            status = e.get("status", "pending")
            if status == "running" and alive is False:
                status = "interrupted"
            m = last.get(ph, {})
            phases[ph] = {"status": status, "step": m.get("step", 0), "total_steps": e.get("total_steps") or m.get("total_steps"),
                          "loss": m.get("loss"), "lr": m.get("lr"), "tokens_per_s": m.get("tokens_per_s"),
                          "last_checkpoint": e.get("last_checkpoint") or m.get("last_checkpoint"),
                          "reason": e.get("reason")}
        out["training"] = {"phases": phases,
                           "selected": {g: s.get("selected") for g, s in journal.get("selection", {}).items()},
                           "final_checkpoint": journal.get("final_checkpoint")}
        if (train_progress or {}).get("error"):
            out["last_error"] = {"where": "train", "error": train_progress["error"], "time": train_progress.get("updated")}

    # the steps of `lab-ray run` (run.json), else what the files say
    done = {k for k, v in ((run or {}).get("steps") or {}).items() if v.get("status") == "done"}
    train_state = None
    if out["training"] is not None:
        sts = [p["status"] for p in out["training"]["phases"].values()]
        train_state = ("done" if out["training"]["final_checkpoint"] else
                       "interrupted" if "interrupted" in sts else "running" if "running" in sts else None)
    inferred = {"generate": gen_state, "train": train_state, "report": "done" if out["report"] else None}
    current = (run or {}).get("current")
    run_alive = _alive((run or {}).get("process"))
    for step in STEPS:
        if step in done:
            state = "done"
        elif inferred.get(step) in ("running", "interrupted", "failed"):
            state = inferred[step]
        elif current == step:
            state = "running" if run_alive is not False else "interrupted"
        elif run is None:  # not started by `lab-ray run`: only what the files show
            state = inferred.get(step) or "-"
        else:
            state = "pending"
        out["steps"][step] = state
    err = (run or {}).get("error")
    if err:
        out["last_error"] = err
        if err.get("step") in out["steps"] and out["steps"][err["step"]] != "done":
            out["steps"][err["step"]] = "failed"
    states = [s for s in out["steps"].values() if s != "-"]
    out["state"] = ("failed" if "failed" in states else "interrupted" if "interrupted" in states else
                    "running" if "running" in states else "done" if all(s == "done" for s in states) else
                    "not finished")
    if run is None:
        out["note"] = "no run.json: steps run one at a time, not by `lab-ray run`"
    return out


# -- printing ----------------------------------------------------------------------
def render(st: dict) -> str:
    lines = [f"run {st['run']}: {st['state']}",
             "steps: " + " · ".join(f"{k} {v}" for k, v in st["steps"].items() if v != "-")
             + (f" ({st['note']})" if st.get("note") else "")]
    g = st["generation"]
    if g:
        if "accepted" in g:
            lines.append(f"generation: done, {g['kept']} accepted of {g['rows']} rows (after judges and dedup)")
            rows = [(leaf, v["accepted"], v["rows"], v["quota"]) for leaf, v in g["accepted"].items()]
            head = ("leaf", "accepted", "rows", "quota")
        else:
            extra = ""
            if g.get("state") == "running":
                extra = f", ETA {_hms(g.get('eta_s'))}"
            if g.get("updated_ago_s") is not None:
                extra += f", snapshot {_hms(g['updated_ago_s'])} ago"
            if g.get("state") == "interrupted":
                extra += f" (process {g.get('pid')} on {g.get('host')} is gone; rerun the same command to resume)"
            lines.append(f"generation: {g.get('state')}, rows {g.get('rows', 0)}/{g.get('total')}, "
                         f"kept {g.get('kept_before_dedup', 0)} before dedup, {g.get('shards', 0)} shards on disk{extra}")
            rows = [(leaf, v.get("kept", 0), v.get("done", 0), v["quota"]) for leaf, v in g["leaves"].items()]
            head = ("leaf", "kept", "done", "quota")
        width = max([len(head[0])] + [len(r[0]) for r in rows])
        lines.append(f"  {head[0]:<{width}} " + " ".join(f"{h:>8}" for h in head[1:]))
        for r in rows:
            lines.append(f"  {r[0]:<{width}} " + " ".join(f"{x:>8}" for x in r[1:]))
    t = st["training"]
    if t:
        for ph, p in t["phases"].items():
            desc = f"training {ph}: {p['status']}"
            if p["status"] in ("done", "running", "interrupted") and p.get("total_steps"):
                desc += f", step {p['step']}/{p['total_steps']}"
            if p.get("loss") is not None:
                desc += f", loss {p['loss']:.4f}"
            if p.get("tokens_per_s"):
                desc += f", {p['tokens_per_s']:.0f} tokens/s"
            if p.get("reason"):
                desc += f" ({p['reason']})"
            if p.get("last_checkpoint"):
                desc += f", checkpoint {p['last_checkpoint']}"
            lines.append(desc)
        for group, sel in t["selected"].items():
            lines.append(f"selected ({group}): {sel}")
        if t["final_checkpoint"]:
            lines.append(f"final model: {t['final_checkpoint']}")
    if st["last_error"]:
        e = st["last_error"]
        lines.append(f"last error ({e.get('where') or e.get('step')}): {e.get('error')}")
    if st["report"]:
        lines.append(f"report: {st['report']}")
    return "\n".join(lines)


def _status(ns: argparse.Namespace, cfg, positional) -> int:
    rdir = resolve(positional[0] if positional else None, cfg)
    st = collect(rdir)
    if ns.json:
        print(json.dumps(st, indent=1, default=str))
    else:
        print(render(st))
    return 0
