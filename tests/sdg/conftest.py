"""SDG fixtures: one local Ray cluster per test process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the SDG tests of this process."""
    import ray

    from lab_ray.config import load_config
    from lab_ray.ray_cluster import init_ray

    init_ray(load_config(["ray.num_cpus=4"]).ray)
    yield
    ray.shutdown()
