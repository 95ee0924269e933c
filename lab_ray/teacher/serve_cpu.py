"""The CPU teacher: a Ray Serve deployment over transformers, OpenAI-compatible.

Every request is split into generation units (one per prompt x n sample) and
each unit goes through one `@serve.batch` method, so units from concurrent
requests are generated together as one padded batch. The batch runs in a
worker thread, keeping the event loop free to queue the next batch. Batch
sizes are recorded for `/v1/stats` (tests assert on them, not on timing).
"""


import asyncio
import os
import time
from collections import Counter, deque

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from ray import serve

from lab_ray.teacher.auth import UNAUTHORIZED, bearer_ok
from lab_ray.teacher.engine import Engine, GenResult, GenUnit
from lab_ray.teacher.openai_api import (ChatCompletionRequest, CompletionRequest, error, new_id, now)

api = FastAPI(title="lab-ray teacher", docs_url=None, redoc_url=None)


@api.exception_handler(RequestValidationError)
async def _invalid(_request: Request, exc: RequestValidationError):
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return error(400, "request body is not valid JSON")
    first = errs[0] if errs else {}
    loc = ".".join(str(p) for p in first.get("loc", []) if p != "body")
    return error(422, f"{loc}: {first.get('msg', 'invalid request')}", param=loc or None)


@api.exception_handler(Exception)
async def _internal(_request: Request, exc: Exception):
    # Never a bare 500 page: clients (and our retries) get OpenAI-style JSON.
    return error(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}", type_="server_error")


class _ClientError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def _text_parts(parts: list) -> str:
    return "".join(p.get("text", "") for p in parts if isinstance(p, dict))


