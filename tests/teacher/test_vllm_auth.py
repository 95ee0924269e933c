"""The API key in front of the vLLM teacher's ingress (lab_ray/teacher/auth.py).

vLLM cannot be installed here, so ray.serve.llm's ingress module cannot be
imported; the middleware is tested on a real FastAPI app (what Ray's `init()`
returns), and the build-time wrapping against a stand-in for that one module.
"""

from __future__ import annotations

import sys
import types

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lab_ray.teacher.auth import BearerKeyMiddleware
from lab_ray.teacher.serve_vllm import _ingress_with_key


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat():
        return {"ok": True}

    @app.get("/health")
    def health():
        return {"status": "ok"}

    return app


def test_requests_without_the_key_get_an_openai_style_401():
    app = _app()
    app.add_middleware(BearerKeyMiddleware, api_key="s3cret")
    client = TestClient(app)
    missing = client.post("/v1/chat/completions", json={})
    wrong = client.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer nope"})
    for resp in (missing, wrong):
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"
    ok = client.post("/v1/chat/completions", json={}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json() == {"ok": True}
    assert client.get("/health").status_code == 200  # probes need no key


def test_empty_key_is_refused():
    with pytest.raises(ValueError):
        BearerKeyMiddleware(_app(), api_key="")


def test_ingress_apps_built_inside_the_wrapper_carry_the_key(monkeypatch):
    # Stand-in for ray.llm._internal.serve.core.ingress.ingress (needs vLLM to import).
    fake = types.ModuleType("ray.llm._internal.serve.core.ingress.ingress")
    fake.init = _app
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    parent = types.ModuleType("ray.llm._internal.serve.core.ingress")
    parent.ingress = fake
    monkeypatch.setitem(sys.modules, parent.__name__, parent)
    with _ingress_with_key("k1"):
        guarded = fake.init()
    assert fake.init is _app  # restored
    assert TestClient(guarded).post("/v1/chat/completions", json={}).status_code == 401
    assert TestClient(fake.init()).post("/v1/chat/completions", json={}).status_code == 200
