"""`lab-ray run`: the main job. Until generation and training land it
validates the taxonomy and prints its statistics."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from lab_ray.cli import split_args
from lab_ray.config import load_config, run_dir
from lab_ray.errors import ConfigError
from lab_ray.taxonomy.loader import load_taxonomy
from lab_ray.taxonomy.stats import leaf_tree, stats_table


def register(sub, common) -> None:
    p = sub.add_parser("run", parents=[common], help="the whole LAB pipeline on a taxonomy")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(handler=_run)


def _run(ns: argparse.Namespace) -> int:
    positional, overrides = split_args(ns.overrides)
    if positional:
        raise ConfigError(f"run takes key=value overrides only (taxonomy.path=...), not {positional[0]!r}")
    cfg = load_config(overrides, ns.config)
    console = Console()
    console.rule(f"lab-ray run {cfg.run.name}: validate taxonomy {cfg.taxonomy.path}")
    tax = load_taxonomy(cfg.taxonomy.path, cfg.taxonomy)
    for p in tax.problems:
        print(str(p), file=sys.stderr)
    tax.raise_for_errors()
    console.print(leaf_tree(tax.leaves, cfg.taxonomy.path))
    console.print(stats_table(tax.leaves))
    console.print(f"run directory: {run_dir(cfg)}")
    return 0
