"""A real two-node Ray cluster with node-private disks and a real S3 server, all on 127.0.0.1.

Plain module (not a conftest) so any test directory can import it:

    from multinode.cluster_harness import start_s3_server, start_two_node_cluster

- `start_s3_server()`: moto's server mode (`ThreadedMotoServer`) on a free loopback port, one bucket.
- `start_two_node_cluster(s3=...)`: a head started like `cluster/aws.yaml` (`ray start --head --num-cpus=0`,
  token auth, dashboard on loopback) and ONE worker node started inside its own mount namespace
  (`unshare -m --propagation private`) with a private tmpfs mounted over /tmp. The worker's Ray temp dir,
  its working directory and `private_dir` live on that tmpfs: the head/driver cannot see them and the
  worker cannot see the head's. /work (repo, venv) and $HOME (the Hugging Face cache) stay shared, like a
  node image.

Every process is started with a unique marker in its environment (`LAB_RAY_HARNESS_MARK`), which Ray passes
on to everything it spawns (raylet, GCS, dashboard, core workers, job drivers). Teardown and `kill_worker()`
SIGKILL exactly the processes carrying our marker (and our own process groups); nothing else on the machine
is touched, and `ray stop` is never run.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
MARK_VAR = "LAB_RAY_HARNESS_MARK"
BUCKET = "lab-ray-test"


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all bound at once, so they differ from each other)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- processes


def marked_pids(mark: str) -> list[int]:
    """Processes whose environment carries exactly `MARK_VAR=mark` (ours, and everything they spawned)."""
    needle = f"{MARK_VAR}={mark}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0"):
                pids.append(int(d.name))
        except OSError:  # gone, or a kernel thread
            continue
    return pids


def kill_marked(mark: str, pgids: tuple[int, ...] = (), timeout: float = 30) -> None:
    """SIGKILL our process groups and every process carrying `mark`, until none is left."""
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in marked_pids(mark) if p != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes marked {mark} survive SIGKILL: {pids}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- S3


@dataclass
class S3Server:
    """moto's S3 server on loopback. `env` holds what boto3 and pyarrow need (set in this process too)."""

    endpoint: str
    bucket: str
    env: dict[str, str]
    _server: object = field(repr=False, default=None)

    @property
    def root_uri(self) -> str:
        return f"s3://{self.bucket}/runs"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])

    def filesystem(self):
        """A pyarrow S3FileSystem pointed at this server explicitly (paths are `bucket/key`)."""
        from pyarrow import fs

        return fs.S3FileSystem(endpoint_override=self.endpoint, access_key=self.env["AWS_ACCESS_KEY_ID"],
                               secret_key=self.env["AWS_SECRET_ACCESS_KEY"], region=self.env["AWS_DEFAULT_REGION"],
                               allow_bucket_creation=False)

    def keys(self, prefix: str = "") -> list[str]:
        """Every key in the bucket under `prefix` (a key prefix, or an `s3://bucket/...` URI), sorted."""
        if prefix.startswith("s3://"):
            b, _, prefix = prefix[5:].partition("/")
            assert b == self.bucket, f"{b} is not this server's bucket {self.bucket}"
        out = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


def start_s3_server(bucket: str = BUCKET) -> S3Server:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # pyarrow's S3 client would otherwise try the EC2 metadata endpoint first.
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    s3 = S3Server(endpoint=endpoint, bucket=bucket, env=env, _server=server)
    s3.client().create_bucket(Bucket=bucket)
    return s3


@contextlib.contextmanager
def patched_environ(values: dict[str, str]):
    """Set `values` in os.environ, restoring the previous values (or absence) afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- Ray


def _refresh_ray_auth_config() -> None:
    """Make this process's Ray (C++ config + cached token) re-read RAY_AUTH_MODE / RAY_AUTH_TOKEN."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


class _EarlyExit(RuntimeError):
    pass


@dataclass
class WorkerNode:
    proc: subprocess.Popen
    mark: str
    node_id: str | None = None


