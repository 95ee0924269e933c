"""Counts per branch and leaf type, and the leaf tree, as rich renderables."""

from __future__ import annotations

from collections import Counter

from rich.table import Table
from rich.tree import Tree

from lab_ray.taxonomy.leaf import BRANCHES, Leaf

KINDS = ["knowledge", "grounded", "freeform"]


def count_by_branch(leaves: list[Leaf]) -> dict[str, Counter]:
    counts = {b: Counter() for b in BRANCHES}
    for leaf in leaves:
        c = counts[leaf.branch.value]
        c["leaves"] += 1
        c[leaf.kind] += 1
        c["examples"] += len(leaf.examples)
    return counts


def stats_table(leaves: list[Leaf]) -> Table:
    table = Table(title="Taxonomy", show_footer=True)
    counts = count_by_branch(leaves)
    total = sum(counts.values(), Counter())
    table.add_column("branch", footer="total")
    for col in ["leaves", *KINDS, "examples"]:
        table.add_column(col, justify="right", footer=str(total[col]))
    for branch in BRANCHES:
        c = counts[branch]
        table.add_row(branch, *(str(c[col]) for col in ["leaves", *KINDS, "examples"]))
    return table


def leaf_tree(leaves: list[Leaf], root_label: str) -> Tree:
    tree = Tree(root_label)
    nodes: dict[str, Tree] = {}
    for leaf in leaves:
        parts = leaf.path.split("/")
        parent = tree
        for i, part in enumerate(parts[:-1]):
            key = "/".join(parts[: i + 1])
            if key not in nodes:
                nodes[key] = parent.add(part)
            parent = nodes[key]
        parent.add(f"[bold]{parts[-1]}[/bold]  {leaf.kind}, {len(leaf.examples)} examples")
    return tree
