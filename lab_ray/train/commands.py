"""`lab-ray train [overrides]`: LAB's phased training on a run's data.

Start from a later phase of an earlier run with e.g.
`train.start_phase=skills train.init_from=runs/old/train/ray/knowledge_long/checkpoint_...`.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table



def register(sub, common) -> None:
    p = sub.add_parser("train", parents=[common], help="multi-phase training (knowledge short/long, skills) on Ray Train")
    p.add_argument("args", nargs="*", metavar="key=value")
    p.set_defaults(handler=_train, positional_range=(0, 0), usage="train [key=value ...] (e.g. train.start_phase=skills)")


def summary_table(result: dict) -> Table:
    t = Table(title="Training phases")
    for c in ("phase", "status", "steps", "rows (dropped over length)", "wall s", "last checkpoint"):
        t.add_column(c)
    for ph, e in result["phases"].items():
        st = e.get("stats", {})
        t.add_row(ph, e["status"] + (f" ({e['reason']})" if e.get("reason") else ""), str(e.get("total_steps", "-")),
                  f"{st.get('rows', 0)} ({st.get('dropped_over_length', 0)})", f"{e.get('wall_s', 0.0):.0f}",
                  str(e.get("last_checkpoint", "-")))
    return t


def _train(ns: argparse.Namespace, cfg, positional) -> int:
    from lab_ray.train.phases import run_training

    result = run_training(cfg)
    console = Console()
    console.print(summary_table(result))
    for group, sel in result["selection"].items():
        console.print(f"selected ({group}, {sel['mode']} {sel['metric']}): {sel['selected']}")
    console.print(f"final model: {result['final_checkpoint']}")
    console.print(f"journal: {result['journal']}  metrics: {result['metrics']}")
    return 0
