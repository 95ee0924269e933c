"""A generate job on two Ray nodes that share no disk, with the run root in S3.

The head runs with 0 CPUs (like cluster/*.yaml), so every stage actor, finalize
task and shard writer runs on the worker node, whose /tmp and working directory
are a private tmpfs; the job's driver runs on the head. The only thing the two
share is the S3 server. Before the storage layer the driver looked for shards on
its own disk and found none ("no generated shards"), and a rerun found nothing
to resume. The instant test teacher stands in for the teacher: the point is
where every byte goes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fixture_paths import REPO

pytestmark = pytest.mark.slow
LEAVES = "compositional_skills/writing/poetry/haiku,knowledge/geography/islands/varrow_island"


def _submit(cluster, run: str) -> str:
    cmd = [sys.executable, "-m", "lab_ray.cli", "submit", "--address", cluster.jobs_url, "--",
           "generate", "run.root=s3://lab-ray-test/runs", f"run.name={run}", f"sdg.leaves=[{LEAVES}]",
           "sdg.samples_per_leaf=5", "sdg.test_teacher=lab_ray.testing.fake_teachers:InstantTeacher",
           "sdg.progress=false"]
    p = subprocess.run(cmd, cwd=REPO, env=cluster.subprocess_env(), capture_output=True, text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    return out


def test_generate_on_two_nodes_keeps_everything_in_the_bucket(two_node_cluster, s3_server):
    cluster = two_node_cluster
    out = _submit(cluster, "two")
    assert "resumed 0 of 10 tasks" in out, out[-2000:]
    keys = s3_server.keys("runs/two/")
    for key in ("runs/two/sdg/plan.json", "runs/two/data/stats.json", "runs/two/data/recipe.yaml"):
        assert key in keys, key
    for prefix in ("runs/two/sdg/shards/part-", "runs/two/data/skills_train/part-",
                   "runs/two/data/knowledge_train/part-", "runs/two/samples/part-"):
        assert any(k.startswith(prefix) for k in keys), prefix
    # no run directory on either node's disk
    assert not list(cluster.worker_path(cluster.worker_cwd).rglob("runs")), "the worker wrote a local run dir"
    assert not (REPO / "runs" / "two").exists()
    # a rerun finds every task done in the bucket (the shards were written on the worker, read by the head)
    again = _submit(cluster, "two")
    assert "resumed 10 of 10 tasks" in again, again[-2000:]