class TwoNodeCluster:
    """Head (0 CPUs, dashboard, GCS) + one worker node in a private mount namespace. See module doc."""

    def __init__(self, *, s3: S3Server | None = None, worker_cpus: int = 2, head_object_store: int = 500 * 2**20,
                 worker_object_store: int = 1 * 2**30, worker_tmpfs_size: str = "4g", extra_env: dict | None = None,
                 start_timeout: float = 240, head_resources: dict | None = None):
        self.id = secrets.token_hex(4)
        # Short: Ray's unix socket paths under the temp dirs must stay under 107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix=f"lrmn-{self.id}-", dir="/tmp"))
        self.head_temp_dir = self.base / "head"
        # The worker's paths: on its private tmpfs (over /tmp) inside its namespace. On the host side
        # `private_dir` exists too (a different, empty directory): the driver can write there to prove privacy.
        self.worker_temp_dir = self.base / "worker"
        self.worker_cwd = self.base / "worker-cwd"
        self.private_dir = self.base / "private"
        self.head_temp_dir.mkdir()
        self.private_dir.mkdir()
        self.worker_cpus = worker_cpus
        self.head_resources = dict(head_resources or {})  # custom resources of the head (it has 0 CPUs)
        self.head_object_store = head_object_store
        self.worker_object_store = worker_object_store
        self.worker_tmpfs_size = worker_tmpfs_size
        self.start_timeout = start_timeout
        self.token = secrets.token_hex(16)
        self.auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.s3 = s3
        # What every client of this cluster (driver, `ray`, `lab-ray submit`) needs, and what both nodes get.
        self.env: dict[str, str] = {**self.auth_env, **(s3.env if s3 else {}), **(extra_env or {})}
        self._node_env = {
            **os.environ, **self.env,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A dead node is noticed in ~3 s instead of ~15 s (fault tests).
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }
        self._node_env.pop("RAY_ADDRESS", None)
        self._head: subprocess.Popen | None = None
        self._head_mark = f"{self.id}-head"
        self._workers: list[WorkerNode] = []
        self._logs: list = []
        self.head_node_id: str | None = None

        (self.gcs_port, self.dashboard_port, *self._head_ports) = free_ports(9)
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.jobs_url = f"http://127.0.0.1:{self.dashboard_port}"
        atexit.register(self.stop)

    # ------------------------------------------------------------------ lifecycle

    @property
    def worker(self) -> WorkerNode:
        return self._workers[-1]

    @property
    def worker_node_id(self) -> str:
        return self.worker.node_id

    def start(self) -> TwoNodeCluster:
        try:
            self._start_head()
            self.start_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def _log(self, name: str):
        f = open(self.base / f"{name}.log", "wb")  # noqa: SIM115 (closed by stop())
        self._logs.append(f)
        return f

    def _start_head(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            try:
                return self._start_head_once()
            except _EarlyExit as e:
                if attempt == attempts:
                    raise RuntimeError(str(e)) from None
                print(f"[cluster_harness] head start attempt {attempt} failed, retrying:\n{e}", file=sys.stderr)
                # Fresh ports: the dead attempt's may linger in TIME_WAIT or be taken by now.
                (self.gcs_port, self.dashboard_port, *self._head_ports) = free_ports(9)
                self.address = f"127.0.0.1:{self.gcs_port}"
                self.jobs_url = f"http://127.0.0.1:{self.dashboard_port}"
                shutil.rmtree(self.head_temp_dir, ignore_errors=True)
                self.head_temp_dir.mkdir()

    def _start_head_once(self) -> None:
        agent, agent_grpc, rt_env, metrics, client, nm, om = self._head_ports
        cmd = [RAY, "start", "--head", "--block", "--num-cpus=0", "--node-ip-address=127.0.0.1",
               f"--port={self.gcs_port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", f"--temp-dir={self.head_temp_dir}",
               f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
               f"--ray-client-server-port={client}", f"--node-manager-port={nm}", f"--object-manager-port={om}",
               f"--object-store-memory={self.head_object_store}", "--disable-usage-stats"]
        if self.head_resources:
            cmd.append(f"--resources={json.dumps(self.head_resources)}")
        self.head_cmd = cmd
        self._head = subprocess.Popen(cmd, env={**self._node_env, MARK_VAR: self._head_mark},
                                      start_new_session=True, stdin=subprocess.DEVNULL,
                                      stdout=self._log("head"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._head.poll() is not None:
                kill_marked(self._head_mark, (self._head.pid,))
                raise _EarlyExit(f"ray start --head exited ({self._head.returncode}):\n{self.log_tail('head')}")
            if _port_open(self.gcs_port) and _port_open(self.dashboard_port):
                nodes = self._nodes_or_none()
                if nodes and any(n["is_head_node"] and n["state"] == "ALIVE" for n in nodes):
                    self.head_node_id = next(n["node_id"] for n in nodes if n["is_head_node"])
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Ray head did not come up:\n{self.log_tail('head')}")
            time.sleep(1)

    def start_worker(self, attempts: int = 4) -> str:
        """Start a FRESH worker node (new mount namespace, EMPTY private tmpfs); returns its node id.

        `ray start` gives a raylet only 30 s to register with the GCS; on a loaded machine that can fail,
        so a worker that exits before joining is cleaned up and started again (`attempts` times)."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start_worker_once()
            except _EarlyExit as e:
                if attempt == attempts:
                    raise RuntimeError(str(e)) from None
                print(f"[cluster_harness] worker start attempt {attempt} failed, retrying:\n{e}", file=sys.stderr)
                time.sleep(5 * attempt)

    def _start_worker_once(self) -> str:
        known = {n["node_id"] for n in self.nodes()}
        n = len(self._workers)
        mark = f"{self.id}-worker{n}"
        agent, agent_grpc, rt_env, metrics, nm, om = free_ports(6)
        ray_cmd = [RAY, "start", "--block", f"--address={self.address}", f"--num-cpus={self.worker_cpus}",
                   "--node-ip-address=127.0.0.1", f"--temp-dir={self.worker_temp_dir}",
                   f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
                   f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
                   f"--node-manager-port={nm}", f"--object-manager-port={om}",
                   f"--object-store-memory={self.worker_object_store}", "--disable-usage-stats"]
        dirs = " ".join(shlex.quote(str(p)) for p in (self.worker_temp_dir, self.worker_cwd, self.private_dir))
        # The node's logs live on its tmpfs and vanish with it: if `ray start` exits on its own, copy them
        # to a host directory first (fd 9 still reaches it after /tmp is covered).
        logs = self.base / f"worker{n}-logs"
        logs.mkdir(exist_ok=True)
        q = shlex.quote
        script = (f"set -e; exec 9<{q(str(logs))}; "
                  f"mount -t tmpfs -o size={self.worker_tmpfs_size},mode=1777 lrmn-{self.id}-w{n} /tmp; "
                  f"mkdir -p {dirs}; cd {q(str(self.worker_cwd))}; set +e; \"$@\" 9<&-; rc=$?; "
                  f"cp -rL {q(str(self.worker_temp_dir))}/session_latest/logs/. /proc/self/fd/9/ 2>/dev/null; "
                  f"exit $rc")
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *ray_cmd]
        self.worker_cmd = cmd
        proc = subprocess.Popen(cmd, env={**self._node_env, MARK_VAR: mark, "TMPDIR": "/tmp"},
                                start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=self._log(f"worker{n}"), stderr=subprocess.STDOUT)
        node = WorkerNode(proc=proc, mark=mark)
        self._workers.append(node)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if proc.poll() is not None:
                kill_marked(mark, (proc.pid,))
                raise _EarlyExit(f"worker `ray start` exited ({proc.returncode}):\n{self.log_tail(f'worker{n}')}"
                                 f"\nraylet.out:\n{self.log_tail(f'worker{n}-logs/raylet.out')}")
            new = [x for x in self.nodes() if x["node_id"] not in known and x["state"] == "ALIVE"]
            if new:
                node.node_id = new[0]["node_id"]
                return node.node_id
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker node did not join:\n{self.log_tail(f'worker{n}')}")
            time.sleep(1)

    def kill_worker(self, wait_dead: bool = True, timeout: float = 60) -> str:
        """SIGKILL every process of the current worker node (a node crash); by default wait until the GCS
        reports it DEAD. Returns the dead node's id. Its tmpfs goes with its mount namespace."""
        node = self.worker
        kill_marked(node.mark, (node.proc.pid,))
        node.proc.wait(timeout=30)
        if wait_dead:
            deadline = time.monotonic() + timeout
            while not any(n["node_id"] == node.node_id and n["state"] == "DEAD" for n in self.nodes()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the GCS did not mark node {node.node_id} dead")
                time.sleep(0.5)
        return node.node_id

    def stop(self) -> None:
        """Kill everything this cluster started (by process group and marker) and remove its dirs."""
        atexit.unregister(self.stop)
        for node in self._workers:
            kill_marked(node.mark, (node.proc.pid,))
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)
        if self._head is not None:
            kill_marked(self._head_mark, (self._head.pid,))
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._head.wait(timeout=10)
            self._head = None
        for f in self._logs:
            f.close()
        self._logs = []
        if os.environ.get("LAB_RAY_HARNESS_KEEP"):
            return
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------ inspection

    def pids(self, which: str = "worker") -> list[int]:
        """Live pids of the current worker node ("worker") or of the head ("head")."""
        return marked_pids(self.worker.mark if which == "worker" else self._head_mark)

    def worker_path(self, path: str | os.PathLike) -> Path:
        """`path` as the current worker node sees it (through /proc/<pid>/root, i.e. its mount namespace):
        lets a test inspect the worker's private disk from the outside while the node is alive."""
        return Path(f"/proc/{self.worker.proc.pid}/root") / Path(path).relative_to("/")

    def log_tail(self, name: str, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return (self.base / f"{name}.log").read_text(errors="replace")[-n:]
        return ""

    def _get(self, path: str):
        req = urllib.request.Request(self.jobs_url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def _nodes_or_none(self):
        try:
            data = self._get("/api/v0/nodes?limit=1000&detail=true")
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return data["data"]["result"]["result"]

    def nodes(self) -> list[dict]:
        """The State API's node list (node_id, state, is_head_node, resources_total, ...), via the dashboard."""
        for _ in range(30):
            nodes = self._nodes_or_none()
            if nodes is not None:
                return nodes
            time.sleep(1)
        raise RuntimeError(f"the dashboard State API does not answer:\n{self.log_tail('head')}")

    def jobs(self):
        """Ray's JobSubmissionClient on this cluster's Jobs API: one HTTP call per status poll, where
        `lab-ray submit --status` would start a Python process each time."""
        from ray.job_submission import JobSubmissionClient

        if self.__dict__.get("_jobs") is None:  # built once: each client checks the server's version
            self._jobs = JobSubmissionClient(self.jobs_url, headers={"Authorization": f"Bearer {self.token}"})
        return self._jobs

    def job_status(self, job_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
        return self.jobs().get_job_status(job_id).value

    def job_logs(self, job_id: str) -> str:
        return self.jobs().get_job_logs(job_id)

    def wait_job(self, job_id: str, timeout: float, poll: float = 2.0) -> str:
        """The job's final status, or TIMEOUT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, RuntimeError):  # the dashboard may be busy for a moment
                state = self.job_status(job_id)
                if state in ("SUCCEEDED", "FAILED", "STOPPED"):
                    return state
            time.sleep(poll)
        return "TIMEOUT"

    def actors(self) -> list[dict]:
        """The State API's actor list, dead ones included (class_name, node_id, state, ...)."""
        return self._get("/api/v0/actors?limit=10000&detail=true")["data"]["result"]["result"]

    # ------------------------------------------------------------------ clients

    @contextlib.contextmanager
    def client_env(self):
        """This process's environment pointed at this cluster (token, S3) for the duration."""
        try:
            with patched_environ(self.env):
                _refresh_ray_auth_config()
                yield
        finally:
            _refresh_ray_auth_config()

    @contextlib.contextmanager
    def connect(self, **init_kwargs):
        """`ray.init(address=<this GCS>)` in this process with the cluster's token; shut down on exit."""
        import ray

        if ray.is_initialized():  # another test module of this session left its own local Ray up
            ray.shutdown()
        with self.client_env():
            ray.init(address=self.address, **{"log_to_driver": False, **init_kwargs})
            try:
                yield ray
            finally:
                ray.shutdown()

    def subprocess_env(self) -> dict[str, str]:
        """An environment for `lab-ray submit` / `ray` subprocesses aimed at this cluster."""
        env = {**os.environ, **self.env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        return env


def start_two_node_cluster(**kwargs) -> TwoNodeCluster:
    return TwoNodeCluster(**kwargs).start()


# --------------------------------------------------------------------------- pytest fixtures
# Defined here so a test directory other than tests/multinode can import them into its own conftest
# (`from multinode.cluster_harness import s3_server, two_node_cluster, cluster_ray`, with noqa F401).

try:
    import pytest
except ImportError:  # the module works without pytest too
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def s3_server():
        """moto S3 on loopback with the bucket `lab-ray-test`; its AWS_* env is set in this process too."""
        s3 = start_s3_server()
        try:
            with patched_environ(s3.env):
                yield s3
        finally:
            s3.stop()

    @pytest.fixture(scope="module")
    def two_node_cluster(request, s3_server):
        """Head (0 CPUs) + one worker node with a private disk; both get the S3 env. One per module.
        A test module may set `CLUSTER_OPTIONS = {...}` (TwoNodeCluster's keyword arguments, e.g. worker_cpus)."""
        cluster = start_two_node_cluster(s3=s3_server, **getattr(request.module, "CLUSTER_OPTIONS", {}))
        try:
            yield cluster
        finally:
            cluster.stop()

    @pytest.fixture(scope="module")
    def cluster_ray(two_node_cluster):
        """This process connected to `two_node_cluster` as a driver (`ray` module); shut down after."""
        with two_node_cluster.connect() as ray:
            yield ray
