"""Connecting to Ray: the one place every command starts or attaches to a cluster."""

from __future__ import annotations


def init_ray(ray_cfg) -> None:
    """Attach to `ray.address` if set (a Ray Job's own cluster, or a remote head),
    else start a fresh local cluster. A no-op when already connected."""
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
            ray.init(address="local", num_cpus=ray_cfg.num_cpus, **kwargs)
            return
        except Exception as e:  # Ray gives a starting raylet 30 s; an overloaded box can miss that
            if "timed out during startup" not in str(e) or attempt == 2:
                raise
            ray.shutdown()
