"""The run's own teacher called through a Ray Serve DeploymentHandle instead of HTTP.

Serve's HTTP proxies bind the loopback of their own node (teacher.host 127.0.0.1), and a
node without a proxy has none at all, so on a multi-node cluster a generation actor or a
scorer on another node gets "connection refused" from http://127.0.0.1:8000. A handle
reaches the replicas from any node of the cluster (Ray's own transport and routing); it
is used whenever the teacher is the command's own Serve app (teacher.client.transport=auto);
an external teacher stays on HTTP.

Everything above the transport is TeacherClient's: the same request bodies, retries,
timeouts, usage counts and reply parsing, so a stage cannot tell the two apart.
- CPU app: its `call(route, body, authorization)` method (same validation, errors and key
  check as its HTTP routes).
- vLLM app (ray.serve.llm): the LLMServer deployment behind the OpenAI ingress, with the
  request as the ingress would pass it (vLLM's pydantic request; the reply's model_dump()).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from lab_ray.teacher.client import TeacherClient


class HandleTeacherClient(TeacherClient):
    def __init__(self, app_name: str, backend: str, **settings):
        super().__init__(base_url=f"serve://{app_name}", **settings)
        self.app_name, self.backend = app_name, backend
        self._handle = None
        self._handle_loop: asyncio.AbstractEventLoop | None = None

    def _deployment(self):
        """The handle (one per event loop: the semaphore and the handle's router belong to it)."""
        loop = asyncio.get_running_loop()
        if self._handle is None or self._handle_loop is not loop:
            from ray import serve

            if self.backend == "vllm":
                names = serve.status().applications[self.app_name].deployments
                name = next(n for n in names if n.startswith("LLMServer"))
                self._handle = serve.get_deployment_handle(name, app_name=self.app_name).options(stream=True)
            else:
                self._handle = serve.get_app_handle(self.app_name)
            self._handle_loop = loop
            self._sem = asyncio.Semaphore(self.max_concurrency)
        return self._handle

    async def _send(self, path: str, body: dict) -> tuple[int, Any, str, str | None]:
        handle = self._deployment()
        try:
            async with self._sem:  # type: ignore[union-attr]
                status, data = await asyncio.wait_for(self._call(handle, path, body), self.timeout_s)
        except asyncio.TimeoutError as e:
            raise TimeoutError(f"no reply from the teacher's replicas in {self.timeout_s:.0f} s") from e
        except Exception as e:  # a dead replica, a lost node, Serve restarting: retried like a dropped connection
            raise ConnectionError(f"{type(e).__name__}: {e}"[:200]) from e
        return status, (lambda: data), json.dumps(data, default=str)[:400], None

    async def _call(self, handle, path: str, body: dict) -> tuple[int, Any]:
        route = path.strip("/")
        if self.backend != "vllm":
            auth = f"Bearer {self.api_key}" if self.api_key else None
            reply = await handle.call.remote(route, body, auth)
            return int(reply["status"]), reply["body"]
        from ray.llm._internal.serve.core.configs.openai_api_models import (
            ChatCompletionRequest,
            CompletionRequest,
            ErrorResponse,
        )

        chat = route.endswith("chat/completions")
        try:
            request = (ChatCompletionRequest if chat else CompletionRequest).model_validate(body)
        except ValueError as e:  # what the ingress would answer with a 400
            return 400, {"error": {"message": str(e)[:300], "type": "invalid_request_error"}}
        method = handle.chat if chat else handle.completions
        async for first in method.remote(request, None):
            first = first[0] if isinstance(first, list) else first
            if isinstance(first, ErrorResponse):
                return int(first.error.code), first.model_dump()
            return 200, first.model_dump()
        return 502, {"error": {"message": "the LLM server returned no response"}}
