"""`lab-ray run [overrides]`: the whole LAB pipeline (see pipeline/run.py)."""

from __future__ import annotations

import argparse



def register(sub, common) -> None:
    p = sub.add_parser("run", parents=[common],
                       help="the whole LAB pipeline: validate, generate, train + select, eval, report (resumable)")
    p.add_argument("args", nargs="*", metavar="key=value")
    p.set_defaults(handler=_run, positional_range=(0, 0), usage="run [key=value ...] (e.g. taxonomy.path=...)")


def _run(ns: argparse.Namespace, cfg, positional) -> int:
    from lab_ray.pipeline.run import run_pipeline

    run_pipeline(cfg)
    return 0
