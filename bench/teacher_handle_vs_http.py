"""Should in-cluster stages call the teacher through a DeploymentHandle instead of HTTP?

Same requests, same concurrency, both paths, rounds interleaved (HTTP, handle,
HTTP, handle, ...) so load from other jobs hits both alike. Two workloads:
`judge` (constrained choice: one forward pass, where per-request overhead
matters most) and `generate` (32 new tokens). Prints req/s of each path and
the ratio handle/HTTP; the last line is the ratio on the judge workload.

    .venv/bin/python bench/teacher_handle_vs_http.py [--requests 48] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from teacher_common import MODEL, load_note, prompts, start_teacher, stop_teacher


def workloads(n: int) -> dict[str, list[tuple[str, dict]]]:
    ps = prompts(n)
    judge = [("chat/completions", {"model": MODEL, "messages": p + [{"role": "user", "content": "Is that clear?"}],
                                   "guided_choice": ["yes", "no"], "temperature": 0}) for p in ps]
    gen = [("chat/completions", {"model": MODEL, "messages": p, "max_tokens": 32, "temperature": 0,
                                 "ignore_eos": True}) for p in ps]
    return {"judge": judge, "generate": gen}


async def via_http(client, reqs) -> float:
    t = time.perf_counter()
    replies = await asyncio.gather(*(client._request("/" + route, {k: v for k, v in body.items() if k != "model"},
                                                     chat=True) for route, body in reqs))
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok][:3]
    return time.perf_counter() - t


async def via_handle(handle, reqs, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(route, body):
        async with sem:
            return await handle.call.remote(route, body)

    t = time.perf_counter()
    replies = await asyncio.gather(*(one(r, b) for r, b in reqs))
    assert all(r["status"] == 200 for r in replies), [r for r in replies if r["status"] != 200][:1]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()

    from ray import serve

    from lab_ray.teacher.client import TeacherClient

    endpoint, cfg = start_teacher(["ray.num_cpus=2"])
    try:
        handle = serve.get_deployment_handle("CPUTeacher", app_name=cfg.teacher.app_name)
        client = TeacherClient(endpoint.base_url, MODEL, max_concurrency=args.concurrency, max_retries=0)
        loads = workloads(args.requests)

        async def run():
            # warm-up both paths (connections, router, first batch)
            await via_http(client, loads["judge"][:4])
            await via_handle(handle, loads["judge"][:4], args.concurrency)
            secs = {(w, p): 0.0 for w in loads for p in ("http", "handle")}
            for _ in range(args.rounds):
                for w, reqs in loads.items():
                    secs[(w, "http")] += await via_http(client, reqs)
                    secs[(w, "handle")] += await via_handle(handle, reqs, args.concurrency)
            await client.aclose()
            return secs

        secs = asyncio.run(run())
        print(f"# {args.requests} requests x {args.rounds} rounds per path, concurrency {args.concurrency}, "
              f"max_batch_size {cfg.teacher.batching.max_batch_size}; {load_note()}")
        ratios = {}
        for w in loads:
            n = args.requests * args.rounds
            http_rps, handle_rps = n / secs[(w, "http")], n / secs[(w, "handle")]
            ratios[w] = handle_rps / http_rps
            print(f"{w:9s} http {http_rps:7.2f} req/s   handle {handle_rps:7.2f} req/s   handle/http {ratios[w]:.3f}")
        print(f"handle/http ratio (judge): {ratios['judge']:.3f}")
    finally:
        stop_teacher()


if __name__ == "__main__":
    main()
