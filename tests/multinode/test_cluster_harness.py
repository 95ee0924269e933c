"""Smoke tests of the two-node harness: the properties issue 11's tests rely on, each of which could fail.

One cluster for the module (head with 0 CPUs + one worker node in its own mount namespace) and one moto
S3 server; the driver is this process.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _on(ray, node_id: str):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"num_cpus": 1, "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)}


def test_two_alive_nodes_head_has_no_cpus_and_tasks_run_on_the_worker(two_node_cluster, cluster_ray):
    ray = cluster_ray
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 2
    by_id = {n["NodeID"]: n for n in alive}
    assert set(by_id) == {two_node_cluster.head_node_id, two_node_cluster.worker_node_id}
    assert by_id[two_node_cluster.head_node_id]["Resources"].get("CPU", 0) == 0
    assert by_id[two_node_cluster.worker_node_id]["Resources"]["CPU"] == two_node_cluster.worker_cpus

    @ray.remote(num_cpus=1)
    def where():
        import ray

        return ray.get_runtime_context().get_node_id()

    # No placement hint: the head has no CPU, so every CPU task can only land on the worker.
    assert set(ray.get([where.remote() for _ in range(4)])) == {two_node_cluster.worker_node_id}
    # And this process (the driver) is attached to the head node.
    assert ray.get_runtime_context().get_node_id() == two_node_cluster.head_node_id


def test_the_worker_disk_is_private(two_node_cluster, cluster_ray):
    ray = cluster_ray
    c = two_node_cluster
    name = f"probe-{uuid.uuid4().hex}"
    from_driver = c.private_dir / f"{name}-from-driver"
    from_driver.write_text("driver")

    @ray.remote(num_cpus=1)
    def on_worker(private_dir: str, name: str, worker_temp_dir: str):
        import os
        from pathlib import Path

        p = Path(private_dir)
        (p / f"{name}-from-worker").write_text("worker")
        Path(f"{name}-relative").write_text("cwd")  # relative to the worker process's cwd
        return {
            "sees_driver_file": (p / f"{name}-from-driver").exists(),
            "listing": sorted(os.listdir(p)),
            "cwd": os.getcwd(),
            "temp_dir": sorted(os.listdir(worker_temp_dir)),
        }

    got = ray.get(on_worker.options(**_on(ray, c.worker_node_id)).remote(str(c.private_dir), name,
                                                                          str(c.worker_temp_dir)))
    # The driver's file is not on the worker's disk, and the worker's file is not on the driver's.
    assert not got["sees_driver_file"]
    assert f"{name}-from-driver" not in got["listing"] and f"{name}-from-worker" in got["listing"]
    assert not (c.private_dir / f"{name}-from-worker").exists()
    assert from_driver.read_text() == "driver"
    # A relative path written by a task lands in the worker's private working directory, not the driver's.
    assert got["cwd"] == str(c.worker_cwd)
    assert not Path(c.worker_cwd, f"{name}-relative").exists() and not Path(f"{name}-relative").exists()
    # The worker's Ray temp dir (sessions, logs, runtime envs, spilled objects) exists only on its disk.
    assert any(e.startswith("session_") for e in got["temp_dir"])
    assert not c.worker_temp_dir.exists()
    # The harness can still look at the worker's disk from outside (through its mount namespace).
    assert c.worker_path(c.private_dir / f"{name}-from-worker").read_text() == "worker"
    assert c.worker_path(c.worker_cwd / f"{name}-relative").read_text() == "cwd"
    assert not c.worker_path(from_driver).exists()


def test_a_worker_task_writes_to_the_bucket_and_the_driver_reads_it(two_node_cluster, cluster_ray, s3_server):
    ray = cluster_ray
    uri = f"{s3_server.root_uri}/harness-smoke/{uuid.uuid4().hex}.txt"

    @ray.remote(num_cpus=1)
    def put(uri: str):
        import os

        import ray
        from pyarrow import fs

        # Only the standard AWS_* environment of the node points pyarrow at the server.
        filesystem, path = fs.FileSystem.from_uri(uri)
        with filesystem.open_output_stream(path) as f:
            f.write(b"written on the worker")
        return ray.get_runtime_context().get_node_id(), os.environ.get("AWS_ENDPOINT_URL")

    node, endpoint = ray.get(put.remote(uri))
    assert node == two_node_cluster.worker_node_id
    assert endpoint == s3_server.endpoint
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)  # the driver: same environment, same URI
    with filesystem.open_input_stream(path) as f:
        assert f.read() == b"written on the worker"
    key = uri.removeprefix(f"s3://{s3_server.bucket}/")
    assert key in s3_server.keys("runs/harness-smoke/")
    assert s3_server.read(key) == b"written on the worker"


def test_kill_worker_then_a_fresh_worker_joins_with_an_empty_disk(two_node_cluster, cluster_ray):
    ray = cluster_ray
    c = two_node_cluster
    old = c.worker_node_id

    @ray.remote(num_cpus=1)
    def leave_a_file(private_dir: str):
        import os

        import ray

        open(os.path.join(private_dir, "left-by-the-old-worker"), "w").close()
        return ray.get_runtime_context().get_node_id(), os.getpid()

    node, task_pid = ray.get(leave_a_file.options(**_on(ray, old)).remote(str(c.private_dir)))
    assert node == old
    old_pids = c.pids("worker")
    assert task_pid in old_pids  # the Ray core worker process carries the node's marker

    assert c.kill_worker() == old
    assert not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in old_pids)
    assert {n["NodeID"]: n["Alive"] for n in ray.nodes()}[old] is False

    new = c.start_worker()
    assert new != old and c.worker_node_id == new

    @ray.remote(num_cpus=1)
    def look(private_dir: str, worker_temp_dir: str):
        import os

        import ray

        sessions = [e for e in os.listdir(worker_temp_dir) if e.startswith("session_2")]
        return ray.get_runtime_context().get_node_id(), sorted(os.listdir(private_dir)), sessions

    node, listing, sessions = ray.get(look.options(**_on(ray, new)).remote(str(c.private_dir),
                                                                           str(c.worker_temp_dir)))
    assert node == new
    assert listing == []  # a fresh, empty private disk
    assert len(sessions) == 1  # only the new node's Ray session, nothing of the old one
    alive = [n for n in ray.nodes() if n["Alive"]]
    assert {n["NodeID"] for n in alive} == {c.head_node_id, new}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_ray_job_through_the_dashboard_runs_its_tasks_on_the_worker(two_node_cluster, s3_server):
    """The Jobs API at `jobs_url` (what `lab-ray submit` uses) with the cluster's token: the job's driver runs
    on the head with the S3 env, its CPU tasks on the worker."""
    from ray.job_submission import JobStatus

    c = two_node_cluster
    client = c.jobs()
    script = ("import os, ray; ray.init(); "
              "f = ray.remote(num_cpus=1)(lambda: ray.get_runtime_context().get_node_id()); "
              "print('DRIVER', ray.get_runtime_context().get_node_id(), 'TASK', ray.get(f.remote()), "
              "'S3', os.environ['AWS_ENDPOINT_URL'])")
    job = client.submit_job(entrypoint=f"python -c \"{script}\"")
    import time

    deadline = time.monotonic() + 600
    while (status := client.get_job_status(job)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(1)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, logs
    assert c.job_status(job) == "SUCCEEDED" and c.wait_job(job, timeout=10) == "SUCCEEDED"
    assert f"DRIVER {c.head_node_id} TASK {c.worker_node_id} S3 {s3_server.endpoint}" in logs
