"""`lab-ray taxonomy validate|diff|stats [PATH] [overrides]`."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from lab_ray.errors import TaxonomyError
from lab_ray.taxonomy.diff import changed_leaves
from lab_ray.taxonomy.loader import Taxonomy, load_taxonomy
from lab_ray.taxonomy.stats import leaf_tree, stats_table


def register(sub, common) -> None:
    p = sub.add_parser("taxonomy", help="read, validate and compare a LAB taxonomy")
    tsub = p.add_subparsers(dest="taxonomy_command", metavar="ACTION")
    tsub.required = True
    for name, handler, help_ in [
        ("validate", _validate, "check every qna.yaml; list all problems"),
        ("stats", _stats, "leaf counts per branch and type"),
        ("diff", _diff, "leaves changed against a git ref"),
    ]:
        sp = tsub.add_parser(name, parents=[common], help=help_)
        sp.add_argument("args", nargs="*", metavar="[PATH] [key=value ...]")
        if name == "diff":
            sp.add_argument("--base", help="git ref to compare with, or 'empty' for the whole tree")
        if name == "validate":
            sp.add_argument("--no-documents", action="store_true", help="skip resolving knowledge documents")
        sp.set_defaults(handler=handler, positional_range=(0, 1), usage=f"taxonomy {name} [PATH] [key=value ...]")




def _print_problems(tax: Taxonomy) -> None:
    for p in tax.problems:
        print(str(p), file=sys.stderr)


def _path(cfg, positional: list[str]) -> str:
    return positional[0] if positional else cfg.taxonomy.path


def _validate(ns: argparse.Namespace, cfg, positional) -> int:
    path = _path(cfg, positional)
    tax = load_taxonomy(path, cfg.taxonomy, check_documents=False if ns.no_documents else None)
    _print_problems(tax)
    n_err, n_warn = len(tax.errors), len(tax.warnings)
    if n_err:
        print(f"{path}: {n_err} error(s), {n_warn} warning(s) in {tax.files_checked} qna.yaml file(s)", file=sys.stderr)
        return 1
    docs = sum(len(d) for d in tax.documents.values())
    print(f"{path}: {len(tax.leaves)} leaves valid ({n_warn} warning(s)); {docs} knowledge document(s) resolved")
    return 0


def _stats(ns: argparse.Namespace, cfg, positional) -> int:
    path = _path(cfg, positional)
    tax = load_taxonomy(path, cfg.taxonomy, check_documents=False)
    console = Console()
    console.print(leaf_tree(tax.leaves, str(path)))
    console.print(stats_table(tax.leaves))
    if tax.errors:
        _print_problems(tax)
        print(f"{len(tax.errors)} file problem(s): the leaves above exclude them (run `lab-ray taxonomy validate`)",
              file=sys.stderr)
        return 1
    return 0


def _diff(ns: argparse.Namespace, cfg, positional) -> int:
    path = _path(cfg, positional)
    base = ns.base or cfg.taxonomy.base
    changes = changed_leaves(path, base)
    if not changes:
        print(f"no leaves changed against {base}")
        return 0
    width = max(len(c.status) for c in changes)
    for c in changes:
        print(f"{c.status:<{width}}  {c.leaf}")
    live = {c.leaf for c in changes if c.status != "deleted"}
    if live:
        tax = load_taxonomy(path, cfg.taxonomy, check_documents=False, only=live)
        if tax.errors:
            _print_problems(tax)
            raise TaxonomyError(f"{len(tax.errors)} problem(s) in changed leaves")
    return 0
