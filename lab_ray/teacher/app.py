"""Start (or attach to) Ray, deploy the teacher, and tell clients where it is."""

from __future__ import annotations

import os
from dataclasses import dataclass

from omegaconf import OmegaConf

from lab_ray.errors import ConfigError, LabRayError
from lab_ray.ray_cluster import init_ray


@dataclass
class TeacherEndpoint:
    base_url: str  # ends in /v1
    model: str
    api_key: str | None


def api_key(cfg) -> str | None:
    return os.environ.get(cfg.api_key_env) or cfg.api_key or None


def is_loopback(host: str) -> bool:
    import ipaddress

    if str(host).strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def require_key_beyond_loopback(cfg) -> None:
    """A teacher bound beyond loopback (0.0.0.0, a LAN address, a host name) answers anyone who
    can reach the port: there it must have an API key."""
    if not is_loopback(cfg.host) and not api_key(cfg):
        raise ConfigError(f"teacher.host={cfg.host} exposes the teacher beyond this machine, and no API key is "
                          f"set: export {cfg.api_key_env}=<a secret> (or set teacher.api_key), or keep "
                          "teacher.host=127.0.0.1")


def logical_cpus(cfg) -> float:
    """Ray CPUs the teacher app holds for as long as it serves (its replicas; for vLLM also the
    engine bundles and the ingress). A command that deploys it on a local Ray sized to the cores
    gets these on top, or nothing else would schedule beside it on a laptop."""
    if cfg.backend == "vllm":
        from lab_ray.teacher.serve_vllm import logical_cpus as vllm_cpus

        return vllm_cpus(cfg)
    return float(cfg.num_cpus) * max(1, int(cfg.autoscaling.max_replicas)) if cfg.backend == "cpu" else 0.0


def deployment_options(cfg) -> dict:
    auto = cfg.autoscaling
    # OMP_WAIT_POLICY=PASSIVE: see lab_ray/teacher/engine.py (spinning OpenMP threads on a shared CPU).
    env = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    opts = {"max_ongoing_requests": cfg.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": cfg.num_cpus, "runtime_env": {"env_vars": env},
                                  **({"resources": dict(cfg.resources)} if cfg.resources else {})}}
    if auto.max_replicas > auto.min_replicas:
        opts["autoscaling_config"] = {"min_replicas": auto.min_replicas, "max_replicas": auto.max_replicas,
                                      "target_ongoing_requests": auto.target_ongoing_requests}
    else:
        opts["num_replicas"] = auto.min_replicas
    return opts


def deploy(cfg, ray_cfg) -> TeacherEndpoint:
    """Deploy the configured backend on Ray Serve; returns its endpoint."""
    if cfg.backend == "openai":
        if not cfg.base_url:
            raise ConfigError("teacher.backend=openai needs teacher.base_url (e.g. http://host:8000/v1)")
        return TeacherEndpoint(cfg.base_url.rstrip("/"), cfg.model, api_key(cfg))
    if cfg.backend not in ("cpu", "vllm"):
        raise ConfigError(f"teacher.backend={cfg.backend!r}: use cpu, vllm or openai")
    require_key_beyond_loopback(cfg)
    from ray import serve

    init_ray(ray_cfg)
    # teacher.http=false: no proxy anywhere; the command's stages call the app through handles
    serve.start(http_options={"host": cfg.host, "port": cfg.port},
                **({} if cfg.http else {"proxy_location": "Disabled"}))
    if cfg.backend == "cpu":
        from lab_ray.teacher.serve_cpu import CPUTeacher

        plain = OmegaConf.to_container(cfg, resolve=True)
        # Resolve the key here: the replica may run on a node without the driver's environment.
        plain["api_key"] = api_key(cfg)
        app = CPUTeacher.options(**deployment_options(cfg)).bind(plain)
    else:
        from lab_ray.teacher.serve_vllm import build_vllm_app

        app = build_vllm_app(cfg, api_key(cfg))
    try:
        serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
    except Exception as e:  # a replica that cannot start surfaces here
        raise LabRayError(f"the teacher deployment failed to start: {str(e).splitlines()[0][:300]}")
    prefix = cfg.route_prefix.rstrip("/")
    return TeacherEndpoint(f"http://{cfg.host}:{cfg.port}{prefix}/v1", cfg.model, api_key(cfg))


def shutdown() -> None:
    """Tear down Serve on the connected cluster; a no-op when no cluster is connected
    (serve.shutdown() would otherwise start a fresh one just to shut it down)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
