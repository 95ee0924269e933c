"""`lab-ray run [overrides]`: the whole LAB pipeline (see pipeline/run.py)."""

from __future__ import annotations

import argparse

from lab_ray.cli import split_args
from lab_ray.config import load_config
from lab_ray.errors import ConfigError


def register(sub, common) -> None:
    p = sub.add_parser("run", parents=[common],
                       help="the whole LAB pipeline: validate, generate, train + select, eval, report (resumable)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(handler=_run)


def _run(ns: argparse.Namespace) -> int:
    from lab_ray.pipeline.run import run_pipeline

    positional, overrides = split_args(ns.overrides)
    if positional:
        raise ConfigError(f"run takes key=value overrides only (taxonomy.path=...), not {positional[0]!r}")
    run_pipeline(load_config(overrides, ns.config))
    return 0
