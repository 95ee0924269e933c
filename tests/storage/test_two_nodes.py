"""Runs on two Ray nodes that share no disk, with the run root in S3.

The head runs with 0 CPUs (like cluster/*.yaml), so every stage actor, finalize
task, shard writer and training worker runs on the worker node, whose /tmp and
working directory are a private tmpfs; the job's driver runs on the head. The
only thing the two share is the S3 server. Before the storage layer the driver
looked for shards on its own disk and found none ("no generated shards"), and a
rerun found nothing to resume. `lab-ray run` runs with the real CPU teacher
pinned to the head; elsewhere the instant test teacher stands in for it where
the point is where every byte goes, or what survives a lost node.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from fixture_paths import REPO

pytestmark = pytest.mark.slow
LEAVES = "compositional_skills/writing/poetry/haiku,knowledge/geography/islands/varrow_island"
# The head (0 CPUs, like the cluster files) carries a custom resource the teacher can be pinned to.
CLUSTER_OPTIONS = {"head_resources": {"teacher_node": 1}}
INSTANT = ["sdg.test_teacher=lab_ray.testing.fake_teachers:InstantTeacher"]


def _submit(cluster, run: str, overrides: list[str] = INSTANT, leaves: str = LEAVES, quota: int = 5,
            command: str = "generate", wait: bool = True) -> str:
    """`lab-ray submit [--no-wait] -- COMMAND` on the cluster: the output (wait) or the job id (no wait)."""
    cmd = [sys.executable, "-m", "lab_ray.cli", "submit", "--address", cluster.jobs_url, *([] if wait else ["--no-wait"]),
           "--", command, "run.root=s3://lab-ray-test/runs", f"run.name={run}", *overrides]
    if command in ("generate", "run"):
        cmd += [f"sdg.leaves=[{leaves}]", f"sdg.samples_per_leaf={quota}", "sdg.progress=false"]
    p = subprocess.run(cmd, cwd=REPO, env=cluster.subprocess_env(), capture_output=True, text=True,
                       timeout=1500 if wait else 300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    return out if wait else p.stdout.strip().splitlines()[-1]


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


# The whole method, as small as it runs: two phases (knowledge_long off) of one optimizer step, each
# selected by eval (the scorers run on the worker), and an eval of one chunk and one skills question.
TINY_RUN = ["pipeline.require_every_leaf=false", "pipeline.eval_base=false", "train.knowledge_long.enabled=false",
            "eval.knowledge.max_chunks_per_leaf=1", "eval.knowledge.attempts_per_chunk=1",
            "sdg.instruction_max_tokens=16", "sdg.response_max_tokens=24", "sdg.batch_size=4",
            "train.num_workers=2", "train.cpus_per_worker=0.5", "train.live=false", "train.selection.max_heldout_rows=4",
            *[f"train.{ph}.{k}" for ph in ("knowledge_short", "knowledge_long", "skills")
              for k in ("max_steps=1", "checkpoint_every=1", "max_seq_len=256")],
            "eval.skills.max_questions_per_leaf=1"]


def _teacher_replicas(actors: list[dict]) -> list[dict]:
    return [a for a in actors if "CPUTeacher" in (a.get("class_name") or "")]


def test_run_on_two_nodes_keeps_every_artifact_in_the_bucket_and_reaches_the_teacher_through_handles(
        two_node_cluster, s3_server):
    """`lab-ray submit -- run`: generate, train + select, eval and report on two nodes with no shared
    disk. The real CPU teacher is pinned to the head (its custom resource; the head has 0 CPUs);
    every stage actor, both Ray Train workers and the checkpoint scorers run on the worker node.
    teacher.http=false runs Serve with no HTTP proxy at all, so a client on the loopback URL would
    find nothing listening: the stages, scorers and eval reach the replica through DeploymentHandles.
    Every artifact is in the bucket, no node has a run directory, and a rerun finds every step done
    and deploys no teacher."""
    cluster, run = two_node_cluster, "full"
    teacher = ["teacher.num_cpus=0", "teacher.resources={teacher_node: 1}", "teacher.http=false"]
    out = _submit(cluster, run, [*teacher, *TINY_RUN], quota=4, command="run")
    steps = json.loads(s3_server.read(f"runs/{run}/run.json"))["steps"]
    print("wall seconds per step:", {k: round(v.get("wall_s", 0)) for k, v in steps.items()})
    assert {k: v["status"] for k, v in steps.items()} == dict.fromkeys(
        ("validate", "generate", "train", "eval", "report"), "done"), out[-3000:]
    # generation: every stage was answered, none by an error
    stats = json.loads(s3_server.read(f"runs/{run}/data/stats.json"))
    assert stats["total"]["rows"] == 8 and "teacher_error" not in stats["total"]["dropped"], stats["total"]
    for leaf, st in stats["leaves"].items():
        assert all(s["prompt_tokens"] > 0 for s in st["stages"] if s["stage"] != "dedup"), (leaf, st["stages"])
    # training and eval: checkpoint and results are bucket URIs; the report is there too
    bucket_run = f"s3://{s3_server.bucket}/runs/{run}/"
    final = steps["train"]["final_checkpoint"]
    assert final.startswith(bucket_run + "train/"), final
    keys = s3_server.keys(f"runs/{run}/")
    assert any(k.endswith("model.safetensors") and k.startswith(final[len("s3://lab-ray-test/"):]) for k in keys)
    assert steps["eval"]["path"].startswith(bucket_run), steps["eval"]["path"]
    for key in ("report/report.md", "report/report.html", "config.yaml", "train/journal.json"):
        assert f"runs/{run}/{key}" in keys, key
    # where things ran: the teacher on the head, its callers and the train workers on the worker
    actors = cluster.actors()
    replicas = {a["node_id"] for a in _teacher_replicas(actors)}
    callers = {a["node_id"] for a in actors if any(f"MapBatches({k}" in (a.get("class_name") or "")
                                                   for k in ("Generate", "Judge"))}
    trainers = {a["node_id"] for a in actors if "RayTrainWorker" in (a.get("class_name") or "")}
    assert replicas == {cluster.head_node_id}, replicas
    assert callers and callers <= {cluster.worker_node_id}, callers
    assert trainers == {cluster.worker_node_id}, trainers
    assert not list(cluster.worker_path(cluster.worker_cwd).rglob("runs")), "the worker wrote a local run dir"
    assert not (REPO / "runs" / run).exists()

    # rerun: every step is done in the bucket; no teacher is deployed (so no teacher call)
    deployed = len(_teacher_replicas(actors))
    again = _submit(cluster, run, [*teacher, *TINY_RUN], quota=4, command="run")
    assert "generate:" not in again and "train:" not in again and "eval:" not in again, again[-3000:]
    assert len(_teacher_replicas(cluster.actors())) == deployed
    redone = json.loads(s3_server.read(f"runs/{run}/run.json"))["steps"]
    assert all(redone[k] == steps[k] for k in ("generate", "train", "eval"))


def _shard_ids(s3_server, run: str) -> list[str]:
    import pyarrow.parquet as pq

    fs = s3_server.filesystem()
    ids = []
    for key in s3_server.keys(f"runs/{run}/sdg/shards/part-"):
        ids += pq.read_table(f"{s3_server.bucket}/{key}", filesystem=fs, columns=["id"]).column("id").to_pylist()
    return ids


def test_the_worker_lost_mid_generation_then_a_fresh_one_the_run_ends_with_the_ids_of_an_uninterrupted_one(
        two_node_cluster, s3_server):
    """The only CPU node dies while generation is part-way, and a new
    node with an empty disk joins. The job either carries on (Ray Data restarts its actors on the new
    node) or fails and is submitted again (it resumes from the bucket): either way every row of the
    plan is stored exactly once and the ids are those of the same run never interrupted."""
    cluster, quota = two_node_cluster, 80  # 160 rows: the writer stores 64 a shard
    batch = ["sdg.batch_size=4", "sdg.actors_per_stage=1"]
    _submit(cluster, "whole", [*INSTANT, *batch], quota=quota)
    whole = _shard_ids(s3_server, "whole")
    assert len(whole) == len(set(whole)) and whole

    # 1 s a teacher call, 4 rows a call, one actor a stage: generation takes minutes; the node
    # dies 10 s after the plan is stored (a kill on the first shard raced the writer on CI: it
    # had every row queued and stored them all while the test's poll came round).
    slow = [*INSTANT, "sdg.test_teacher_args.latency_s=1.0", *batch]
    job = _submit(cluster, "lost", slow, quota=quota, wait=False)
    deadline = time.monotonic() + 600
    while "runs/lost/sdg/plan.json" not in s3_server.keys("runs/lost/sdg/"):
        assert time.monotonic() < deadline, cluster.job_logs(job)[-3000:]
        assert cluster.job_status(job) != "FAILED", cluster.job_logs(job)[-3000:]
        time.sleep(0.2)
    time.sleep(10)
    part_way = len(_shard_ids(s3_server, "lost"))
    dead = cluster.kill_worker()
    fresh = cluster.start_worker()
    assert fresh != dead
    state = cluster.wait_job(job, timeout=600)
    if state != "SUCCEEDED":  # the node's loss ended the job (or stalled it): the same command again
        subprocess.run([sys.executable, "-m", "lab_ray.cli", "submit", "--address", cluster.jobs_url, "--stop", job],
                       cwd=REPO, env=cluster.subprocess_env(), capture_output=True, timeout=120)
        cluster.wait_job(job, timeout=120)
        out = _submit(cluster, "lost", [*INSTANT, *batch], quota=quota)
        assert "resumed 0 of" not in out, out[-2000:]
    lost = _shard_ids(s3_server, "lost")
    assert part_way < len(whole), (part_way, len(whole))
    assert len(lost) == len(set(lost)), "a row was stored twice"
    assert set(lost) == set(whole)
    stats = json.loads(s3_server.read("runs/lost/data/stats.json"))
    assert stats["total"]["rows"] == len(whole)
    print(f"worker lost after {part_way} of {len(whole)} rows; job {state}")


def _metrics(s3_server, run: str) -> list[dict]:
    key = f"runs/{run}/train/metrics.jsonl"
    if key not in s3_server.keys(key):
        return []
    return [json.loads(line) for line in s3_server.read(key).decode().splitlines() if line.strip()]


def test_the_worker_lost_mid_training_then_a_fresh_one_the_phase_resumes_from_the_bucket(two_node_cluster, s3_server):
    """Both training workers run on the worker node; it dies once the phase has a checkpoint in the
    bucket, and a node with an empty disk joins. Ray Train (FailureConfig) restarts the workers
    there; they resume from the bucket's checkpoint and the phase finishes. Nothing of the run was
    on the lost node's disk but scratch."""
    sys.path.insert(0, str(REPO / "tests" / "train"))
    from datagen import write_run_data

    from lab_ray.storage import StoragePath

    cluster, run = two_node_cluster, "trained"
    local = write_run_data(cluster.base / "train-data", n_knowledge_short=8, n_knowledge_long=24, n_skills=8)
    StoragePath(f"s3://{s3_server.bucket}/runs/{run}/data").upload_dir(local)
    tiny = ["train=cpu-tiny", "train.num_workers=2", "train.cpus_per_worker=0.5", "train.live=false",
            "train.knowledge_long.max_seq_len=256", "train.pack_window=64",
            "train.start_phase=knowledge_long", "train.knowledge_long.max_steps=3",
            "train.knowledge_long.checkpoint_every=1", "train.knowledge_long.replay_ratio=0",
            "train.skills.enabled=false", "train.keep_checkpoints=2", "train.selection.max_heldout_rows=4",
            "train.max_failures=2"]
    job = _submit(cluster, run, tiny, command="train", wait=False)
    deadline = time.monotonic() + 900
    while not any(r.get("phase") == "knowledge_long" and r.get("checkpoint") for r in _metrics(s3_server, run)):
        assert time.monotonic() < deadline, cluster.job_logs(job)[-3000:]
        assert cluster.job_status(job) != "FAILED", cluster.job_logs(job)[-3000:]
        time.sleep(0.5)
    before = _metrics(s3_server, run)
    saved = [r["step"] for r in before if r.get("phase") == "knowledge_long" and r.get("checkpoint")]
    assert max(saved) < 3
    cluster.kill_worker()
    cluster.start_worker()
    state = cluster.wait_job(job, timeout=1200)
    logs = cluster.job_logs(job)
    assert state == "SUCCEEDED", logs[-4000:]
    after = _metrics(s3_server, run)[len(before):]
    steps = [r["step"] for r in after if r.get("phase") == "knowledge_long" and r.get("event") == "step"]
    # restarted after the last checkpoint in the bucket (up to +2: more may have been stored after we looked)
    assert steps and 1 < steps[0] <= max(saved) + 2 and steps[-1] == 3, (steps, saved)
    journal = json.loads(s3_server.read(f"runs/{run}/train/journal.json"))
    assert journal["phases"]["knowledge_long"]["status"] == "done"
    assert journal["final_checkpoint"].startswith(f"s3://{s3_server.bucket}/runs/{run}/train/")
    assert not list(cluster.worker_path(cluster.worker_cwd).rglob("runs"))
