"""The one teacher client every generation and judging stage uses.

It speaks the OpenAI HTTP API, so the same code drives the CPU Serve app, the
vLLM app from `ray.serve.llm`, or any external OpenAI-compatible server.
- Concurrency is bounded by a semaphore; one pooled httpx.AsyncClient reuses
  connections for the life of the client.
- Timeouts, connection errors, 429, 5xx and garbage bodies are retried with
  exponential backoff and full jitter (Retry-After is honoured on 429);
  other 4xx are not retried.
- A request that still fails comes back as a TeacherReply with ok=False and
  a reason; nothing raises out of a batch.
- Token usage, requests, retries and failures accumulate in `usage`.
Sync callers (Ray Data actors) use `run_many`, which runs the coroutines on
a private event-loop thread so connections survive across batches.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import dataclasses
import importlib

import httpx

from lab_ray.teacher.config import ChoiceField, ClientConfig

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_TOP_LOGPROBS = 20


def choice_logprobs_from_top(logprobs: Any, choices: list[str]) -> dict[str, float] | None:
    """log P(choice) from the first generated token's top_logprobs (OpenAI chat format).

    For servers that constrain the choice but do not score every choice (vLLM):
    each choice takes the best-scoring top token that starts it. Exact when the
    choices differ in their first token (yes/no, 1..3); None when any choice is
    missing from the top list (the verdict then has no probability, as before), or
    when two choices would take the same token (joint verdicts "1: yes", "1: no" all
    start with "1": that token says nothing about which).
    """
    try:
        top = logprobs["content"][0]["top_logprobs"]
    except (TypeError, KeyError, IndexError):
        return None
    out: dict[str, float] = {}
    taken: set[str] = set()
    for choice in choices:
        hits = [(t["logprob"], t["token"].strip()) for t in top
                if isinstance(t, dict) and t.get("token", "").strip() and choice.startswith(t["token"].strip())]
        if not hits:
            return None
        out[choice], token = max(hits)
        if token in taken:
            return None
        taken.add(token)
    return out


@dataclass
class TeacherReply:
    ok: bool
    texts: list[str] = field(default_factory=list)
    error: str | None = None  # timeout | connection | http_<status> | garbage | ...
    detail: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of prompt_tokens, those the server took from its prefix cache (vLLM reports them with
    # enable_prompt_tokens_details); 0 when it does not say.
    cached_tokens: int = 0
    attempts: int = 0
    # Constrained choice: log P(choice) per allowed string, and normalised probabilities.
    choice_logprobs: dict[str, float] | None = None
    logprobs: list[Any] = field(default_factory=list)  # per returned choice, as the server sent it

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    def choice_probs(self) -> dict[str, float] | None:
        if not self.choice_logprobs:
            return None
        top = max(self.choice_logprobs.values())
        exp = {k: math.exp(v - top) for k, v in self.choice_logprobs.items()}
        total = sum(exp.values())
        return {k: v / total for k, v in exp.items()}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    requests: int = 0
    retries: int = 0
    failures: int = 0

    def add(self, other: "Usage") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class TeacherClient:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, max_concurrency: int = 16,
                 timeout_s: float = 300.0, max_retries: int = 3, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 20.0, seed: int | None = None,
                 choice_field: str | ChoiceField = ChoiceField.guided_choice, choice_top_logprobs: int = 0):
        try:
            self.choice_field = ChoiceField(str(getattr(choice_field, "value", choice_field)))
        except ValueError:
            raise ValueError(f"teacher.client.choice_field must be one of {[c.value for c in ChoiceField]}, "
                             f"not {choice_field!r}") from None
        self.choice_top_logprobs = choice_top_logprobs
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.usage = Usage()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._http: httpx.AsyncClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- async API ------------------------------------------------------------
    async def chat(self, messages: list[dict], **params) -> TeacherReply:
        return await self._request("/chat/completions", {"messages": messages, **params}, chat=True)

    async def complete(self, prompt: str | list[str], **params) -> TeacherReply:
        return await self._request("/completions", {"prompt": prompt, **params}, chat=False)

    async def choose(self, messages: list[dict], choices: list[str], **params) -> TeacherReply:
        """Constrained choice (vLLM's guided_choice / structured_outputs); the reply's text is one of `choices`."""
        constraint = ({"guided_choice": list(choices)} if self.choice_field is ChoiceField.guided_choice
                      else {"structured_outputs": {"choice": list(choices)}})
        if self.choice_top_logprobs:
            # One top token per choice at least (every choice gets its probability: a 1-9 scale
            # needs 9), at most vLLM's default max_logprobs (20; more is a 400).
            top = min(max(self.choice_top_logprobs, len(choices)), MAX_TOP_LOGPROBS)
            constraint.update(logprobs=True, top_logprobs=top)
        reply = await self.chat(messages, **constraint, max_tokens=params.pop("max_tokens", 16),
                                temperature=params.pop("temperature", 0.0), **params)
        if reply.ok and not reply.choice_logprobs:
            reply.choice_logprobs = choice_logprobs_from_top(reply.logprobs[0] if reply.logprobs else None, choices)
        if reply.ok and reply.text not in choices:
            # A server that ignores guided_choice: salvage a verbatim answer, else count as garbage.
            found = [c for c in choices if c.lower() in reply.text.lower()]
            if len(found) == 1:
                reply.texts = [found[0]]
            else:
                # The tokens were spent (already counted); the row is a failure all the same.
                reply.ok, reply.error, reply.detail = False, "unparsable", reply.text[:200]
                self._count(Usage(failures=1))
        return reply

    async def many(self, calls: list[tuple[str, dict]]) -> list[TeacherReply]:
        """calls: ("chat", kwargs) | ("complete", kwargs) | ("choose", kwargs); order kept."""
        async def one(kind: str, kw: dict) -> TeacherReply:
            try:
                return await getattr(self, kind)(**kw)
            except Exception as e:  # never let one row end a batch
                self._count(Usage(requests=1, failures=1))
                return TeacherReply(False, error="client_error", detail=f"{type(e).__name__}: {e}"[:300])
        return list(await asyncio.gather(*(one(k, kw) for k, kw in calls)))

    # -- sync API (for Ray Data actors and scripts) ----------------------------
    def run_many(self, calls: list[tuple[str, dict]]) -> list[TeacherReply]:
        loop = self._ensure_loop()
        return asyncio.run_coroutine_threadsafe(self.many(calls), loop).result()

    def close(self) -> None:
        """Close pooled connections and the private loop (sync users of run_many)."""
        if self._loop is not None:
            if self._http is not None and self._http_loop is self._loop:
                asyncio.run_coroutine_threadsafe(self._http.aclose(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop = None
        self._http = None
        self._http_loop = None

    async def aclose(self) -> None:
        """Close pooled connections (async users, on the loop that used the client)."""
        if self._http is not None and self._http_loop is asyncio.get_running_loop():
            await self._http.aclose()
        self._http = None
        self._http_loop = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="teacher-client", daemon=True)
            self._thread.start()
        return self._loop

    # -- internals ------------------------------------------------------------
    def _count(self, delta: Usage) -> None:
        with self._lock:
            self.usage.add(delta)

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is not None and self._http_loop is not loop:
            # Pooled connections and the semaphore belong to one event loop: a caller
            # on a new loop (a second asyncio.run) gets fresh ones instead of errors.
            self._http = None
        if self._http is None:
            self._http_loop = loop
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits,
                                           timeout=httpx.Timeout(self.timeout_s))
            self._sem = asyncio.Semaphore(self.max_concurrency)
        return self._http

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.backoff_max_s)
            except ValueError:
                pass
        return self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt))

    async def _send(self, path: str, body: dict) -> tuple[int, Any, str, str | None]:
        """One attempt over HTTP: (status, the JSON body (a callable: parsed on demand), the raw
        text, Retry-After). Raises TimeoutError / ConnectionError for the retry loop."""
        http = self._client()
        try:
            async with self._sem:  # type: ignore[union-attr]
                resp = await http.post(path, json=body)
        except httpx.TimeoutException as e:
            raise TimeoutError(str(e)[:200]) from e
        except httpx.RequestError as e:  # connection refused/reset/dropped, protocol, decoding
            raise ConnectionError(f"{type(e).__name__}: {e}"[:200]) from e
        return resp.status_code, resp.json, resp.text, resp.headers.get("retry-after")

    async def _request(self, path: str, body: dict, chat: bool) -> TeacherReply:
        body = {"model": self.model, **body}
        error, detail = "unknown", ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                status, data, text, retry_after = await self._send(path, body)
                if status == 200:
                    try:
                        return self._parse(data(), chat, attempt + 1)
                    except (ValueError, KeyError, TypeError, IndexError) as e:
                        error, detail = "garbage", f"{type(e).__name__}: {text[:200]}"
                else:
                    error, detail = f"http_{status}", text[:300]
                    if status not in RETRY_STATUS:
                        self._count(Usage(requests=1, failures=1, retries=attempt))
                        return TeacherReply(False, error=error, detail=detail, attempts=attempt + 1)
            except TimeoutError as e:
                error, detail = "timeout", str(e)[:200]
            except ConnectionError as e:
                error, detail = "connection", str(e)[:200]
            if attempt < self.max_retries:
                await asyncio.sleep(self._backoff(attempt, retry_after))
        self._count(Usage(requests=1, failures=1, retries=self.max_retries))
        return TeacherReply(False, error=error, detail=detail, attempts=self.max_retries + 1)

    def _parse(self, data: dict, chat: bool, attempts: int) -> TeacherReply:
        choices = data["choices"]
        texts = [c["message"]["content"] or "" if chat else c["text"] for c in choices]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("non-text choice")
        usage = data.get("usage") or {}
        reply = TeacherReply(True, texts, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                             completion_tokens=int(usage.get("completion_tokens", 0)),
                             cached_tokens=int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
                             attempts=attempts,
                             choice_logprobs=choices[0].get("choice_logprobs"),
                             logprobs=[c.get("logprobs") for c in choices])
        self._count(Usage(reply.prompt_tokens, reply.completion_tokens, reply.cached_tokens, 1, attempts - 1, 0))
        return reply


# -- the one way to build a teacher client from config -------------------------
def client_spec(teacher_cfg, base_url: str, api_key: str | None = None, seed: int | None = None,
                app: str | None = None) -> dict:
    """A picklable description of the run's teacher client: the endpoint plus every
    `teacher.client` setting (taken field by field from ClientConfig, so a new
    setting reaches every user without another edit). Generation actors,
    calibration, checkpoint scorers and eval all build their client from one.

    app: the Serve app name when this command deployed the teacher on its cluster; with
    teacher.client.transport=auto the client then calls it through a DeploymentHandle."""
    settings = {f.name: teacher_cfg.client[f.name] for f in dataclasses.fields(ClientConfig)}
    settings["choice_field"] = str(getattr(settings["choice_field"], "value", settings["choice_field"]))
    transport = str(settings.pop("transport"))
    if transport not in ("auto", "http"):
        raise ValueError(f"teacher.client.transport must be auto or http, not {transport!r}")
    spec = {"model": teacher_cfg.model, "api_key": api_key, "seed": seed, **settings}
    if app and transport == "auto":
        return {"kind": "handle", "app_name": app, "backend": str(getattr(teacher_cfg.backend, "value",
                                                                          teacher_cfg.backend)), **spec}
    return {"kind": "http", "base_url": base_url.rstrip("/"), **spec}


def in_process_teacher_spec(factory: str, args: dict | None = None) -> dict:
    """A spec for an in-process test teacher ("module:callable", see lab_ray.testing)."""
    return {"kind": "python", "factory": factory, "args": dict(args or {})}


def make_teacher(spec: dict):
    """A client from a spec of `client_spec` (or `in_process_teacher_spec`: tests and benchmarks only)."""
    if spec.get("kind") == "python":
        module, fn = spec["factory"].split(":")
        return getattr(importlib.import_module(module), fn)(**spec.get("args", {}))
    if spec.get("kind") == "handle":
        from lab_ray.teacher.handle_client import HandleTeacherClient

        return HandleTeacherClient(**{k: v for k, v in spec.items() if k != "kind"})
    return TeacherClient(**{k: v for k, v in spec.items() if k != "kind"})
