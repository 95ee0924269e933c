"""Shared test fixtures: the real `lab-ray` CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `lab-ray ARGS` in-process; returns (exit code, stdout, stderr)."""
    from lab_ray.cli import main

    def run(*args, cwd: Path | None = None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
