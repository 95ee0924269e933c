"""`lab-ray` command line.

Every subcommand takes `--config FILE` and trailing `key=value` overrides.
Stage packages add their own subcommands through a `register(subparsers,
common)` function listed in STAGE_COMMANDS, so this module stays a thin
router. A subcommand that needs the configuration says so in its parser
defaults: `positional_range=(min, max)` (positional words in `ns.args`
besides key=value overrides), `usage`, and optionally `prepare(ns) -> words`
to pick its own late options out first. The router then splits the words,
checks the count, loads the config and calls `handler(ns, cfg, positional)`.
So no command module imports the config loader or this router: imports go
cli -> config -> stage packages, one way.
Errors the user can fix print one line per problem and exit non-zero;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Sequence

from lab_ray.errors import ConfigError, LabRayError

# Modules that contribute subcommands: each defines register(subparsers, common).
STAGE_COMMANDS = [
    "lab_ray.taxonomy.commands",
    "lab_ray.config_commands",
    "lab_ray.teacher.commands",
    "lab_ray.sdg.commands",
    "lab_ray.train.commands",
    "lab_ray.eval.commands",
    "lab_ray.report.commands",
    "lab_ray.pipeline.commands",
    "lab_ray.pipeline.submit",
    "lab_ray.status",
]


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand accepts (so they may follow the subcommand)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE", help="YAML file merged over conf/ defaults")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional words vs key=value overrides."""
    positional = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    return positional, overrides


def _load(ns: argparse.Namespace) -> tuple[list[str], object]:
    from lab_ray.config import load_config

    prepare = getattr(ns, "prepare", None)
    words = prepare(ns) if prepare else list(ns.args)
    positional, overrides = split_args(words)
    lo, hi = ns.positional_range
    if not lo <= len(positional) <= hi:
        got = f"got {' '.join(positional)!r}" if positional else "got none"
        raise ConfigError(f"usage: lab-ray {ns.usage} ({got})")
    return positional, load_config(overrides, ns.config)


def build_parser() -> argparse.ArgumentParser:
    common = common_parser()
    parser = argparse.ArgumentParser(
        prog="lab-ray",
        description="LAB (Large-scale Alignment for chatBots) on Ray: taxonomy -> synthetic data -> phased training.",
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in STAGE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            # A command whose optional dependency is not installed is left out.
            if e.name and module_name.startswith(e.name):
                continue
            raise
        module.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        ns = parser.parse_args(argv)
        handler: Callable[..., int] = ns.handler
        if hasattr(ns, "positional_range"):
            positional, cfg = _load(ns)
            return int(handler(ns, cfg, positional) or 0)
        return int(handler(ns) or 0)
    except LabRayError as e:
        if debug:
            raise
        for problem in e.problems:
            print(str(problem), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence for users
        if debug:
            raise
        print(f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
