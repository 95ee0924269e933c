"""Helpers for training tests: `lab-ray train` as a real subprocess, cleaned up by PID."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from proc_marks import kill_marked

REPO = Path(__file__).resolve().parents[2]

# Small, fast settings shared by the end-to-end tests (2 workers, tiny sequences, few steps).
TINY = ["train=cpu-tiny", "train.num_workers=2", "train.cpus_per_worker=0.5", "train.live=false",
        "train.knowledge_short.max_seq_len=256", "train.knowledge_long.max_seq_len=256",
        "train.skills.max_seq_len=256", "train.pack_window=64", "train.selection.max_heldout_rows=8",
        "ray.num_cpus=2"]


class TrainProc:
    def __init__(self, root: Path, name: str, extra: list[str]):
        self.mark = uuid.uuid4().hex
        self.log = root / f"{name}-{self.mark[:6]}.log"
        env = dict(os.environ, CI="1", LAB_RAY_TEST_MARK=self.mark, RAY_USAGE_STATS_ENABLED="0")
        args = [sys.executable, "-m", "lab_ray.cli", "train", f"run.root={root}", f"run.name={name}", *TINY, *extra]
        self.fh = open(self.log, "w")
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=self.fh, stderr=subprocess.STDOUT)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.fh.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        time.sleep(0.5)
        kill_marked(self.mark)  # Ray processes this run started, if any outlived it


@pytest.fixture
def train_proc():
    procs: list[TrainProc] = []

    def start(root: Path, name: str, extra: list[str] = ()) -> TrainProc:
        p = TrainProc(root, name, list(extra))
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.cleanup()
