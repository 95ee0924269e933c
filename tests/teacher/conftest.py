"""One real CPU teacher deployment on a local Ray cluster for the module that uses it."""

from __future__ import annotations

import pytest

from teacher_net import API_KEY, free_port


@pytest.fixture(scope="module")
def teacher():
    """The embedded CPU teacher, with an API key, on 127.0.0.1; yields (endpoint, cfg)."""
    import ray

    from lab_ray.config import load_config
    from lab_ray.teacher.app import deploy, shutdown

    cfg = load_config([f"teacher.port={free_port()}", f"teacher.api_key={API_KEY}", "ray.num_cpus=2",
                       "teacher.batching.max_batch_size=8", "teacher.batching.batch_wait_timeout_s=0.1"])
    endpoint = deploy(cfg.teacher, cfg.ray)
    yield endpoint, cfg
    shutdown()
    ray.shutdown()
