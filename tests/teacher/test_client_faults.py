"""The shared TeacherClient against a real HTTP server that fails on a schedule.

Every row carries its own schedule (see faulty_server.py), so the number of
attempts the server sees per row is exact whatever the concurrency. Backoff is
made tiny so the module runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from faulty_server import COMPLETION_TOKENS, PROMPT_TOKENS, FaultyServer
from lab_ray.teacher.client import TeacherClient

CLIENT_TIMEOUT_S = 0.8  # generous: the machine may be loaded; the hang is longer


@pytest.fixture
def server():
    with FaultyServer(hang_s=2.0) as s:
        yield s


def _client(url: str, **kw) -> TeacherClient:
    opts = dict(max_concurrency=8, timeout_s=CLIENT_TIMEOUT_S, max_retries=2, backoff_base_s=0.001,
                backoff_max_s=0.5, seed=0)
    opts.update(kw)
    return TeacherClient(url, "faulty", "k", **opts)


def _chat(script: str, **kw) -> tuple[str, dict]:
    return ("chat", {"messages": [{"role": "user", "content": script}], **kw})


def test_transient_failures_are_retried_until_success(server):
    client = _client(server.base_url, max_retries=3)
    scripts = {"a": "500,ok", "b": "429,503,ok", "c": "timeout,ok", "d": "garbage,ok", "e": "nochoices,ok",
               "f": "drop,ok", "g": "503,503,503,ok"}
    replies = client.run_many([_chat(f"{row}|{s}") for row, s in scripts.items()])
    client.close()
    assert all(r.ok for r in replies), [(r.error, r.detail) for r in replies]
    expected_attempts = {row: len(s.split(",")) for row, s in scripts.items()}
    assert {row: server.seen(row) for row in scripts} == expected_attempts
    assert [r.attempts for r in replies] == list(expected_attempts.values())
    assert [r.text for r in replies] == [f"reply {row} 0" for row in scripts]
    retries = sum(expected_attempts.values()) - len(scripts)
    assert client.usage.as_dict() == {"prompt_tokens": PROMPT_TOKENS * len(scripts),
                                      "completion_tokens": COMPLETION_TOKENS * len(scripts), "cached_tokens": 0,
                                      "requests": len(scripts), "retries": retries, "failures": 0}


@pytest.mark.parametrize("status", ["400", "404"])
def test_other_4xx_are_not_retried(server, status):
    client = _client(server.base_url)
    [reply] = client.run_many([_chat(f"x|{status},ok")])
    client.close()
    assert not reply.ok and reply.error == f"http_{status}" and "scheduled" in reply.detail
    assert server.seen("x") == 1 and reply.attempts == 1
    assert client.usage.as_dict() == {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "requests": 1, "retries": 0,
                                      "failures": 1}


def test_exhausted_retries_become_per_row_errors_with_reasons(server):
    client = _client(server.base_url, max_retries=2)
    rows = {"i": ("500", "http_500"), "j": ("429", "http_429"), "k": ("timeout", "timeout"),
            "l": ("garbage", "garbage"), "m": ("nochoices", "garbage"), "n": ("drop", "connection"),
            "o": ("503", "http_503")}
    replies = client.run_many([_chat(f"{row}|{step}") for row, (step, _) in rows.items()])
    client.close()
    assert [(r.ok, r.error) for r in replies] == [(False, reason) for _, reason in rows.values()]
    assert {row: server.seen(row) for row in rows} == {row: 3 for row in rows}  # 1 try + max_retries
    assert all(r.attempts == 3 and r.texts == [] for r in replies)
    assert client.usage.as_dict() == {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0, "requests": len(rows),
                                      "retries": 2 * len(rows), "failures": len(rows)}


def test_unreachable_server_is_a_connection_error_per_row():
    from teacher_net import free_port

    port = free_port()
    client = _client(f"http://127.0.0.1:{port}/v1", max_retries=1)
    replies = client.run_many([_chat("z|ok"), ("complete", {"prompt": "z|ok"})])
    client.close()
    assert [(r.ok, r.error, r.attempts) for r in replies] == [(False, "connection", 2)] * 2
    assert client.usage.requests == 2 and client.usage.failures == 2 and client.usage.retries == 2


def test_mixed_batch_never_raises_and_counts_exactly(server):
    """A batch like an SDG stage sends: good rows, rows that recover, rows that fail for good."""
    client = _client(server.base_url, max_retries=2)
    calls, expect = [], []  # expect: (ok, error, server attempts, n)
    for i in range(30):
        kind = i % 6
        row = f"m{i}"
        if kind == 0:
            calls.append(_chat(f"{row}|ok", n=2)), expect.append((True, None, 1, 2))
        elif kind == 1:
            calls.append(("complete", {"prompt": f"{row}|500,ok"})), expect.append((True, None, 2, 1))
        elif kind == 2:
            calls.append(_chat(f"{row}|400")), expect.append((False, "http_400", 1, 0))
        elif kind == 3:
            calls.append(_chat(f"{row}|429,429,429")), expect.append((False, "http_429", 3, 0))
        elif kind == 4:
            calls.append(_chat(f"{row}|garbage,429ra=0,ok")), expect.append((True, None, 3, 1))
        else:
            calls.append(("choose", {"messages": [{"role": "user", "content": f"{row}|ok"}],
                                     "choices": ["good", "bad"]})), expect.append((True, None, 1, 1))
    # A call the client cannot even build (bad kwargs) is a row error too, never an exception.
    calls.append(("chat", {"not_messages": []})), expect.append((False, "client_error", 0, 0))

    replies = client.run_many(calls)
    client.close()
    assert len(replies) == len(calls)
    for i, (r, (ok, err, attempts, n)) in enumerate(zip(replies, expect)):
        assert (r.ok, r.error) == (ok, err), (i, r)
        if attempts:
            assert server.seen(f"m{i}") == attempts, i
        if ok:
            assert len(r.texts) == n and r.completion_tokens == COMPLETION_TOKENS * n
    assert replies[5].text == "good" and replies[5].choice_probs()["good"] > 0.5
    good = [e for e in expect if e[0]]
    assert client.usage.as_dict() == {
        "prompt_tokens": PROMPT_TOKENS * len(good),
        "completion_tokens": COMPLETION_TOKENS * sum(n for *_, n in good), "cached_tokens": 0,
        "requests": len(calls),
        "retries": sum(a - 1 for _, _, a, _ in expect if a),
        "failures": len(calls) - len(good),
    }


def test_choice_answered_with_free_text_is_an_unparsable_failure(server):
    client = _client(server.base_url)
    replies = client.run_many([
        ("choose", {"messages": [{"role": "user", "content": "u|free"}], "choices": ["yes", "no"]}),
        ("choose", {"messages": [{"role": "user", "content": "v|ok"}], "choices": ["yes", "no"]}),
    ])
    client.close()
    assert (replies[0].ok, replies[0].error) == (False, "unparsable")
    assert replies[1].ok and replies[1].text == "yes"
    # both were answered (tokens spent), one counts as a failure
    assert client.usage.requests == 2 and client.usage.failures == 1
    assert client.usage.completion_tokens == 2 * COMPLETION_TOKENS


def test_structured_outputs_choice_with_top_logprobs_like_vllm(server):
    # vLLM >= 0.12 ignores guided_choice: with it the answer is free text, an unparsable row.
    old = _client(server.base_url).run_many([
        ("choose", {"messages": [{"role": "user", "content": "a|vllm"}], "choices": ["yes", "no"]})])
    assert (old[0].ok, old[0].error) == (False, "unparsable")
    client = _client(server.base_url, choice_field="structured_outputs", choice_top_logprobs=5)
    replies = client.run_many([
        ("choose", {"messages": [{"role": "user", "content": "b|vllm"}], "choices": ["yes", "no"]}),
        ("choose", {"messages": [{"role": "user", "content": "c|vllm"}], "choices": ["1", "2", "3"]}),
    ])
    client.close()
    assert [r.text for r in replies] == ["no", "3"]
    probs = replies[0].choice_probs()
    assert probs is not None and probs["no"] > probs["yes"] and abs(sum(probs.values()) - 1) < 1e-9
    assert replies[1].choice_logprobs == {"3": 0.0, "2": -0.5, "1": -1.0}


def test_client_asks_one_top_logprob_per_choice_and_a_missing_one_gives_no_probability(server):
    # choice_top_logprobs=1 still asks for one per choice (a 1-9 rating scale needs 9) ...
    client = _client(server.base_url, choice_field="structured_outputs", choice_top_logprobs=1)
    letters = [chr(ord("a") + i) for i in range(21)]  # ... but never more than vLLM's 20
    reply, many = client.run_many([
        ("choose", {"messages": [{"role": "user", "content": "d|vllm"}], "choices": ["yes", "no"]}),
        ("choose", {"messages": [{"role": "user", "content": "e|vllm"}], "choices": letters})])
    client.close()
    assert reply.ok and reply.text == "no" and set(reply.choice_logprobs) == {"yes", "no"}
    assert many.ok and many.text == "u" and many.choice_logprobs is None  # "a" fell off the top 20


def test_unknown_choice_field_is_refused():
    with pytest.raises(ValueError, match="choice_field"):
        TeacherClient("http://127.0.0.1:9/v1", "m", choice_field="guided_json")
    # from the command line it is a config error naming the key, before any Ray work
    from lab_ray.config import load_config
    from lab_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher.client.choice_field.*guided_json.*expected one of \\[guided_choice, structured_outputs\\]"):
        load_config(["teacher.client.choice_field=guided_json"])


def test_retry_after_is_honoured_and_capped(server):
    client = _client(server.base_url, backoff_max_s=0.6)
    client.run_many([_chat("ra|429ra=0.4,ok"), _chat("cap|429ra=30,ok"), _chat("nora|429,ok")])
    client.close()
    gap = {row: (lambda t: t[1] - t[0])(server.times(row)) for row in ("ra", "cap", "nora")}
    assert 0.38 <= gap["ra"] < 3, gap
    assert 0.55 <= gap["cap"] < 3, gap  # Retry-After: 30 capped at backoff_max_s
    assert gap["nora"] < 0.3, gap  # jittered backoff from a 1 ms base


def test_backoff_is_exponential_with_full_jitter():
    client = _client("http://127.0.0.1:1/v1", backoff_base_s=0.1, backoff_max_s=1.0)
    for attempt in range(6):
        cap = min(1.0, 0.1 * 2 ** attempt)
        waits = [client._backoff(attempt, None) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits) and max(waits) > 0.7 * cap
    assert client._backoff(0, "0.25") == 0.25 and client._backoff(0, "not-a-number") <= 0.1


def test_concurrency_is_bounded_and_connections_reused(server):
    client = _client(server.base_url, max_concurrency=3)
    start = time.monotonic()
    replies = client.run_many([_chat(f"s{i}|slow=0.2") for i in range(9)])
    elapsed = time.monotonic() - start
    assert all(r.ok for r in replies)
    assert server.peak_in_flight == 3
    assert elapsed >= 0.55  # 9 requests, 3 at a time, 0.2 s each
    # a second batch on the same client reuses the pool (and the private loop)
    assert all(r.ok for r in client.run_many([_chat(f"t{i}|ok") for i in range(3)]))
    client.close()
    assert client.usage.requests == 12


def test_async_api_works_across_event_loops(server):
    client = _client(server.base_url)
    first = asyncio.run(client.chat([{"role": "user", "content": "p|ok"}]))
    second = asyncio.run(client.complete("q|ok"))  # a new loop: fresh pool, no "attached to a different loop"
    assert first.ok and second.ok and second.text == "reply q 0"
    asyncio.run(client.aclose())
