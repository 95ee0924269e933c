"""The teacher for evaluation: reused when one is already serving, else deployed on demand.

Evaluation runs inside `lab-ray run` (teacher already up), from `lab-ray eval`
(nothing up) and from checkpoint selection during training (called a few
times per run). `LazyTeacher` opens an endpoint only when a judge verdict or
an uncached MCQ set is actually needed: the configured `teacher.base_url`, a
teacher already answering on teacher.host:port, or a fresh deployment through
`lab_ray.teacher.endpoint.teacher_endpoint` (shut down when the LazyTeacher closes).
"""

from __future__ import annotations

import atexit
import contextlib

from lab_ray.teacher.app import api_key
from lab_ray.teacher.client import TeacherClient, client_spec, make_teacher
from lab_ray.teacher.endpoint import running_app, serving_url, teacher_endpoint


class LazyTeacher:
    """Callable returning a TeacherClient; deploys nothing until first called."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._stack = contextlib.ExitStack()
        self._client: TeacherClient | None = None
        self.deployed = False

    def __call__(self) -> TeacherClient:
        if self._client is None:
            import fcntl

            from lab_ray.eval.sets import lock_file

            # Parallel scorers (Ray tasks) deploy at most one teacher: the first
            # takes the lock and deploys, the others then find it serving.
            with open(lock_file(self.cfg, ".teacher.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    # the run's own teacher on this cluster: through a handle, from any node
                    app = running_app(self.cfg)
                    url = (self.cfg.teacher.base_url or "") if app else serving_url(self.cfg)
                    key = api_key(self.cfg.teacher)
                    if url is None:
                        url, key, app = self._stack.enter_context(teacher_endpoint(self.cfg))
                        self.deployed = True
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            self._client = make_teacher(client_spec(self.cfg.teacher, url, key, seed=int(self.cfg.eval.seed),
                                                    app=app))
        return self._client

    @property
    def usage(self) -> dict:
        return self._client.usage.as_dict() if self._client else {}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SHARED: dict[str, LazyTeacher] = {}


def shared_teacher(cfg) -> LazyTeacher:
    """One LazyTeacher per process and teacher address (for repeated selection calls); closed at exit."""
    t = cfg.teacher
    key = f"{t.base_url}|{t.host}:{t.port}|{t.model}"
    if key not in _SHARED:
        if not _SHARED:
            atexit.register(close_shared)
        _SHARED[key] = LazyTeacher(cfg)
    return _SHARED[key]


def close_shared() -> None:
    while _SHARED:
        _, teacher = _SHARED.popitem()
        teacher.close()
