"""`lab-ray generate [overrides]`: taxonomy -> judged synthetic data in runs/<name>/."""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

from omegaconf import OmegaConf

from rich.console import Console
from rich.table import Table

from lab_ray.ray_cluster import init_ray
from lab_ray.teacher.client import client_spec, in_process_teacher_spec


def register(sub, common) -> None:
    p = sub.add_parser("generate", parents=[common], help="synthetic data generation (LAB SDG) on Ray Data")
    p.add_argument("args", nargs="*", metavar="key=value")
    p.set_defaults(handler=_generate, positional_range=(0, 0), usage="generate [key=value ...] (e.g. taxonomy.path=...)")


@contextlib.contextmanager
def generation_teacher(cfg) -> Iterator[dict]:
    """The teacher client spec generation uses: the run's teacher (deployed for the
    block if none serves), or an in-process test teacher (sdg.test_teacher)."""
    if cfg.sdg.test_teacher:  # tests and benchmarks only: no endpoint
        init_ray(cfg.ray)
        yield in_process_teacher_spec(cfg.sdg.test_teacher, OmegaConf.to_container(cfg.sdg.test_teacher_args, resolve=True))
        return
    from lab_ray.teacher.endpoint import teacher_endpoint

    with teacher_endpoint(cfg) as (url, key, app):
        yield client_spec(cfg.teacher, url, key, app=app)


def generate(cfg):
    from lab_ray.sdg.run import run_generation

    with generation_teacher(cfg) as spec:
        return run_generation(cfg, spec)


def summary_table(stats: dict) -> Table:
    table = Table(title="Synthetic data: per leaf and stage (in -> kept; dropped by reason)")
    for col in ("leaf", "stage", "in", "kept", "dropped"):
        table.add_column(col, justify="right" if col in ("in", "kept") else "left")
    for leaf, s in stats["leaves"].items():
        for i, st in enumerate(s["stages"]):
            dropped = ", ".join(f"{r} {n}" for r, n in st["dropped"].items()) or "-"
            table.add_row(leaf if i == 0 else "", st["stage"], str(st["in"]), str(st["kept"]), dropped)
    t = stats["total"]
    table.caption = (f"kept {t['kept']} of {t['rows']}; teacher tokens: {t['prompt_tokens']} prompt, "
                     f"{t['completion_tokens']} completion")
    return table


def _generate(ns: argparse.Namespace, cfg, positional) -> int:
    result = generate(cfg)
    console = Console()
    console.print(summary_table(result.stats))
    console.print(f"resumed {result.resumed} of {result.tasks} tasks; outputs in {result.run_dir}/data "
                  f"(knowledge_train/, skills_train/, recipe.yaml, stats.json) and {result.run_dir}/samples/")
    return 0
