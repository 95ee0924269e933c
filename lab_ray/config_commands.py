"""`lab-ray config show` (the resolved configuration) and `lab-ray config reference`."""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf


def register(sub, common) -> None:
    p = sub.add_parser("config", help="inspect configuration")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    show = csub.add_parser("show", parents=[common], help="print the resolved config (after overrides)")
    show.add_argument("args", nargs="*", metavar="key=value")
    show.set_defaults(handler=_show, positional_range=(0, 0), usage="config show [key=value ...]")
    ref = csub.add_parser("reference", parents=[common],
                          help="print the configuration reference (Markdown: every key, type, default, meaning)")
    ref.set_defaults(handler=_reference)


def _show(ns: argparse.Namespace, cfg, positional) -> int:
    print(OmegaConf.to_yaml(cfg), end="")
    return 0


def _reference(ns: argparse.Namespace) -> int:
    from lab_ray.config_reference import reference_markdown

    print(reference_markdown(), end="")
    return 0
