"""Bearer-key check as a pure ASGI middleware, for the vLLM teacher's FastAPI ingress.

ray.serve.llm's OpenAI ingress has no API-key option (vLLM's own server has
`--api-key`; Ray's ingress does not), so `build_vllm_app` adds this middleware
to the ingress app. The CPU teacher checks the key in its own handler.
The key is compared in constant time; /health stays open for probes.
"""

from __future__ import annotations

import hmac
import json

OPEN_PATHS = ("/health", "/-/healthz", "/-/routes")


class BearerKeyMiddleware:
    def __init__(self, app, api_key: str):
        if not api_key:
            raise ValueError("BearerKeyMiddleware needs a non-empty key")
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").endswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            return await self.app(scope, receive, send)
        body = json.dumps({"error": {"message": "missing or wrong API key (Authorization: Bearer <key>)",
                                     "type": "invalid_request_error", "param": None,
                                     "code": "invalid_api_key"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
