"""The real CPU teacher deployment: OpenAI API, batching, constrained choice, errors."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

from teacher_net import API_KEY

MODEL = "SmolLM2-135M-Instruct"
pytestmark = pytest.mark.slow


def _post(endpoint, path, body, key=API_KEY, raw=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = endpoint.base_url + path
    if raw is not None:
        return httpx.post(url, content=raw, headers={**headers, "content-type": "application/json"}, timeout=120)
    return httpx.post(url, json=body, headers=headers, timeout=120)


def _assert_alive(endpoint):
    r = _post(endpoint, "/chat/completions", {"model": MODEL, "max_tokens": 2,
                                              "messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_chat_answers_with_correct_usage(teacher):
    endpoint, _ = teacher
    from transformers import AutoTokenizer

    from lab_ray.embedded_model import embedded_model_dir

    messages = [{"role": "user", "content": "Name three colours."}]
    r = _post(endpoint, "/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 8,
                                              "temperature": 0})
    assert r.status_code == 200, r.text
    data = r.json()
    text = data["choices"][0]["message"]["content"]
    assert text.strip()
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt_ids = prompt_ids["input_ids"] if hasattr(prompt_ids, "keys") else prompt_ids
    assert data["usage"]["prompt_tokens"] == len(prompt_ids)
    finish = data["choices"][0]["finish_reason"]
    if finish == "length":
        assert data["usage"]["completion_tokens"] == 8
    else:
        assert 0 < data["usage"]["completion_tokens"] < 8
    assert data["usage"]["total_tokens"] == data["usage"]["prompt_tokens"] + data["usage"]["completion_tokens"]


def test_official_openai_client_chat_and_completions(teacher):
    endpoint, _ = teacher
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=API_KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                          max_tokens=6, n=2, temperature=0.8, seed=7)
    assert len(chat.choices) == 2 and all(c.message.content for c in chat.choices)
    comp = client.completions.create(model=MODEL, prompt=["One, two, three,", "The sky is"], max_tokens=5, n=2,
                                     temperature=0.8)
    assert len(comp.choices) == 4 and sorted(c.index for c in comp.choices) == [0, 1, 2, 3]
    assert all(isinstance(c.text, str) for c in comp.choices)
    assert comp.usage.completion_tokens > 0 and comp.usage.prompt_tokens > 0
    # vLLM's guided_choice extension passes through the official client's extra_body
    judged = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Is ice cold?"}],
                                            extra_body={"guided_choice": ["yes", "no"]})
    assert judged.choices[0].message.content in ("yes", "no")


def test_concurrent_requests_are_batched(teacher):
    endpoint, _ = teacher
    before = httpx.get(endpoint.base_url + "/stats").json()["batch_size_histogram"]

    async def fire():
        async with httpx.AsyncClient(timeout=300, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            reqs = [c.post(endpoint.base_url + "/chat/completions",
                           json={"model": MODEL, "max_tokens": 4, "temperature": 0,
                                 "messages": [{"role": "user", "content": f"Count to {i}."}]}) for i in range(16)]
            return await asyncio.gather(*reqs)

    responses = asyncio.run(fire())
    assert all(r.status_code == 200 for r in responses)
    after = httpx.get(endpoint.base_url + "/stats").json()["batch_size_histogram"]
    new = {int(k): v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert sum(size * count for size, count in new.items()) == 16, new  # every request went through a batch
    assert max(new) > 1, new  # ... and some were generated together
    assert max(new) <= 8, new  # never above the configured max_batch_size


def test_constrained_choice_is_one_of_the_strings_and_matches_the_model(teacher):
    endpoint, _ = teacher
    from lab_ray.embedded_model import embedded_model_dir
    from lab_ray.teacher.engine import Engine

    engine = Engine(str(embedded_model_dir()), threads=1)
    choices = ["yes", "no", "maybe"]
    for question in ["Is water wet?", "Is fire cold?", "Do birds fly?", "Is 2 larger than 3?"]:
        messages = [{"role": "user", "content": question}]
        r = _post(endpoint, "/chat/completions", {"model": MODEL, "messages": messages, "guided_choice": choices})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["message"]["content"] in choices
        served = choice["choice_logprobs"]
        direct = engine.choice_logprobs(engine.chat_prompt(messages), choices)
        assert served == pytest.approx(direct, abs=1e-3)
        assert sorted(choices, key=served.get) == sorted(choices, key=direct.get)
        assert choice["message"]["content"] == max(direct, key=direct.get)


def test_api_key_is_enforced(teacher):
    endpoint, _ = teacher
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert _post(endpoint, "/chat/completions", body, key=None).status_code == 401
    r = _post(endpoint, "/chat/completions", body, key="wrong")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    _assert_alive(endpoint)


def test_context_overflow_is_400(teacher):
    endpoint, _ = teacher
    r = _post(endpoint, "/chat/completions", {"model": MODEL, "max_tokens": 100,
                                              "messages": [{"role": "user", "content": "word " * 9000}]})
    assert r.status_code == 400 and "maximum context length" in r.json()["error"]["message"]
    _assert_alive(endpoint)


@pytest.mark.parametrize("body, raw, status", [
    (None, b"{not json", 400),
    ({"model": MODEL, "messages": "not a list"}, None, 422),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 0}, None, 422),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, None, 422),
    ({"model": "gpt-unknown", "messages": [{"role": "user", "content": "x"}]}, None, 404),
])
def test_bad_requests_get_openai_errors_and_deployment_survives(teacher, body, raw, status):
    endpoint, _ = teacher
    r = _post(endpoint, "/chat/completions", body, raw=raw)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    _assert_alive(endpoint)


def test_shared_client_against_the_real_teacher(teacher):
    endpoint, cfg = teacher
    from lab_ray.teacher.client import client_spec, make_teacher

    client = make_teacher(client_spec(cfg.teacher, endpoint.base_url, endpoint.api_key))
    calls = [("chat", {"messages": [{"role": "user", "content": f"Say {i}."}], "max_tokens": 4}) for i in range(5)]
    calls.append(("choose", {"messages": [{"role": "user", "content": "Is ice cold?"}], "choices": ["yes", "no"]}))
    replies = client.run_many(calls)
    client.close()
    assert all(r.ok for r in replies)
    assert replies[-1].text in ("yes", "no") and abs(sum(replies[-1].choice_probs().values()) - 1) < 1e-6
    assert client.usage.requests == 6 and client.usage.failures == 0
    assert client.usage.completion_tokens == sum(r.completion_tokens for r in replies)


def test_deployment_handle_route_has_the_same_api(teacher):
    """In-cluster callers may skip HTTP: `call` validates, authenticates and answers like the routes."""
    endpoint, cfg = teacher
    from ray import serve

    handle = serve.get_deployment_handle("CPUTeacher", app_name=cfg.teacher.app_name)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0}
    ok = handle.call.remote("/v1/chat/completions", body, f"Bearer {API_KEY}").result(timeout_s=120)
    assert ok["status"] == 200 and ok["body"]["choices"][0]["message"]["content"]
    assert 0 < ok["body"]["usage"]["completion_tokens"] <= 3
    comp = handle.call.remote("completions", {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2, "n": 2},
                              f"Bearer {API_KEY}").result(timeout_s=120)
    assert comp["status"] == 200 and len(comp["body"]["choices"]) == 4
    assert handle.call.remote("chat/completions", body).result(timeout_s=60)["status"] == 401
    bad = handle.call.remote("chat/completions", {**body, "n": 0}, f"Bearer {API_KEY}").result(timeout_s=60)
    assert bad["status"] == 422 and bad["body"]["error"]["message"]
    long = {**body, "messages": [{"role": "user", "content": "word " * 9000}]}
    assert handle.call.remote("chat/completions", long, f"Bearer {API_KEY}").result(timeout_s=60)["status"] == 400
    assert handle.call.remote("embeddings", body, f"Bearer {API_KEY}").result(timeout_s=60)["status"] == 404
    _assert_alive(endpoint)


def _chat(endpoint, **params):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a sentence about the sea."}],
            "max_tokens": 24, **params}
    r = _post(endpoint, "/chat/completions", body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_stop_string_cuts_the_greedy_text_before_it(teacher):
    endpoint, _ = teacher
    full = _chat(endpoint, temperature=0)["message"]["content"]
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[3]  # occurs in the greedy text, so the stopped text is the part before it
    cut = _chat(endpoint, temperature=0, stop=[stop])
    assert cut["finish_reason"] == "stop"
    assert cut["message"]["content"] == full[:full.index(stop)]


def test_seed_repeats_a_sampled_text_and_top_p_near_zero_is_greedy(teacher):
    endpoint, _ = teacher
    a = _chat(endpoint, temperature=1.0, seed=7)["message"]["content"]
    b = _chat(endpoint, temperature=1.0, seed=7)["message"]["content"]
    assert a == b
    others = {_chat(endpoint, temperature=1.0, seed=s)["message"]["content"] for s in (8, 9, 10)}
    assert len(others | {a}) > 1, "sampling with different seeds gave one text every time"
    greedy = _chat(endpoint, temperature=0)["message"]["content"]
    assert _chat(endpoint, temperature=1.0, top_p=1e-6, seed=3)["message"]["content"] == greedy


def test_logprobs_cover_every_token_and_greedy_picks_the_top_one(teacher):
    endpoint, _ = teacher
    choice = _chat(endpoint, temperature=0, logprobs=True, top_logprobs=3)
    content = choice["logprobs"]["content"]
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    for t in content:
        assert t["logprob"] <= 0 and len(t["top_logprobs"]) == 3
        tops = [x["logprob"] for x in t["top_logprobs"]]
        assert tops == sorted(tops, reverse=True)
        assert t["token"] == t["top_logprobs"][0]["token"] and abs(t["logprob"] - tops[0]) < 1e-4


def test_the_runs_own_teacher_is_reached_through_a_handle_with_the_same_replies(teacher):
    """client_spec with the app name (the command deployed the teacher) gives a handle client: the same
    greedy text, usage and choice probabilities as over HTTP; a wrong key is a 401 without retries."""
    endpoint, cfg = teacher
    from lab_ray.teacher.client import client_spec, make_teacher
    from lab_ray.teacher.handle_client import HandleTeacherClient

    via_handle = make_teacher(client_spec(cfg.teacher, endpoint.base_url, endpoint.api_key, app=cfg.teacher.app_name))
    via_http = make_teacher(client_spec(cfg.teacher, endpoint.base_url, endpoint.api_key))
    assert isinstance(via_handle, HandleTeacherClient) and not isinstance(via_http, HandleTeacherClient)
    calls = [("chat", {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6,
                       "temperature": 0}),
             ("complete", {"prompt": "The sky is", "max_tokens": 4, "temperature": 0}),
             ("choose", {"messages": [{"role": "user", "content": "Is ice cold?"}], "choices": ["yes", "no"]})]
    a, b = via_handle.run_many(calls), via_http.run_many(calls)
    assert all(r.ok for r in a), [(r.error, r.detail) for r in a]
    assert [r.text for r in a] == [r.text for r in b]
    assert [(r.prompt_tokens, r.completion_tokens) for r in a] == [(r.prompt_tokens, r.completion_tokens) for r in b]
    pa, pb = a[2].choice_probs(), b[2].choice_probs()
    assert pa.keys() == pb.keys() and all(abs(pa[k] - pb[k]) < 1e-4 for k in pa)
    assert via_handle.usage.requests == 3 and via_handle.usage.failures == 0
    spec = client_spec(cfg.teacher, endpoint.base_url, "not-the-key", app=cfg.teacher.app_name)
    wrong = make_teacher(spec).run_many(calls[:1])[0]
    assert (wrong.ok, wrong.error, wrong.attempts) == (False, "http_401", 1)
    # an explicit http transport keeps HTTP even for the run's own teacher
    cfg_http = cfg.teacher.copy()
    cfg_http.client.transport = "http"
    assert client_spec(cfg_http, endpoint.base_url, None, app="teacher")["kind"] == "http"
    for c in (via_handle, via_http):
        c.close()
