"""`lab-ray generate [overrides]`: taxonomy -> judged synthetic data in runs/<name>/."""

from __future__ import annotations

import argparse
import contextlib

from omegaconf import OmegaConf

from rich.console import Console
from rich.table import Table

from lab_ray.cli import split_args
from lab_ray.config import load_config
from lab_ray.errors import ConfigError


def register(sub, common) -> None:
    p = sub.add_parser("generate", parents=[common], help="synthetic data generation (LAB SDG) on Ray Data")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(handler=_generate)


@contextlib.contextmanager
def teacher_endpoint(cfg):
    """An endpoint for the run: the configured URL, or a teacher deployed for it."""
    from lab_ray.ray_cluster import init_ray
    from lab_ray.teacher.app import api_key, deploy, shutdown

    init_ray(cfg.ray)
    if cfg.teacher.base_url or cfg.teacher.backend == "openai":
        yield (cfg.teacher.base_url.rstrip("/"), api_key(cfg.teacher))
        return
    endpoint = deploy(cfg.teacher, cfg.ray)
    try:
        yield endpoint.base_url, endpoint.api_key
    finally:
        shutdown()


def generate(cfg):
    from lab_ray.sdg.pipeline import _teacher_spec, run_generation
    from lab_ray.ray_cluster import init_ray

    if cfg.sdg.test_teacher:  # tests and benchmarks: an in-process test teacher, no endpoint
        init_ray(cfg.ray)
        spec = {"kind": "python", "factory": cfg.sdg.test_teacher,
                "args": OmegaConf.to_container(cfg.sdg.test_teacher_args, resolve=True)}
        return run_generation(cfg, spec)
    with teacher_endpoint(cfg) as (url, key):
        return run_generation(cfg, _teacher_spec(cfg, url, key))


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


def _generate(ns: argparse.Namespace) -> int:
    positional, overrides = split_args(ns.overrides)
    if positional:
        raise ConfigError(f"generate takes key=value overrides only (taxonomy.path=...), not {positional[0]!r}")
    cfg = load_config(overrides, ns.config)
    result = generate(cfg)
    console = Console()
    console.print(summary_table(result.stats))
    console.print(f"resumed {result.resumed} of {result.tasks} tasks; outputs in {result.run_dir}/data "
                  f"(knowledge_train/, skills_train/, recipe.yaml, stats.json) and {result.run_dir}/samples/")
    return 0
