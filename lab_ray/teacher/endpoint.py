"""The teacher's lifecycle for a command: reuse one that serves, or deploy one for
the duration, and say where it is (URL + API key) so clients can be built."""

from __future__ import annotations

import contextlib
from typing import Iterator

import httpx

from lab_ray.errors import ConfigError
from lab_ray.ray_cluster import init_ray
from lab_ray.teacher.app import api_key, deploy, logical_cpus, shutdown
from lab_ray.teacher.config import Backend


@contextlib.contextmanager
def teacher_endpoint(cfg) -> Iterator[tuple[str, str | None, str | None]]:
    """(base URL, API key, Serve app name) for the run: the configured URL (app None: an
    external teacher), or a teacher deployed for it on the command's cluster (shut down
    when the block ends; clients may call its app through a handle)."""
    if cfg.teacher.base_url or cfg.teacher.backend == Backend.openai:
        init_ray(cfg.ray)
        yield (cfg.teacher.base_url.rstrip("/"), api_key(cfg.teacher), None)
        return
    if not cfg.teacher.http and cfg.teacher.client.transport != "auto":
        raise ConfigError("teacher.http=false leaves the teacher no HTTP API: keep teacher.client.transport=auto "
                          "(DeploymentHandles), or set teacher.http=true")
    init_ray(cfg.ray, reserved_cpus=logical_cpus(cfg.teacher))
    endpoint = deploy(cfg.teacher, cfg.ray)
    try:
        yield endpoint.base_url, endpoint.api_key, cfg.teacher.app_name
    finally:
        shutdown()


def running_app(cfg) -> str | None:
    """The teacher's Serve app when it runs on the cluster this process is connected to (the
    run's own teacher, e.g. `lab-ray run`'s, seen from a scorer task on any node): clients then
    call it through a handle (teacher.client.transport=auto). None otherwise."""
    t = cfg.teacher
    if t.backend == Backend.openai or t.client.transport != "auto":
        return None
    import ray

    if not ray.is_initialized():
        return None
    from ray import serve

    try:
        app = serve.status().applications.get(t.app_name)  # never starts Serve
    except Exception:  # noqa: BLE001 - no controller, a cluster without Serve: fall back to HTTP
        return None
    return t.app_name if app is not None and str(app.status).endswith("RUNNING") else None


def serving_url(cfg) -> str | None:
    """The configured teacher URL, or the local one if a teacher already answers there."""
    t = cfg.teacher
    if t.base_url:
        return t.base_url.rstrip("/")
    url = f"http://{t.host}:{t.port}{t.route_prefix.rstrip('/')}/v1"
    key = api_key(t)
    try:
        r = httpx.get(url + "/models", timeout=3.0, headers={"Authorization": f"Bearer {key}"} if key else {})
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        ids = {m.get("id") for m in r.json().get("data", [])}
    except (ValueError, AttributeError):
        return None
    return url if t.model in ids else None
