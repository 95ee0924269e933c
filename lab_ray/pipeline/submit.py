"""`lab-ray submit`: run any lab-ray command as a Ray Job on a cluster.

    lab-ray submit [--address URL] [submit.key=value ...] -- generate run.name=x
    lab-ray submit --status ID | --logs ID | --stop ID

The job runs `python -m lab_ray.cli <command>` inside the uploaded working
directory, so the cluster runs exactly this checkout's code and conf/. The
entrypoint is built with shlex.join: arguments are quoted, never interpreted
by the job's shell. Logs stream until the job ends; the exit status is the
job driver's own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

from lab_ray.errors import ConfigError, LabRayError


def register(sub, common) -> None:
    p = sub.add_parser("submit", parents=[common], help="run a lab-ray command as a Ray Job on a cluster",
                       usage="lab-ray submit [--address URL] [overrides] -- COMMAND [ARGS...]")
    p.add_argument("--address", help="Ray Jobs API address (default: submit.address)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--status", metavar="JOB_ID")
    group.add_argument("--logs", metavar="JOB_ID")
    group.add_argument("--stop", metavar="JOB_ID")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p.set_defaults(handler=_submit, positional_range=(0, 0), prepare=_split_command,
                   usage="submit [--address URL] [key=value ...] -- COMMAND [ARGS...] "
                         "(put the lab-ray command after '--')")


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - Ray raises several unrelated types here
        if _is_auth_error(e):
            raise _auth_error(address)
        if isinstance(e, (ConnectionError, RuntimeError, ValueError)):
            raise LabRayError(f"cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0]} "
                              "(is the cluster up? is submit.address right?)")
        raise


def _is_auth_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}"
    return "Authentication" in text or "Unauthorized" in text or "auth token" in text.lower()


def _auth_error(address: str) -> LabRayError:
    return LabRayError(
        f"the Ray cluster at {address} requires token authentication and no valid token was found: "
        "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token, "
        "or put it in ~/.ray/auth_token (`ray get-auth-token` on the head prints it)")


def build_runtime_env(cfg) -> dict:
    sc = cfg.submit
    env: dict = {}
    if sc.runtime_env_file and Path(sc.runtime_env_file).is_file():
        env = yaml.safe_load(Path(sc.runtime_env_file).read_text()) or {}
        if not isinstance(env, dict):
            raise ConfigError(f"{sc.runtime_env_file} must be a mapping (a Ray runtime_env)")
    env["working_dir"] = sc.working_dir
    env["excludes"] = sorted(set(env.get("excludes", [])) | set(sc.excludes))
    forwarded = {name: os.environ[name] for name in (sc.get("forward_env") or []) if os.environ.get(name)}
    env["env_vars"] = {**forwarded, **env.get("env_vars", {}), **dict(sc.env_vars)}
    return env


def entrypoint(command: list[str]) -> str:
    return shlex.join(["python", "-m", "lab_ray.cli", *command])


def _split_command(ns: argparse.Namespace) -> list[str]:
    """submit's own words (overrides) before '--'; the job's command after it (in ns.command)."""
    rest = list(ns.rest)
    if "--" in rest:
        cut = rest.index("--")
        own, ns.command = rest[:cut], rest[cut + 1:]
    else:
        own, ns.command = [], rest
    return own


def _submit(ns: argparse.Namespace, cfg, positional) -> int:
    command = ns.command
    address = ns.address or cfg.submit.address
    client = _client(address)
    try:
        return _run(ns, cfg, client, address, command)
    except Exception as e:  # noqa: BLE001
        if _is_auth_error(e):
            raise _auth_error(address)
        raise


def _run(ns, cfg, client, address: str, command: list[str]) -> int:
    if ns.status:
        info = client.get_job_info(ns.status)
        print(f"{ns.status}: {info.status} {info.message or ''}".rstrip())
        return 0
    if ns.logs:
        print(client.get_job_logs(ns.logs), end="")
        return 0
    if ns.stop:
        stopped = client.stop_job(ns.stop)
        print(f"{ns.stop}: {'stopping' if stopped else 'already finished'}")
        return 0
    if not command:
        raise ConfigError("nothing to submit: give a lab-ray command after '--', e.g. -- generate run.name=x")
    job_id = _submit_when_ready(client, cfg, command)
    print(f"submitted {job_id} to {address}", file=sys.stderr)
    if ns.no_wait:
        print(job_id)
        return 0
    try:
        asyncio.run(_stream(client, job_id))
    except KeyboardInterrupt:
        print(f"\ndetached; the job keeps running. `lab-ray submit --stop {job_id}` stops it", file=sys.stderr)
        return 130
    info = client.get_job_info(job_id)
    code = info.driver_exit_code
    print(f"{job_id}: {info.status}" + (f" (exit {code})" if code is not None else ""), file=sys.stderr)
    if code is not None:
        return int(code)
    return 0 if str(info.status) in ("SUCCEEDED", "JobStatus.SUCCEEDED") else 1


def _submit_when_ready(client, cfg, command: list[str], wait_s: float = 120.0) -> str:
    """submit_job, retried while a freshly started head's job agent is not up yet."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(
                entrypoint=entrypoint(command),
                runtime_env=build_runtime_env(cfg),
                entrypoint_num_cpus=cfg.submit.entrypoint_num_cpus or None,
                entrypoint_num_gpus=cfg.submit.entrypoint_num_gpus or None,
            )
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


async def _stream(client, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()
