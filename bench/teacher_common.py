"""Shared pieces of the teacher benchmarks: a local Ray + CPU teacher, prompts, percentiles."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# The same OpenMP wait policy the engine and the deployment use (before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL = "SmolLM2-135M-Instruct"

TOPICS = ["photosynthesis", "the French revolution", "binary search", "volcanoes", "compound interest",
          "the water cycle", "prime numbers", "how vaccines work", "plate tectonics", "the printing press",
          "black holes", "supply and demand", "recursion", "the immune system", "tides", "the Roman empire"]


def prompts(count: int) -> list[list[dict]]:
    """Chat prompts of a few lengths, like SDG's generate-instruction/response stages."""
    out = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        ask = ["Explain {t} to a ten-year-old.", "Write three quiz questions about {t}.",
               "Give a short, precise summary of {t}, then one common misconception about it."][i % 3]
        out.append([{"role": "system", "content": "You are a helpful, precise teacher."},
                    {"role": "user", "content": ask.format(t=topic)}])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_teacher(overrides: list[str]):
    """A local Ray and the real CPU teacher deployment; returns (endpoint, cfg)."""
    from lab_ray.config import load_config
    from lab_ray.teacher.app import deploy

    cfg = load_config([f"teacher.port={free_port()}", *overrides])
    return deploy(cfg.teacher, cfg.ray), cfg


def start_app(overrides: list[str]):
    """Another teacher app on the already running Serve (same port; own name and route)."""
    from lab_ray.config import load_config
    from lab_ray.teacher.app import deploy

    cfg = load_config(overrides)
    return deploy(cfg.teacher, cfg.ray), cfg


def stop_teacher() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def load_note() -> str:
    la = os.getloadavg()
    return f"load average {la[0]:.1f}/{la[1]:.1f}/{la[2]:.1f} on {os.cpu_count()} CPUs"
