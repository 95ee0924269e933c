"""A run's files: where they live and how they are written.

Every artifact of a run lives under one run directory (`run.root/run.name`).
Writes are atomic: the bytes go to a temporary name beside the target and are
renamed over it when complete, so a reader (or a resumed run) sees the whole
old file or the whole new one, never half of either. Directories of outputs
are built under a `.tmp` name and swapped in the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any


def run_dir(cfg) -> Path:
    return Path(cfg.run.root) / cfg.run.name


def atomic_write_bytes(path: Path | str, data: bytes, fsync: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path | str, text: str, fsync: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync)


def atomic_write_json(path: Path | str, data: Any, indent: int | None = 1, **kw) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str, **kw))


def read_json(path: Path | str, default: Any = None) -> Any:
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else default


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written directory in for `final` (the old one is removed first)."""
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


class Journal:
    """A JSON record of what a multi-step job has finished, saved atomically
    after every change, so a rerun knows what to skip (run.json, train/journal.json)."""

    def __init__(self, path: Path, empty: dict):
        self.path = Path(path)
        self.data = read_json(self.path, default=None) or json.loads(json.dumps(empty))

    def save(self) -> None:
        atomic_write_json(self.path, self.data, indent=2)

    def entry(self, section: str, name: str) -> dict:
        return self.data[section].setdefault(name, {"status": "pending"})

    def is_done(self, section: str, name: str) -> bool:
        return self.data[section].get(name, {}).get("status") == "done"

    def finish(self, section: str, name: str, **info) -> None:
        """Mark `name` done (with when, and what `info` says) and save."""
        self.data[section][name] = {"status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        self.save()
