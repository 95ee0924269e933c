"""Connecting to Ray: the one place every command starts or attaches to a cluster."""

from __future__ import annotations


def init_ray(ray_cfg, reserved_cpus: float = 0.0) -> None:
    """Attach to `ray.address` if set (a Ray Job's own cluster, or a remote head),
    else start a fresh local cluster. A no-op when already connected.

    reserved_cpus: logical CPUs a service deployed on this local cluster holds for the whole
    command (a vLLM teacher's engine and server). When `ray.num_cpus` is unset they come on top
    of the machine's cores, so the command's own tasks still schedule beside the service."""
    import math
    import os

    import ray

    if ray.is_initialized():
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    kwargs = {"include_dashboard": bool(ray_cfg.include_dashboard), "configure_logging": True,
              "log_to_driver": False}
    if ray_cfg.address:
        ray.init(address=ray_cfg.address, **kwargs)
        return
    for attempt in range(3):
        try:
            # "local": always a fresh in-process cluster, never a stale one found in /tmp/ray
            num_cpus = ray_cfg.num_cpus
            if num_cpus is None and reserved_cpus:
                num_cpus = (os.cpu_count() or 1) + math.ceil(reserved_cpus)
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
            return
        except Exception as e:  # Ray gives a starting raylet 30 s; an overloaded box can miss that
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
            ray.shutdown()