def _envelope(obj: str, id_: str, model: str, choices: list, prompt_tokens: int, results: list[GenResult],
              n: int = 1) -> dict:
    completion = sum(r.completion_tokens for r in results)
    # A prompt's n completions bill it once; it was computed once unless all n reused a prefix
    # another request computed (engine prefix sharing), so its cached count is their least.
    cached = sum(min(r.cached_tokens for r in results[k:k + n]) for k in range(0, len(results), max(n, 1)))
    return {"id": id_, "object": obj, "created": now(), "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}}}


@serve.deployment(name="CPUTeacher")
@serve.ingress(api)
class CPUTeacher:
    def __init__(self, cfg: dict):
        from lab_ray.embedded_model import resolve_model

        self.cfg = cfg
        self.model_name = cfg["model"]
        self.engine = Engine(resolve_model(cfg.get("model_path") or cfg["model"]), threads=cfg.get("torch_threads"))
        self.api_key = os.environ.get(cfg.get("api_key_env") or "", "") or cfg.get("api_key") or ""
        self.default_max_tokens = int(cfg.get("default_max_tokens", 256))
        self.extra_stop = tuple(cfg.get("stop") or ())
        # What the deployment records about its batches (for /v1/stats; tests assert on it).
        self.recent_batch_sizes: deque[int] = deque(maxlen=1000)
        self.batch_histogram: Counter[int] = Counter()
        self.engine_seconds = 0.0  # time inside Engine.run: busy fraction = its growth / wall time
        batching = cfg.get("batching", {})
        self._generate_unit.set_max_batch_size(int(batching.get("max_batch_size", 8)))
        self._generate_unit.set_batch_wait_timeout_s(float(batching.get("batch_wait_timeout_s", 0.05)))

    # -- batching -------------------------------------------------------------
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _generate_unit(self, units: list[GenUnit]) -> list[GenResult | Exception]:
        self.recent_batch_sizes.append(len(units))
        self.batch_histogram[len(units)] += 1
        return await asyncio.to_thread(self._run_batch, units)

    def _run_batch(self, units: list[GenUnit]) -> list[GenResult | Exception]:
        start = time.perf_counter()
        try:
            return self.engine.run(units)
        except Exception:
            # One bad unit must not fail the requests it happened to be batched with:
            # rerun one by one and hand each unit its own result or exception.
            out: list[GenResult | Exception] = []
            for u in units:
                try:
                    out += self.engine.run([u])
                except Exception as e:  # noqa: PERF203
                    out.append(e)
            return out
        finally:
            self.engine_seconds += time.perf_counter() - start

    # -- helpers --------------------------------------------------------------
    def _check(self, request: Request | str | None, model: str) -> None:
        if self.api_key:
            header = request.headers.get("authorization") if isinstance(request, Request) else request
            if not bearer_ok(header, self.api_key):
                raise _ClientError(401, UNAUTHORIZED, code="invalid_api_key")
        if model != self.model_name:
            raise _ClientError(404, f"model {model!r} does not exist; this teacher serves {self.model_name!r}",
                               param="model", code="model_not_found")

    def _units(self, prompt_ids: list[int], req, top_logprobs: int) -> list[GenUnit]:
        max_tokens = req.max_tokens or req.max_completion_tokens or self.default_max_tokens
        choices = req.choices()
        if choices:
            # scored, not generated: the longest allowed string must fit after the prompt
            max_tokens = max(len(self.engine.tokenizer.encode(c, add_special_tokens=False)) for c in choices) or 1
        if len(prompt_ids) + max_tokens > self.engine.context_length:
            raise _ClientError(400, f"this model's maximum context length is {self.engine.context_length} tokens; "
                               f"the prompt has {len(prompt_ids)} tokens and max_tokens is {max_tokens}",
                               param="max_tokens", code="context_length_exceeded")
        return [GenUnit(prompt_ids, max_tokens, req.temperature, req.top_p, req.stops() + self.extra_stop,
                        None if req.seed is None else req.seed + i, top_logprobs, choices, req.ignore_eos)
                for i in range(req.n)]

    async def _run(self, units: list[GenUnit]) -> list[GenResult]:
        results = await asyncio.gather(*(self._generate_unit(u) for u in units))
        for r in results:
            if isinstance(r, Exception):
                raise r
        return list(results)

    async def _guard(self, coro):
        try:
            return await coro
        except _ClientError as e:
            return error(e.status, str(e), param=e.param, code=e.code)

    # -- routes ---------------------------------------------------------------
    @api.get("/health")
    async def health(self):
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request):
        return await self._guard(self._models(request))

    async def _models(self, request: Request):
        self._check(request, self.model_name)
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": now(),
                                             "owned_by": "lab-ray", "max_model_len": self.engine.context_length}]}

    @api.get("/v1/stats")
    async def stats(self):
        return {"batches": sum(self.batch_histogram.values()),
                "units": sum(k * v for k, v in self.batch_histogram.items()),
                "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_histogram.items())},
                "recent_batch_sizes": list(self.recent_batch_sizes),
                "engine_seconds": round(self.engine_seconds, 4)}

    # -- in-cluster calls through a DeploymentHandle (no HTTP) -----------------
    async def call(self, route: str, body: dict, authorization: str | None = None) -> dict:
        """The OpenAI routes for `DeploymentHandle` callers: returns {"status", "body"}.

        Same validation, errors and auth as over HTTP; `authorization` is the
        header value ("Bearer <key>") when the teacher has an API key.
        """
        kinds = {"chat/completions": (ChatCompletionRequest, self._chat),
                 "completions": (CompletionRequest, self._completions)}
        if route.strip("/").removeprefix("v1/") not in kinds:
            return {"status": 404, "body": {"error": {"message": f"no route {route!r}", "type": "invalid_request_error",
                                                      "param": None, "code": None}}}
        model, handler = kinds[route.strip("/").removeprefix("v1/")]
        try:
            req = model.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0] if e.errors() else {}
            loc = ".".join(str(p) for p in first.get("loc", []))
            return {"status": 422, "body": {"error": {"message": f"{loc}: {first.get('msg', 'invalid request')}",
                                                      "type": "invalid_request_error", "param": loc or None,
                                                      "code": None}}}
        try:
            return {"status": 200, "body": await handler(req, authorization)}
        except _ClientError as e:
            return {"status": e.status, "body": {"error": {"message": str(e), "type": "invalid_request_error",
                                                           "param": e.param, "code": e.code}}}
        except Exception as e:
            return {"status": 500, "body": {"error": {"message": f"internal error: {type(e).__name__}: {str(e)[:200]}",
                                                      "type": "server_error", "param": None, "code": None}}}

    @api.post("/v1/chat/completions")
    async def chat(self, body: ChatCompletionRequest, request: Request):
        return await self._guard(self._chat(body, request))

    async def _chat(self, req: ChatCompletionRequest, request: Request | str | None):
        self._check(request, req.model)
        if req.stream:
            raise _ClientError(400, "stream=true is not supported by this teacher", param="stream")
        messages = [{"role": m.role, "content": m.content if isinstance(m.content, str) else _text_parts(m.content)}
                    for m in req.messages]
        prompt = self.engine.chat_prompt(messages)
        top = (req.top_logprobs or 0) if req.logprobs else -1
        results = await self._run(self._units(prompt, req, top))
        choices = []
        for i, r in enumerate(results):
            choice = {"index": i, "message": {"role": "assistant", "content": r.text},
                      "finish_reason": r.finish_reason, "logprobs": None}
            if req.logprobs:
                choice["logprobs"] = {"content": [{**t, "bytes": None, "top_logprobs": [
                    {**tt, "bytes": None} for tt in t["top_logprobs"]]} for t in r.logprobs]}
            if r.choice_logprobs is not None:
                choice["choice_logprobs"] = r.choice_logprobs
            choices.append(choice)
        return _envelope("chat.completion", new_id("chatcmpl"), self.model_name, choices, len(prompt), results, req.n)

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest, request: Request):
        return await self._guard(self._completions(body, request))

    async def _completions(self, req: CompletionRequest, request: Request | str | None):
        self._check(request, req.model)
        if req.stream:
            raise _ClientError(400, "stream=true is not supported by this teacher", param="stream")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise _ClientError(400, "prompt is empty", param="prompt")
        top = req.logprobs if req.logprobs is not None else -1
        units, prompt_tokens = [], 0
        for p in prompts:
            ids = self.engine.text_prompt(p)
            prompt_tokens += len(ids)
            units += self._units(ids, req, top)
        results = await self._run(units)
        choices = []
        for i, r in enumerate(results):
            lp = None
            if req.logprobs is not None:
                lp = {"tokens": [t["token"] for t in r.logprobs], "token_logprobs": [t["logprob"] for t in r.logprobs],
                      "top_logprobs": [{tt["token"]: tt["logprob"] for tt in t["top_logprobs"]} for t in r.logprobs],
                      "text_offset": []}
            text = (prompts[i // req.n] + r.text) if req.echo else r.text
            choice = {"index": i, "text": text, "finish_reason": r.finish_reason, "logprobs": lp}
            if r.choice_logprobs is not None:
                choice["choice_logprobs"] = r.choice_logprobs
            choices.append(choice)
        return _envelope("text_completion", new_id("cmpl"), self.model_name, choices, prompt_tokens, results, req.n)
