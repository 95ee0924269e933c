"""Replay sampler: ratio within tolerance, deterministic for a seed, streaming (bounded memory)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from lab_ray.train.replay import mix, worker_slice


def _gen(prefix, n):
    return ({"id": f"{prefix}{i}", "payload": "x" * 200} for i in range(n))


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_ratio_holds_over_a_long_stream(ratio):
    out = list(mix(_gen("new", 20000), lambda: _gen("old", 50000), ratio, seed=7))
    replay = sum(r["id"].startswith("old") for r in out)
    assert sum(r["id"].startswith("new") for r in out) == 20000  # every new row, exactly once
    assert replay / len(out) == pytest.approx(ratio, abs=0.01)
    # Locally mixed too: every window of 1000 rows is near the ratio (not blocks of one source).
    for k in range(0, len(out) - 1000, 1000):
        w = out[k:k + 1000]
        assert abs(sum(r["id"].startswith("old") for r in w) / 1000 - ratio) < 0.06


def test_deterministic_for_a_seed():
    a = [r["id"] for r in mix(_gen("n", 3000), lambda: _gen("o", 3000), 0.3, seed=1)]
    b = [r["id"] for r in mix(_gen("n", 3000), lambda: _gen("o", 3000), 0.3, seed=1)]
    c = [r["id"] for r in mix(_gen("n", 3000), lambda: _gen("o", 3000), 0.3, seed=2)]
    assert a == b and a != c


def test_replay_buffer_cycles_and_empty_replay_is_harmless():
    calls = []

    def small():
        calls.append(1)
        return _gen("o", 10)

    out = list(mix(_gen("n", 1000), small, 0.5, seed=3))
    assert sum(r["id"].startswith("n") for r in out) == 1000
    assert len(calls) > 10  # ten-row buffer re-read many times
    out = list(mix(_gen("n", 100), lambda: iter(()), 0.5, seed=3))
    assert [r["id"] for r in out] == [f"n{i}" for i in range(100)]
    assert list(mix(_gen("n", 5), lambda: _gen("o", 5), 0.0, seed=0)) == list(_gen("n", 5))
    with pytest.raises(ValueError):
        list(mix(_gen("n", 5), lambda: _gen("o", 5), 1.0, seed=0))


def _peak(n):
    tracemalloc.start()
    for _ in mix(_gen("n", n), lambda: _gen("o", n), 0.3, seed=0):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_streams_memory_does_not_grow_with_the_datasets():
    # In a fresh interpreter: in a whole-suite run, threads left by earlier tests
    # (clients, Ray) allocate while tracemalloc traces and blur the peak.
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_replay as t; "
            "print(t._peak(2000), t._peak(200000))")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], capture_output=True,
                         text=True, timeout=600, check=True).stdout.split()
    small, big = int(out[-2]), int(out[-1])
    assert big < small * 1.5 + 64 * 1024, (small, big)


def test_worker_slices_are_disjoint_and_cover():
    rows = list(_gen("o", 1000))
    s0 = {r["id"] for r in worker_slice(rows, 0, 2)}
    s1 = {r["id"] for r in worker_slice(rows, 1, 2)}
    assert not (s0 & s1) and len(s0 | s1) == 1000 and 300 < len(s0) < 700


def test_mixes_two_real_ray_datasets(tmp_path):
    """The sampler over Ray Data iterators of real JSONL files: deterministic, ratio held."""
    import json

    import ray

    for name, n in (("new", 600), ("old", 400)):
        (tmp_path / name).mkdir()
        with open(tmp_path / name / "part-0.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": f"{name}{i}"}) + "\n")
    if ray.is_initialized():  # a Ray left by an earlier test in a whole-suite run
        ray.shutdown()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = True
        new = ray.data.read_json(str(tmp_path / "new"))
        old = ray.data.read_json(str(tmp_path / "old"))
        runs = [[r["id"] for r in mix(new.iter_rows(), old.iter_rows, 0.25, seed=5)] for _ in range(2)]
        assert runs[0] == runs[1]
        assert sum(i.startswith("new") for i in runs[0]) == 600
        assert sum(i.startswith("old") for i in runs[0]) / len(runs[0]) == pytest.approx(0.25, abs=0.04)
    finally:
        ray.shutdown()
