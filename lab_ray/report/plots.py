"""PNG plots for the run report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

KIND_COLORS = {"knowledge": "#4c72b0", "grounded": "#dd8452", "freeform": "#55a868"}


def short(leaf: str) -> str:
    parts = leaf.split("/")
    return "/".join(parts[-2:]) if len(parts) > 1 else leaf


def _save(fig, path: Path, dpi: int) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _height(n: int) -> float:
    return max(2.5, 0.6 * n + 1.5)


def samples_per_leaf(leaves: dict[str, dict], path: Path, dpi: int) -> Path:
    """leaves: leaf -> {"kind", "kept", "rows"} (rows: candidates requested)."""
    names = sorted(leaves)
    fig, ax = plt.subplots(figsize=(8, _height(len(names))))
    y = range(len(names))
    rows = [leaves[n].get("rows") or 0 for n in names]
    kept = [leaves[n].get("kept") or 0 for n in names]
    ax.barh(y, rows, color="#dddddd", label="candidates")
    ax.barh(y, kept, color=[KIND_COLORS.get(leaves[n].get("kind"), "#8172b3") for n in names], label="accepted")
    for i, (k, r) in enumerate(zip(kept, rows)):
        ax.text(max(k, r), i, f" {k}/{r}", va="center", fontsize=8)
    ax.set_yticks(list(y), [short(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("samples")
    ax.set_title("Samples per leaf (accepted of candidates)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path, dpi)


def funnel(stats_leaves: dict[str, dict], path: Path, dpi: int) -> Path:
    names = sorted(stats_leaves)
    reasons = sorted({r for s in stats_leaves.values() for r in (s.get("dropped") or {})})
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(9, _height(len(names))))
    left = [0.0] * len(names)
    kept = [stats_leaves[n].get("kept") or 0 for n in names]
    ax.barh(range(len(names)), kept, color="#2ca02c", label="kept")
    left = [float(k) for k in kept]
    for j, reason in enumerate(reasons):
        vals = [(stats_leaves[n].get("dropped") or {}).get(reason, 0) for n in names]
        ax.barh(range(len(names)), vals, left=left, color=cmap(j % 20), label=f"dropped: {reason}")
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(names)), [short(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("candidate rows")
    ax.set_title("Generation funnel: kept / dropped by reason")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path, dpi)


def teacher_tokens(stats_leaves: dict[str, dict], path: Path, dpi: int) -> Path:
    names = sorted(stats_leaves)
    p = [stats_leaves[n].get("prompt_tokens") or 0 for n in names]
    c = [stats_leaves[n].get("completion_tokens") or 0 for n in names]
    fig, ax = plt.subplots(figsize=(8, _height(len(names))))
    ax.barh(range(len(names)), p, color="#4c72b0", label="prompt tokens")
    ax.barh(range(len(names)), c, left=p, color="#dd8452", label="completion tokens")
    ax.set_yticks(range(len(names)), [short(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("teacher tokens")
    ax.set_title("Teacher tokens per leaf")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path, dpi)


def loss_curves(curves: dict[str, dict], path: Path, dpi: int) -> Path:
    """curves: phase -> {"steps": [...], "loss": [...], "checkpoints": [step...], "selected": [step...]}."""
    phases = list(curves)
    fig, axes = plt.subplots(1, len(phases), figsize=(4.2 * len(phases), 3.4), squeeze=False)
    for ax, ph in zip(axes[0], phases):
        c = curves[ph]
        ax.plot(c["steps"], c["loss"], color="#4c72b0", lw=1.2, label="train loss")
        for i, s in enumerate(c.get("checkpoints", [])):
            ax.axvline(s, color="#999999", ls=":", lw=0.8, label="checkpoint" if i == 0 else None)
        for i, s in enumerate(c.get("selected", [])):
            ax.axvline(s, color="#d62728", ls="--", lw=1.5, label="selected" if i == 0 else None)
            if s in c["steps"]:
                ax.plot([s], [c["loss"][c["steps"].index(s)]], marker="*", color="#d62728", ms=12)
        ax.set_title(ph)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7)
    fig.suptitle("Training loss per phase (selected checkpoints in red)")
    return _save(fig, path, dpi)


def eval_scores(comparison: dict[str, dict], path: Path, dpi: int) -> Path:
    groups = [("accuracy", "Knowledge (MMLU-branch): accuracy", (0, 1)),
              ("judge_1_10", "Skills (MT-Bench-branch): judge 1-10", (0, 10))]
    groups = [g for g in groups if any(r["metric"] == g[0] for r in comparison.values())]
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8), squeeze=False)
    for ax, (metric, title, lim) in zip(axes[0], groups):
        names = sorted(n for n, r in comparison.items() if r["metric"] == metric)
        x = range(len(names))
        base = [comparison[n].get("base") for n in names]
        trained = [comparison[n].get("trained") for n in names]
        w = 0.38
        if any(b is not None for b in base):
            ax.bar([i - w / 2 for i in x], [b or 0 for b in base], w, color="#bbbbbb", label="base")
            ax.bar([i + w / 2 for i in x], [t or 0 for t in trained], w, color="#4c72b0", label="trained")
        else:
            ax.bar(list(x), [t or 0 for t in trained], w, color="#4c72b0", label="model")
        ax.set_xticks(list(x), [short(n) for n in names], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(*lim)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    return _save(fig, path, dpi)
