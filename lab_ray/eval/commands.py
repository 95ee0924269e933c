"""`lab-ray eval MODEL [--base] [overrides]`: MMLU-branch + MT-Bench-branch on any model."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from lab_ray.errors import ConfigError


def register(sub, common) -> None:
    p = sub.add_parser("eval", parents=[common],
                       help="evaluate a model: knowledge (MMLU-branch) and skills (MT-Bench-branch) per leaf")
    p.add_argument("--base", action="store_true",
                   help="also score the base model (eval.base_model) and show base vs trained")
    # MODEL, then overrides; options may come anywhere (argparse alone cannot mix them after a positional)
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="MODEL [key=value ...]",
                   help="a checkpoint / Hugging Face model directory, or SmolLM2-135M-Instruct; then overrides")
    p.set_defaults(handler=_eval, positional_range=(1, 1), prepare=_late_options,
                   usage="eval MODEL [--base] [key=value ...] (MODEL: a checkpoint directory or SmolLM2-135M-Instruct)")


def _fmt(value, metric: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if metric == "accuracy" else f"{value:.2f}"


def _fmt_delta(value, metric: str) -> str:
    if value is None:
        return "-"
    text = f"{value * 100:+.0f} pt" if metric == "accuracy" else f"{value:+.2f}"
    return f"[green]{text}[/]" if value > 0 else (f"[red]{text}[/]" if value < 0 else text)


def results_table(result: dict) -> Table:
    has_base = result.get("base") is not None
    table = Table(title=f"Evaluation of {result['model']}" + (f" vs {result['base_model']}" if has_base else ""))
    table.add_column("leaf")
    table.add_column("kind")
    table.add_column("metric")
    table.add_column("n", justify="right")
    if has_base:
        table.add_column("base", justify="right")
    table.add_column("model", justify="right")
    if has_base:
        table.add_column("delta", justify="right")
    for leaf, row in result["comparison"].items():
        metric = "accuracy" if row["metric"] == "accuracy" else "judge 1-10"
        cells = [leaf, row["kind"], metric, str(row["n"])]
        if has_base:
            cells.append(_fmt(row["base"], row["metric"]))
        cells.append(_fmt(row["trained"], row["metric"]))
        if has_base:
            cells.append(_fmt_delta(row["delta"], row["metric"]))
        table.add_row(*cells)
    s, b = result["summary"]["trained"], (result["summary"]["base"] or {})
    parts = []
    for key, metric, label in (("mmlu_branch", "accuracy", "MMLU-branch"), ("mt_bench_branch", "judge", "MT-Bench-branch")):
        if s.get(key) is not None:
            parts.append(f"{label} {_fmt(s[key], metric)}" + (f" (base {_fmt(b.get(key), metric)})" if has_base else ""))
    table.caption = "; ".join(parts)
    return table


def _late_options(ns: argparse.Namespace) -> list[str]:
    """Options given after MODEL (argparse's REMAINDER keeps them as words)."""
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--base", action="store_true")
    late.add_argument("--config")
    late.add_argument("--debug", action="store_true")
    known, rest = late.parse_known_args(ns.args)
    unknown = [a for a in rest if a.startswith("--")]
    if unknown:
        raise ConfigError(f"eval: unknown option {unknown[0]} (options: --base, --config FILE, --debug)")
    ns.base = ns.base or known.base
    ns.config = known.config or ns.config
    return rest


def _eval(ns: argparse.Namespace, cfg, positional) -> int:
    from lab_ray.eval.runner import run_eval

    result = run_eval(cfg, positional[0], base=bool(ns.base or cfg.eval.compare_base))
    console = Console()
    if not console.is_terminal:  # piped or captured: do not cut leaf paths to 80 columns
        console = Console(width=max(console.width, 160))
    console.print(results_table(result))
    gen = result.get("generation") or {}
    for leaf, g in gen.items():
        console.print(f"[dim]{leaf}: {g.get('valid', 0)} teacher-written MCQs from {g.get('requests', 0)} requests"
                      + (f", {g['cloze']} cloze MCQs from seed Q/A (fallback)" if g.get("cloze") else "") + "[/]")
    console.print(f"results: {result['path']}")
    return 0
