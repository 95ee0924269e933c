"""`lab-ray run`: taxonomy -> teacher -> generate -> train (+ select) -> eval -> report.

Each step is recorded in runs/<name>/run.json when it finishes, and each
step resumes on its own (generation from complete shards, training from its
phase journal), so rerunning the same command after a crash or Ctrl-C picks
up where it stopped. One teacher serves the whole run: generation, the
evaluation sets, the skills judge during checkpoint selection and the final
comparison all reach it through `teacher.base_url`, which is set for the run.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import time

from omegaconf import OmegaConf
from rich.console import Console

from lab_ray.errors import LabRayError
from lab_ray.storage import Journal, run_dir

STEPS = ("validate", "generate", "train", "eval", "report")


def _validate(cfg, console: Console):
    from lab_ray.taxonomy.loader import load_taxonomy
    from lab_ray.taxonomy.stats import stats_table

    tax = load_taxonomy(cfg.taxonomy.path, cfg.taxonomy)
    for p in tax.problems:
        print(str(p), file=sys.stderr)
    tax.raise_for_errors()
    console.print(stats_table(tax.leaves))
    return tax


def _use_eval_selection(cfg) -> None:
    if cfg.pipeline.select_by_eval:
        cfg.train.selection.scorers = ["lab_ray.eval.selection:phase_score", "lab_ray.train.selection:heldout_loss"]
        cfg.train.selection.metric = "phase_score"
        cfg.train.selection.mode = "max"


def _empty_leaves(stats: dict, leaves) -> list[str]:
    return [leaf.path for leaf in leaves if stats["leaves"].get(leaf.path, {}).get("kept", 0) == 0]


def run_pipeline(cfg) -> dict:
    """Runs (or resumes) every step. run.json says which step is current, which process runs it
    and, if it failed, why: what `lab-ray status` reads from another shell."""
    journal = Journal(run_dir(cfg) / "run.json", {"steps": {}})
    journal.data.pop("error", None)
    journal.data["process"] = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    journal.save()
    try:
        return _pipeline(cfg, journal)
    except BaseException as e:
        journal.data["error"] = {"step": journal.data.get("current"), "error": f"{type(e).__name__}: {e}"[:1000],
                                 "time": time.time()}
        journal.save()
        raise


def _begin(journal: Journal, step: str) -> None:
    journal.data["current"] = step
    journal.save()


def _pipeline(cfg, journal: Journal) -> dict:
    from lab_ray.sdg.commands import summary_table
    from lab_ray.sdg.run import run_generation
    from lab_ray.teacher.client import client_spec
    from lab_ray.teacher.endpoint import teacher_endpoint

    console = Console()
    rdir = run_dir(cfg)
    t_start = time.time()
    console.rule(f"lab-ray run {cfg.run.name}: validate {cfg.taxonomy.path}")
    _begin(journal, "validate")
    tax = _validate(cfg, console)
    journal.finish("steps", "validate", leaves=len(tax.leaves))
    (rdir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    pending = not all(journal.is_done("steps", step) for step in ("generate", "train", "eval"))
    if cfg.ray.address is None and cfg.ray.num_cpus is None:
        # The teacher replica holds its CPUs for the whole run while mostly idle
        # during training; without extra logical CPUs Ray Data's tokenisation
        # tasks and the train workers would wait on it forever.
        from lab_ray.teacher.app import logical_cpus

        cfg.ray.num_cpus = (os.cpu_count() or 2) + int(math.ceil(logical_cpus(cfg.teacher))) + 1
    with teacher_endpoint(cfg) if pending else contextlib.nullcontext((None, None, None)) as (url, key, app):
        # Everything after this point reaches the same teacher.
        cfg.teacher.base_url = url
        if key:
            cfg.teacher.api_key = key
        if not journal.is_done("steps", "generate"):
            console.rule("generate: taxonomy-driven synthetic data (teacher generates and judges)")
            t0 = time.time()
            _begin(journal, "generate")
            result = run_generation(cfg, client_spec(cfg.teacher, url, key, app=app))
            console.print(summary_table(result.stats))
            empty = _empty_leaves(result.stats, tax.leaves)
            if empty:
                msg = f"no accepted samples for: {', '.join(empty)}"
                if cfg.pipeline.require_every_leaf:
                    raise LabRayError(msg + " (raise sdg.samples_per_leaf, or set pipeline.require_every_leaf=false)")
                console.print(f"[yellow]warning: {msg}[/]")
            journal.finish("steps", "generate", wall_s=time.time() - t0, kept=result.stats["total"]["kept"],
                           empty_leaves=empty)
        if not journal.is_done("steps", "train"):
            from lab_ray.train.commands import summary_table as train_table
            from lab_ray.train.phases import run_training

            console.rule("train: knowledge (short, long) -> select -> skills + replay -> select")
            t0 = time.time()
            _begin(journal, "train")
            _use_eval_selection(cfg)
            trained = run_training(cfg)
            console.print(train_table(trained))
            journal.finish("steps", "train", wall_s=time.time() - t0, final_checkpoint=trained["final_checkpoint"])
        final = journal.data["steps"]["train"]["final_checkpoint"]
        if not journal.is_done("steps", "eval"):
            from lab_ray.eval.runner import run_eval

            console.rule(f"eval: {final} vs the base model")
            t0 = time.time()
            _begin(journal, "eval")
            result = run_eval(cfg, final, base=bool(cfg.pipeline.eval_base))
            journal.finish("steps", "eval", wall_s=time.time() - t0, path=result["path"], summary=result["summary"])
            console.print(f"eval: done in {time.time() - t0:.0f} s; results in {result['path']}", soft_wrap=True)
    from lab_ray.report.builder import write_report

    console.rule("report")
    _begin(journal, "report")
    report = write_report(rdir, cfg)
    journal.data["current"] = None
    journal.finish("steps", "report", path=str(report))
    # soft_wrap: paths stay on one line, copyable
    console.print(f"done in {time.time() - t_start:.0f} s.\nmodel:  {final}\nreport: {report} (+ .html)",
                  soft_wrap=True)
    return journal.data
