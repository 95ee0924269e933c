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
    (the pipeline's teacher.client settings: choice field, top logprobs,
    timeout, retries) with max_concurrency = the pipeline's measured mean in-flight requests
    (time-weighted over its generation phase), stage by stage (so every
    teacher batch is homogeneous, the teacher's best case), i.e. the teacher's
    own tokens/s at the same concurrency and the same token budgets.

Prints both and, on the last line, pipeline/direct (target >= 0.9).
--rounds N repeats the pair N times, interleaved (pipeline, direct, pipeline,
direct ...; each pipeline round a fresh run directory, each direct round that
round's requests), and prints per-round ratios beside the pooled one: on a
machine shared with other jobs, load swings between two sides of one pair.

    .venv/bin/python bench/sdg_teacher_bound.py [--samples-per-leaf 8] [--rounds 1]

--teacher vllm-cpu: both sides against the vLLM teacher instead (the
`teacher=vllm-cpu` profile: vLLM's CPU build through ray.serve.llm, deployed by
`lab_ray.teacher.app.deploy` as `lab-ray generate teacher=vllm-cpu` deploys it,
client settings from that profile). The app holds its logical CPUs for the
whole run, so the local Ray gets them on top of the 2 the CPU run uses
(`init_ray`'s reserved_cpus, as `teacher_endpoint` does).

    .venv/bin/python bench/sdg_teacher_bound.py --teacher vllm-cpu
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
    ap.add_argument("--teacher", choices=["cpu", "vllm-cpu"], default="cpu", help="the teacher profile")
    ap.add_argument("--rounds", type=int, default=1, help="pipeline/direct pairs, interleaved")
    ap.add_argument("--override", action="append", default=[])
    args = ap.parse_args()

    from lab_ray.config import load_config
    from lab_ray.ray_cluster import init_ray
    from lab_ray.sdg import run as pipeline
    from lab_ray.teacher.app import deploy
    from lab_ray.teacher.client import client_spec
    from lab_ray.teacher.app import logical_cpus

    work = Path(tempfile.mkdtemp(prefix="sdg-teacher-bound-"))
    cfg = load_config([f"teacher={args.teacher}", f"run.root={work}", "run.name=bound", f"teacher.port={free_port()}",
                       "sdg.progress=false", f"sdg.samples_per_leaf={args.samples_per_leaf}",
                       f"sdg.leaves=[{','.join(args.leaves)}]", *args.override])
    if cfg.ray.num_cpus is None and not cfg.ray.address:
        # 2 logical CPUs for the pipeline (the CPU runs' setting) + whatever the teacher app holds
        # (the vLLM app: engine bundle + server replica + ingress; the CPU app: none on top)
        import math

        cfg.ray.num_cpus = 2 + math.ceil(logical_cpus(cfg.teacher))
    init_ray(cfg.ray)
    t = time.perf_counter()
    endpoint = deploy(cfg.teacher, cfg.ray)
    print(f"teacher deployed in {time.perf_counter() - t:.0f} s ({load_note()})", flush=True)
    client_args = {k: v for k, v in client_spec(cfg.teacher, endpoint.base_url, endpoint.api_key).items() if k != "kind"}
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
    sums = {"pipe": [0, 0.0], "direct": [0, 0.0]}
    ratios, loads, concs, n_calls = [], [], [], 0
    for rnd in range(args.rounds):
        # (a) the pipeline, a fresh run (own run name and call log) each round
        logs = work / f"logs-{rnd}"
        cfg.run.name = f"bound-{rnd}"
        spec = {"kind": "python", "factory": "sdg_teacher_bound:LoggingClient",
                "args": {"log_dir": str(logs), **client_args}}
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
        print(f"round {rnd + 1} pipeline: {len(calls)} requests, {tokens} completion tokens in {gen_s:.1f} s of "
              f"generation = {pipe_tps:.2f} tok/s; mean in-flight {in_flight:.2f} (load {load0:.1f})", flush=True)

        # (b) the same requests, straight to the same deployment, at the same concurrency
        load1 = os.getloadavg()[0]
        # Every teacher.client setting as the pipeline's clients had it (choice_field, top logprobs,
        # timeout, retries ...; the vLLM profile's structured_outputs among them), only the concurrency differs.
        client = TeacherClient(**{**client_args, "max_concurrency": conc})
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
        print(f"round {rnd + 1} direct: {len(calls)} requests ({failed} failed), {d_tokens} completion tokens in "
              f"{direct_s:.1f} s = {direct_tps:.2f} tok/s at concurrency {conc} (load {load1:.1f}); "
              f"ratio {pipe_tps / direct_tps:.3f}", flush=True)
        sums["pipe"][0] += tokens
        sums["pipe"][1] += gen_s
        sums["direct"][0] += d_tokens
        sums["direct"][1] += direct_s
        ratios.append(pipe_tps / direct_tps)
        loads += [load0, load1]
        concs.append(conc)
        n_calls = len(calls)
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    pipe_tps, direct_tps = (sums[k][0] / sums[k][1] for k in ("pipe", "direct"))
    per_round = f"; per round {', '.join(f'{r:.3f}' for r in ratios)}" if len(ratios) > 1 else ""
    print(f"sdg_teacher_bound ({args.teacher}, ray.num_cpus={cfg.ray.num_cpus}): pipeline {pipe_tps:.2f} tok/s / "
          f"direct {direct_tps:.2f} tok/s = {pipe_tps / direct_tps:.3f}{per_round} (target >= 0.9; {n_calls} "
          f"requests, concurrency {'/'.join(map(str, concs))}, load {min(loads):.1f}-{max(loads):.1f}, "
          f"now {os.getloadavg()[0]:.1f})")

if __name__ == "__main__":
    main()
