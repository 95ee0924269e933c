"""`lab-ray status`: a generation run killed mid-way (SIGKILL), the same run resumed to the end,
and a directory that is not a run. The runs are real `lab-ray generate` processes (instant teacher)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fixture_paths import REPO
from proc_marks import kill_marked

pytestmark = pytest.mark.slow

LEAVES = ["compositional_skills/writing/poetry/haiku", "knowledge/geography/islands/varrow_island"]
QUOTA = 160  # the writer stores 64 rows a batch: a kill can fall between two of its five batches


def _generate(root: Path, latency_s: float, mark: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, CI="1", LAB_RAY_TEST_MARK=mark, RAY_USAGE_STATS_ENABLED="0")
    args = [sys.executable, "-m", "lab_ray.cli", "generate", f"run.root={root}", "run.name=st",
            f"taxonomy.path={REPO / 'taxonomy'}", f"sdg.leaves=[{','.join(LEAVES)}]", f"sdg.samples_per_leaf={QUOTA}",
            "sdg.batch_size=4", "sdg.progress_interval_s=0.5", "ray.num_cpus=4",
            "sdg.test_teacher=lab_ray.testing.fake_teachers:InstantTeacher", f"sdg.test_teacher_args.latency_s={latency_s}"]
    with open(log, "w") as fh:  # a file, not a pipe nobody reads while the run goes
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)


def _status(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab_ray.cli", "status", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def mark():
    m = uuid.uuid4().hex
    yield m
    kill_marked(m)


def test_status_of_a_killed_then_finished_generation(tmp_path, mark):
    run = tmp_path / "st"
    progress = run / "sdg" / "progress.json"
    proc = _generate(tmp_path, 0.4, mark, tmp_path / "first.log")
    deadline = time.time() + 600
    snap = None
    while time.time() < deadline and proc.poll() is None:
        try:
            snap = json.loads(progress.read_text())
        except (OSError, ValueError):
            snap = None
        # small runs reach the writer in few large blocks: kill once a first shard is on disk
        if snap and snap["state"] == "running" and list((run / "sdg" / "shards").glob("part-*.parquet")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "generation ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
    # The driver and every Ray process in one sweep, as a lost machine: killing the driver
    # first let the writer actor store its queued batches meanwhile (CI, 2026-12-02: all of them).
    kill_marked(mark)
    proc.wait(30)

    res = _status(run, "--json")
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert st["state"] == "interrupted" and st["steps"]["generate"] == "interrupted"
    g = st["generation"]
    # Part-way as a rule; a writer that had every batch queued when its first shard landed may
    # store them all before the sweep reaches it: still interrupted (finalize never ran).
    assert g["state"] == "interrupted" and g["total"] == QUOTA * len(LEAVES) and 0 < g["rows"] <= g["total"]
    assert set(g["leaves"]) == set(LEAVES) and all(v["quota"] == QUOTA for v in g["leaves"].values())
    assert sum(v["done"] for v in g["leaves"].values()) == g["rows"] and g["shards"] > 0
    text = _status(run)
    assert text.returncode == 0
    (tmp_path / "status-killed.txt").write_text(text.stdout)
    assert "generate interrupted" in text.stdout and f"is gone; rerun the same command to resume" in text.stdout
    for leaf in LEAVES:
        assert leaf in text.stdout

    # the same command again: resumes and finishes; status now shows what was accepted per leaf
    proc = _generate(tmp_path, 0.0, mark, tmp_path / "second.log")
    assert proc.wait(900) == 0, (tmp_path / "second.log").read_text()[-3000:]
    stats = json.loads((run / "data" / "stats.json").read_text())
    res = _status(run, "--json")
    st = json.loads(res.stdout)
    assert st["steps"]["generate"] == "done" and st["generation"]["state"] == "done"
    assert {leaf: v["accepted"] for leaf, v in st["generation"]["accepted"].items()} == \
        {leaf: s["kept"] for leaf, s in stats["leaves"].items()}
    assert st["generation"]["rows"] == QUOTA * len(LEAVES) and st["last_error"] is None
    # by run name under run.root too, in text
    text = _status("st", f"run.root={tmp_path}")
    assert text.returncode == 0 and f"generation: done, {stats['total']['kept']} accepted" in text.stdout


def test_status_of_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    res = _status(tmp_path)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a lab-ray run" in lines[0] and str(tmp_path) in lines[0], res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""
    res = _status(tmp_path / "missing", "--json")
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
