"""`lab-ray report RUN_DIR_OR_NAME [overrides]`: report.md + report.html + plots + dataset card."""

from __future__ import annotations

import argparse
from pathlib import Path

from lab_ray.errors import LabRayError
from lab_ray.storage import StoragePath, is_uri, run_dir, run_root


def register(sub, common) -> None:
    p = sub.add_parser("report", parents=[common], help="write the run report (Markdown, HTML, plots, dataset card)")
    p.add_argument("args", nargs="*", metavar="RUN_DIR_OR_NAME [key=value ...]",
                   help="a run directory, or a run name under run.root (default: run.name)")
    p.set_defaults(handler=_report, positional_range=(0, 1), usage="report [RUN_DIR_OR_NAME] [key=value ...]")


def resolve_run(target: str | None, cfg) -> StoragePath:
    """A run directory (path or URI), or a run name under run.root."""
    if target is None:
        path = run_dir(cfg)
    elif is_uri(target) or Path(target).is_dir():
        path = StoragePath(target)
    else:
        path = run_root(cfg) / target
    if not path.is_dir():
        raise LabRayError(f"no run directory at {path} (pass a run directory or a run name under {cfg.run.root}/)")
    return path


def _report(ns: argparse.Namespace, cfg, positional) -> int:
    from lab_ray.report.builder import write_report

    path = write_report(resolve_run(positional[0] if positional else None, cfg), cfg)
    print(f"report: {path} and {path.with_suffix('.html')}; dataset card: {path.parent / 'dataset_card.md'}")
    return 0
