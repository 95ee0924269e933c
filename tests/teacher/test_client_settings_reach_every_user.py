"""A teacher profile's client settings reach every request lab-ray sends.

There is one way to build a teacher client from config
(`lab_ray.teacher.client.client_spec` + `make_teacher`). This test holds
generation, judge calibration, the checkpoint scorers and eval to it: with
the `mixtral-vllm` profile (vLLM >= 0.12: `structured_outputs`, first-token
top_logprobs), every constrained choice any of them sends must carry
`structured_outputs` and `top_logprobs`, never `guided_choice` (which vLLM
ignores: judges would fall back to free text with no probability).

The server is a real HTTP server on 127.0.0.1 that answers like vLLM does
(honours structured_outputs.choice, returns top_logprobs) and records every
request body; no Ray, no model.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from teacher_net import API_KEY, free_port

TOP_LOGPROBS = 3


class _Recorder(BaseHTTPRequestHandler):
    def log_message(self, *a):  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # /v1/models: the configured model serves here
        self._send(200, {"object": "list", "data": [{"id": self.server.model, "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        choices = (body.get("structured_outputs") or {}).get("choice")
        if choices:  # vLLM: the constrained answer, first-token top_logprobs, no per-choice scores
            text = choices[0]
            top = [{"token": c, "logprob": -0.1 * (i + 1)} for i, c in enumerate(choices)]
            logprobs = {"content": [{"token": text, "logprob": -0.1, "top_logprobs": top}]}
        else:  # free text (vLLM ignores guided_choice): a Q/A in the tagged format, or a sentence
            text, logprobs = "[Question] What is the capital? [Answer] The capital is Port Avel. [End]", None
        self._send(200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "logprobs": logprobs, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Recorder)
    srv.requests, srv.lock, srv.model = [], threading.Lock(), "mixtral-8x7b-instruct"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cfg(server, tmp_path, monkeypatch):
    from lab_ray.config import load_config

    monkeypatch.delenv("LAB_RAY_TEACHER_API_KEY", raising=False)
    server.requests.clear()
    return load_config(["teacher=mixtral-vllm", f"teacher.base_url=http://127.0.0.1:{server.server_port}/v1",
                        f"teacher.api_key={API_KEY}", f"teacher.client.choice_top_logprobs={TOP_LOGPROBS}",
                        "teacher.client.max_retries=0", f"run.root={tmp_path}", "run.name=r"])


def _choices(server) -> list[dict]:
    reqs = [r for r in server.requests if "structured_outputs" in r or "guided_choice" in r]
    assert reqs, "no constrained-choice request was sent"
    return reqs


def _assert_profile_settings(server, cfg) -> None:
    for r in _choices(server):
        assert "guided_choice" not in r, "a judge sent guided_choice, which vLLM >= 0.12 ignores"
        assert r["structured_outputs"]["choice"], r
        # the profile's top_logprobs, raised to one per choice (the eval judge's 1-9 scale needs 9)
        assert r["logprobs"] is True and r["top_logprobs"] == max(TOP_LOGPROBS, len(r["structured_outputs"]["choice"]))
    for r in server.requests:
        assert r["path"] == "/v1/chat/completions" and r["model"] == cfg.teacher.model
        assert r["auth"] == f"Bearer {API_KEY}"


def _leaf_spec(kind: str) -> dict:
    seeds = [{"question": f"What is fact {i}?", "answer": f"Fact {i} is true.", "context": "Port Avel is the capital."}
             for i in range(3)]
    return {"leaf": f"knowledge/x/{kind}" if kind == "knowledge" else f"compositional_skills/x/{kind}",
            "branch": "knowledge" if kind == "knowledge" else "compositional_skills", "kind": kind,
            "task_description": "facts", "domain": "geography", "persona": "You are precise.", "quota": 1,
            "examples": seeds, "seeds": seeds, "chunks": ["Port Avel is the capital."]}


def test_generation_judges_use_the_profile(server, cfg):
    """The spec generation ships to every stage actor carries the profile's settings,
    and a judge built from it scores the vLLM-style reply with a probability."""
    import pandas as pd
    from omegaconf import OmegaConf

    from lab_ray.sdg.commands import generation_teacher
    from lab_ray.sdg.stages import JudgeFaithfulness, JudgeInstruction
    from lab_ray.sdg.tasks import expand

    with generation_teacher(cfg) as spec:
        sdg = OmegaConf.to_container(cfg.sdg, resolve=True)
        for stage, kind in ((JudgeInstruction, "freeform"), (JudgeFaithfulness, "knowledge")):
            rows = list(expand(_leaf_spec(kind), 0, 2, 2))
            batch = pd.DataFrame([{**r, "question": "What is the capital?", "answer": "Port Avel."} for r in rows])
            out = stage(spec, sdg)(batch)
            score = out[stage.score_column()]
            assert score.notna().all() and (score > 0.5).all(), out[["status", "drop_reason", "drop_detail"]]
    _assert_profile_settings(server, cfg)


def test_calibration_uses_the_profile(server, cfg):
    from omegaconf import OmegaConf

    from lab_ray.sdg.calibration import calibrate
    from lab_ray.teacher.client import client_spec

    sdg = OmegaConf.to_container(cfg.sdg, resolve=True)
    levels = calibrate([_leaf_spec("freeform"), _leaf_spec("knowledge")],
                       client_spec(cfg.teacher, cfg.teacher.base_url, API_KEY), sdg)
    assert set(levels) >= {"judge_instruction", "judge_pair", "judge_faithfulness"}
    _assert_profile_settings(server, cfg)


@pytest.mark.parametrize("user", ["checkpoint scorer", "eval"])
def test_scorers_and_eval_judge_use_the_profile(server, cfg, user):
    """Checkpoint selection scores through `shared_teacher`, `lab-ray eval` through a
    `LazyTeacher`: both judge answers with the profile's settings and get a score."""
    from lab_ray.eval import teacher as eval_teacher
    from lab_ray.eval.runner import judge
    from lab_ray.prompts import load_prompt

    handle = eval_teacher.shared_teacher(cfg) if user == "checkpoint scorer" else eval_teacher.LazyTeacher(cfg)
    try:
        prompt = load_prompt("eval_judge", cfg.eval.prompts_dir)
        items = [{"question": f"Write a haiku {i} ({user})", "reference": "An old pond."} for i in range(2)]
        verdicts = judge(handle, prompt, items, ["A frog jumps in.", "Sound of water."], cfg.teacher.model)
        assert all(v["score"] is not None for v in verdicts), verdicts
        assert not handle.deployed  # the configured teacher was used, nothing deployed
    finally:
        eval_teacher.close_shared() if user == "checkpoint scorer" else handle.close()
    _assert_profile_settings(server, cfg)
