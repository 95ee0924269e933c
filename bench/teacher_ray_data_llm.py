"""Ray's own batch inference (ray.data.llm) vs the Serve vLLM teacher, same work, one run.

Issue 12's question: should generation stages get a `ray.data.llm` option (the
vLLM engine inside Ray Data actors, no HTTP)? Adopt it only if it is >= 1.2x
faster than the Serve teacher on the same work. Two sides over the same chat
prompts (`teacher_common.prompts`: system + user, SDG-like asks), the same
max_tokens with `ignore_eos` and greedy decoding (so every request generates
exactly --max-tokens tokens; completion and prompt token counts are asserted
equal on both sides), the same vLLM engine arguments (the `teacher=vllm-cpu`
profile's, taken from `lab_ray.teacher.serve_vllm.llm_config_kwargs`: fp32,
enforce_eager, max_model_len 2048, 1 GiB KV cache via kv_cache_memory_bytes,
block_size 32, prefix caching):

(a) serve: the `teacher=vllm-cpu` app (ray.serve.llm, deployed by
    `lab_ray.teacher.app.deploy` as lab-ray deploys it) driven by lab-ray's
    TeacherClient with --in-flight requests in flight (default: all prompts).
    Deployed once; each round is the client's wall time.
(b) ray-data: `ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))`
    over a Ray Dataset of the same prompts: Ray's chat-template, tokenize,
    vLLM engine (one actor, one logical CPU, executor "uni") and detokenize
    stages, --batch-size rows per engine batch (default 16; Ray's default of 8
    concurrent batches per actor puts all 48 prompts in the engine at once).
    Each round is one `processor(ds).take_all()`, i.e. a fresh engine actor,
    which is what a generation stage would pay per run. Two figures: the wall
    time of the whole call (engine start included) and the engine span (first
    request's start to last request's end, from each row's time_taken_llm and
    a timestamp taken by the postprocess, which lags the engine by one map
    task: a slight over-estimate).

Rounds interleave (serve, ray-data, serve, ray-data, ...) so load from other
jobs hits both. Each round tags its prompts (a round number at the start of the
system text, the same on both sides): the Serve engine lives across rounds, and
untagged repeats would give it prefix-cache hits a fresh ray-data engine cannot
have. Both engines live on one local Ray at once (ray.num_cpus=8
logical on 2 real cores; the idle one waits on its input queue). Prints
per-round tok/s and, last, ray-data/serve speed ratios (steady: engine span;
end to end: wall), target for adoption >= 1.2.

    .venv/bin/python bench/teacher_ray_data_llm.py [--prompts 48] [--max-tokens 64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from teacher_common import free_port, load_note, prompts


def serve_round(client, chats, max_tokens: int) -> tuple[int, int, float]:
    t0 = time.perf_counter()
    replies = client.run_many([("chat", {"messages": m, "max_tokens": max_tokens, "temperature": 0.0,
                                         "ignore_eos": True}) for m in chats])
    wall = time.perf_counter() - t0
    bad = [r for r in replies if not r.ok]
    assert not bad, f"{len(bad)} failed: {bad[0].error} {bad[0].detail}"
    return sum(r.completion_tokens for r in replies), sum(r.prompt_tokens for r in replies), wall


def build(engine_kwargs: dict, model: str, max_tokens: int, batch_size: int):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs=engine_kwargs,
        batch_size=batch_size,
        concurrency=1,
        # CPU: one bundle of one CPU (as the Serve profile's placement_bundles); without it
        # Ray Data asks for a GPU per engine.
        placement_group_config={"bundles": [{"CPU": 1}]},
        log_engine_metrics=False,
    )

    def pre(row):
        return {"i": row["i"], "messages": json.loads(row["messages"]),
                "sampling_params": {"temperature": 0.0, "max_tokens": max_tokens, "ignore_eos": True}}

    def post(row):
        return {"i": row["i"], "completion_tokens": int(row["num_generated_tokens"]),
                "prompt_tokens": int(row["num_input_tokens"]), "t_llm": float(row["time_taken_llm"]),
                "t_end": time.time(), "text": row["generated_text"]}

    return build_processor(config, preprocess=pre, postprocess=post)


def ray_data_round(processor, chats) -> tuple[int, int, float, float]:
    import ray

    ds = ray.data.from_items([{"i": i, "messages": json.dumps(m)} for i, m in enumerate(chats)])
    t0 = time.perf_counter()
    rows = processor(ds).take_all()
    wall = time.perf_counter() - t0
    assert len(rows) == len(chats), f"{len(rows)} rows back for {len(chats)} prompts"
    span = max(r["t_end"] for r in rows) - min(r["t_end"] - r["t_llm"] for r in rows)
    return (sum(r["completion_tokens"] for r in rows), sum(r["prompt_tokens"] for r in rows), wall, span)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16, help="ray.data.llm rows per engine batch")
    ap.add_argument("--in-flight", type=int, default=0, help="Serve side's client concurrency (0: all prompts)")
    args = ap.parse_args()
    # Ray's memory monitor kills workers when the node is near full, whoever fills it (shared machine).
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")

    import ray
    from ray import serve

    from lab_ray.config import load_config
    from lab_ray.embedded_model import resolve_model
    from lab_ray.ray_cluster import init_ray
    from lab_ray.teacher.app import deploy
    from lab_ray.teacher.client import TeacherClient
    from lab_ray.teacher.serve_vllm import llm_config_kwargs

    cfg = load_config(["teacher=vllm-cpu", f"teacher.port={free_port()}", "ray.num_cpus=8"])
    init_ray(cfg.ray)
    try:
        t = time.perf_counter()
        endpoint = deploy(cfg.teacher, cfg.ray)
        print(f"serve: app deployed in {time.perf_counter() - t:.0f} s ({load_note()})", flush=True)
        engine_kwargs = dict(llm_config_kwargs(cfg.teacher)["engine_kwargs"])
        # An OpenAI-frontend argument (usage.prompt_tokens_details), not an engine one.
        engine_kwargs.pop("enable_prompt_tokens_details", None)
        print(f"engine arguments (both sides): {engine_kwargs}", flush=True)
        model = resolve_model(cfg.teacher.vllm.model_source)
        chats = prompts(args.prompts)
        in_flight = args.in_flight or args.prompts
        client = TeacherClient(endpoint.base_url, endpoint.model, endpoint.api_key, max_concurrency=in_flight,
                               max_retries=0, timeout_s=1200)
        processor = build(engine_kwargs, str(model), args.max_tokens, args.batch_size)
        serve_round(client, chats[:4], 4)  # warm-up: connections, first-call allocations
        expected = args.prompts * args.max_tokens
        res: dict[str, list] = {"serve": [], "ray-data": []}
        prompt_tokens: dict[str, int] = {}
        for rnd in range(args.rounds):
            # A per-round tag at the very start of the system text: no prompt block is shared with an
            # earlier round, so the Serve engine (alive across rounds) gets no prefix-cache hits the fresh
            # ray-data engine cannot have. Both sides of a round get the same tagged prompts.
            tagged = [[{**m[0], "content": f"[{rnd + 1}] {m[0]['content']}"}, *m[1:]] for m in chats]
            for side in ("serve", "ray-data"):
                la = os.getloadavg()[0]
                if side == "serve":
                    tok, ptok, wall = serve_round(client, tagged, args.max_tokens)
                    span = wall
                else:
                    tok, ptok, wall, span = ray_data_round(processor, tagged)
                assert tok == expected, f"{side} generated {tok} tokens, expected {expected}"
                prompt_tokens[side] = ptok
                res[side].append((tok, wall, span, la))
                extra = f"; engine span {span:.1f} s = {tok / span:.1f} tok/s" if side == "ray-data" else ""
                print(f"  round {rnd + 1} {side:8s} {tok / wall:6.1f} tok/s ({tok} tokens in {wall:.1f} s{extra}; "
                      f"load {la:.1f})", flush=True)
            # the same chat template render on both sides: equal prompt token counts
            assert prompt_tokens["serve"] == prompt_tokens["ray-data"], f"prompt tokens differ: {prompt_tokens}"
        client.close()
        steady = [(r_tok / r_span) / (s_tok / s_wall)
                  for (s_tok, s_wall, _, _), (r_tok, _, r_span, _) in zip(res["serve"], res["ray-data"])]
        e2e = [(r_tok / r_wall) / (s_tok / s_wall)
               for (s_tok, s_wall, _, _), (r_tok, r_wall, _, _) in zip(res["serve"], res["ray-data"])]
        rate = {side: sum(x[0] for x in v) / sum(x[1] for x in v) for side, v in res.items()}
        rd_span = sum(x[0] for x in res["ray-data"]) / sum(x[2] for x in res["ray-data"])
        print(f"# {args.prompts} prompts x {args.max_tokens} tokens (greedy, ignore_eos; {prompt_tokens['serve']} "
              f"prompt tokens in the last round on both sides) x {args.rounds} rounds; serve: {in_flight} in flight; "
              f"ray-data: batch_size {args.batch_size}, 1 engine actor; {load_note()}")
        print(f"serve     {rate['serve']:6.1f} tok/s")
        print(f"ray-data  {rate['ray-data']:6.1f} tok/s end to end (engine start included), "
              f"{rd_span:6.1f} tok/s over the engine span")
        print("per round ray-data/serve: steady " + ", ".join(f"{r:.3f}" for r in steady)
              + "; end to end " + ", ".join(f"{r:.3f}" for r in e2e))
        print(f"teacher_ray_data_llm: ray-data/serve = {rd_span / rate['serve']:.3f} steady (median per round "
              f"{statistics.median(steady):.3f}), {rate['ray-data'] / rate['serve']:.3f} end to end "
              f"(adopt if >= 1.2)")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
