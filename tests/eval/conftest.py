"""One real CPU teacher for the eval tests (module-scoped), on a free port, and a small eval config."""

from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Small but real: few chunks and questions, short answers (the machine is shared).
EVAL_OVERRIDES = [
    "ray.num_cpus=2",
    "teacher.batching.max_batch_size=8",
    "teacher.batching.batch_wait_timeout_s=0.1",
    "eval.knowledge.max_chunks_per_leaf=2",
    "eval.knowledge.attempts_per_chunk=2",
    "eval.knowledge.max_tokens=120",
    "eval.knowledge.min_questions_per_leaf=6",
    "eval.knowledge.max_questions_per_leaf=6",
    "eval.skills.max_questions_per_leaf=1",
    "eval.skills.max_new_tokens=32",
]


@pytest.fixture(scope="module")
def eval_overrides() -> list[str]:
    return list(EVAL_OVERRIDES)


@pytest.fixture(scope="module")
def eval_cfg(tmp_path_factory):
    from lab_ray.config import load_config

    root = tmp_path_factory.mktemp("runs")
    return load_config([f"run.root={root}", "run.name=evaltest", f"teacher.port={free_port()}", *EVAL_OVERRIDES])


@pytest.fixture(scope="module")
def teacher(eval_cfg):
    """The embedded teacher deployed once; eval code finds it serving on teacher.port and reuses it."""
    import ray

    from lab_ray.teacher.endpoint import teacher_endpoint

    with teacher_endpoint(eval_cfg) as (url, key, _app):
        yield url, key
    ray.shutdown()
