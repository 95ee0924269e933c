"""`lab-ray submit` round trip against a real local Ray head (loopback only)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import secrets

import pytest

from fixture_paths import REPO

BIN = Path(sys.executable).parent
# Token auth on, with a token of the test's own: the head and every client get it
# through the environment, so no ~/.ray/auth_token (present or not) decides the result.
AUTH_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}


def _env() -> dict:
    return {**os.environ, **AUTH_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` in its own process group; killed (only it) at the end."""
    gcs, dash = _free_port(), _free_port()
    env = _env()
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
         # Ports of its own: another Ray on this machine must not hold the job agent's default port.
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}", f"--metrics-export-port={_free_port()}",
         f"--ray-client-server-port={_free_port()}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", dash), timeout=1):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("ray start --head exited early")
            time.sleep(1)
    else:
        pytest.fail("Ray dashboard did not come up")
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _submit(address: str, *command: str, timeout: int = 600):
    return subprocess.run(
        [str(BIN / "lab-ray"), "submit", "--address", address, f"submit.working_dir={REPO}", "--", *command],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=_env())


def test_submit_streams_logs_and_returns_success(ray_head):
    proc = _submit(ray_head, "config", "show", "run.name=submitted-by-test")
    assert proc.returncode == 0, proc.stderr
    assert "name: submitted-by-test" in proc.stdout  # the job's own output, streamed back
    assert "SUCCEEDED" in proc.stderr


def test_submit_runs_a_small_generate_on_the_cluster(ray_head, tmp_path):
    """A real `lab-ray generate` as a Ray Job: it attaches to the job's cluster (RAY_ADDRESS), not a
    new local one, and writes its run directory. The test teacher keeps it fast; the pipeline is real."""
    root = tmp_path / "runs"
    proc = _submit(ray_head, "generate", "run.name=submitted", f"run.root={root}", "sdg.samples_per_leaf=3",
                   "sdg.test_teacher=lab_ray.testing.fake_teachers:InstantTeacher", "sdg.progress=false",
                   timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "SUCCEEDED" in proc.stderr
    assert "kept" in proc.stdout  # the job's summary table, streamed back
    stats = json.loads((root / "submitted" / "data" / "stats.json").read_text())
    assert stats["total"]["rows"] == 3 * 4  # 4 leaves in the sample taxonomy, 3 tasks each
    assert list((root / "submitted" / "data" / "skills_train").glob("part-*.jsonl"))


def test_submit_forwards_credentials_without_printing_them(ray_head):
    """The teacher key and storage credentials of the submitting shell reach the job's environment
    (submit.forward_env); their values appear in no output and not in the job's config."""
    import httpx

    secret = {"LAB_RAY_TEACHER_API_KEY": "sk-" + secrets.token_hex(8), "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8)}
    proc = subprocess.run(
        [str(BIN / "lab-ray"), "submit", "--address", ray_head, f"submit.working_dir={REPO}", "--", "config", "show"],
        capture_output=True, text=True, timeout=600, cwd=REPO, env={**_env(), **secret, "HF_TOKEN": ""})
    assert proc.returncode == 0, proc.stderr
    assert not any(v in proc.stdout + proc.stderr for v in secret.values())
    job_id = proc.stderr.split("submitted ", 1)[1].split()[0]
    # The Jobs REST API with the cluster's token (this process's Ray client read RAY_AUTH_MODE at import)
    info = httpx.get(f"{ray_head}/api/jobs/{job_id}", timeout=30,
                     headers={"Authorization": f"Bearer {AUTH_ENV['RAY_AUTH_TOKEN']}"})
    assert info.status_code == 200, info.text[:300]
    env_vars = info.json()["runtime_env"]["env_vars"]
    assert {k: env_vars.get(k) for k in secret} == secret
    assert "HF_TOKEN" not in env_vars  # unset (empty) in the shell: not forwarded


def test_submit_returns_the_jobs_exit_status(ray_head, tmp_path):
    proc = _submit(ray_head, "taxonomy", "validate", str(tmp_path / "no-such-taxonomy"))
    assert proc.returncode == 1
    assert "does not exist" in proc.stdout
    job_id = proc.stderr.split("submitted ", 1)[1].split()[0]
    status = subprocess.run([str(BIN / "lab-ray"), "submit", "--address", ray_head, "--status", job_id],
                            capture_output=True, text=True, timeout=60, env=_env())
    assert status.returncode == 0 and "FAILED" in status.stdout
    logs = subprocess.run([str(BIN / "lab-ray"), "submit", "--address", ray_head, "--logs", job_id],
                          capture_output=True, text=True, timeout=60, env=_env())
    assert "does not exist" in logs.stdout


def test_submit_without_the_token_is_a_clear_error(ray_head, tmp_path):
    env = {k: v for k, v in _env().items() if k not in AUTH_ENV}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    proc = subprocess.run([str(BIN / "lab-ray"), "submit", "--address", ray_head, "--", "config", "show"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr and "internal error" not in proc.stderr


def test_submit_to_nothing_is_a_clear_error():
    proc = subprocess.run([str(BIN / "lab-ray"), "submit", "--address", f"http://127.0.0.1:{_free_port()}",
                           "--", "config", "show"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "cannot reach the Ray Jobs API" in proc.stderr
