"""Does the SDG engine keep the real teacher saturated? One run, two sides.

(a) pipeline: `run_generation` (the `lab-ray generate` code path) on the
    sample taxonomy's skill leaves against the real CPU teacher (SmolLM2-135M
    on Ray Serve, deployed here). Teacher tokens/s = completion tokens in the
    run's stats / wall time of the generation phase (Ray Data execution; the
    calibration before it and the finalize after it are not counted). Every
    stage actor's client is the real TeacherClient, wrapped to record each
    request (the call, its start and end time).
(b) direct: the very same requests (same messages, max_tokens, seeds,
    temperature), sent straight to the same deployment by one TeacherClient
    with max_concurrency = the pipeline's measured mean in-flight requests
    (time-weighted over its generation phase), stage by stage (so every
    teacher batch is homogeneous, the teacher's best case), i.e. the teacher's
    own tokens/s at the same concurrency and the same token budgets.

Prints both and, on the last line, pipeline/direct (target >= 0.9).

    .venv/bin/python bench/sdg_teacher_bound.py [--samples-per-leaf 8]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Ray workers of the local cluster inherit the environment: the stage actors
# can import LoggingClient from this file.
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])

from teacher_common import free_port, load_note  # noqa: E402

from lab_ray.teacher.client import TeacherClient  # noqa: E402

LEAVES = ["compositional_skills/extraction/facts_to_list", "compositional_skills/writing/poetry/haiku",
          "foundational_skills/reasoning/arithmetic_word_problems"]


class LoggingClient(TeacherClient):
    """TeacherClient that appends every call and every HTTP request's timing to log_dir."""

    def __init__(self, log_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.log = Path(log_dir) / f"calls-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.spans: list[tuple[float, float, int]] = []

    async def chat(self, messages, **params):
        t0 = time.time()
        reply = await super().chat(messages, **params)
        self.spans.append((t0, time.time(), reply.completion_tokens))
        return reply

    def run_many(self, calls):
        self.spans = []
        replies = super().run_many(calls)
        with open(self.log, "a", encoding="utf-8") as f:
            for (kind, kw), r in zip(calls, replies):
                f.write(json.dumps({"kind": kind, "kwargs": kw, "ok": r.ok, "completion_tokens": r.completion_tokens})
                        + "\n")
            for s in self.spans:
                f.write(json.dumps({"span": s}) + "\n")
        return replies


def mean_in_flight(spans: list[tuple[float, float]], t0: float, t1: float) -> float:
    busy = sum(max(0.0, min(b, t1) - max(a, t0)) for a, b in spans)
    return busy / max(t1 - t0, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples-per-leaf", type=int, default=8)
    ap.add_argument("--leaves", nargs="+", default=LEAVES)
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args()

    import asyncio

    from lab_ray.config import load_config
    from lab_ray.sdg import run as pipeline
    from lab_ray.teacher.client import client_spec
    from lab_ray.ray_cluster import init_ray
    from lab_ray.teacher.app import deploy

    work = Path(tempfile.mkdtemp(prefix="sdg-teacher-bound-"))
    logs = work / "logs"
    cfg = load_config([f"run.root={work}", "run.name=bound", f"teacher.port={free_port()}", "ray.num_cpus=2",
                       "sdg.progress=false", f"sdg.samples_per_leaf={args.samples_per_leaf}",
                       f"sdg.leaves=[{','.join(args.leaves)}]", *args.override])
    init_ray(cfg.ray)
    t = time.perf_counter()
    endpoint = deploy(cfg.teacher, cfg.ray)
    print(f"teacher deployed in {time.perf_counter() - t:.0f} s ({load_note()})", flush=True)
    c = cfg.teacher.client
    client_args = {k: v for k, v in client_spec(cfg.teacher, endpoint.base_url, endpoint.api_key).items() if k != "kind"}
    spec = {"kind": "python", "factory": "sdg_teacher_bound:LoggingClient",
            "args": {"log_dir": str(logs), **client_args}}
    marks = {}
    calibrate, finalize = pipeline.load_or_calibrate, pipeline.finalize

    def timed_calibrate(*a, **k):
        out = calibrate(*a, **k)
        marks["gen_start"] = time.time()  # the Ray Data execution starts right after
        return out

    def timed_finalize(*a, **k):
        marks["gen_end"] = time.time()
        return finalize(*a, **k)

    pipeline.load_or_calibrate, pipeline.finalize = timed_calibrate, timed_finalize
    load0 = os.getloadavg()[0]
    result = pipeline.run_generation(cfg, spec)
    gen_s = marks["gen_end"] - marks["gen_start"]
    tokens = result.stats["total"]["completion_tokens"]
    pipe_tps = tokens / gen_s

    calls, spans, by_actor = [], [], []
    for f in sorted(logs.glob("calls-*.jsonl"), key=lambda f: f.stat().st_mtime):
        if f.name.startswith(f"calls-{os.getpid()}-"):
            continue  # the calibration's calls, made in this driver before the generation phase
        for line in f.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if "span" in rec:
                if rec["span"][0] >= marks["gen_start"] - 1:
                    spans.append(rec["span"][:2])
            else:
                calls.append((rec["kind"], rec["kwargs"]))
                if not by_actor or by_actor[-1][0] != f.name:
                    by_actor.append((f.name, []))
                by_actor[-1][1].append(calls[-1])
    in_flight = mean_in_flight(spans, marks["gen_start"], marks["gen_end"])
    conc = max(1, round(in_flight))
    print(f"pipeline: {len(calls)} requests, {tokens} completion tokens in {gen_s:.1f} s of generation = "
          f"{pipe_tps:.2f} tok/s; mean in-flight {in_flight:.2f} (load {load0:.1f})", flush=True)

    # (b) the same requests, straight to the same deployment, at the same concurrency
    load1 = os.getloadavg()[0]
    client = TeacherClient(endpoint.base_url, cfg.teacher.model, endpoint.api_key, max_concurrency=conc,
                           timeout_s=c.timeout_s, max_retries=c.max_retries)
    # Stage by stage (each stage actor's requests together, in pipeline order):
    # every teacher batch then holds requests of one kind and token budget, the
    # teacher's best case at this concurrency (a mixed batch waits for its
    # longest request).
    t0 = time.perf_counter()
    replies = [r for _, group in by_actor for r in client.run_many(group)]
    direct_s = time.perf_counter() - t0
    client.close()
    d_tokens = sum(r.completion_tokens for r in replies)
    direct_tps = d_tokens / direct_s
    failed = sum(not r.ok for r in replies)
    print(f"direct: {len(calls)} requests ({failed} failed), {d_tokens} completion tokens in {direct_s:.1f} s = "
          f"{direct_tps:.2f} tok/s at concurrency {conc} (load {load1:.1f})", flush=True)
    del asyncio
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    print(f"sdg_teacher_bound: pipeline {pipe_tps:.2f} tok/s / direct {direct_tps:.2f} tok/s = "
          f"{pipe_tps / direct_tps:.3f} (target >= 0.9; {len(calls)} requests, concurrency {conc}, "
          f"load {load0:.1f}->{os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
