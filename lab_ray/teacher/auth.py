"""The teacher's API key: one bearer check for both Serve backends.

The CPU teacher calls `bearer_ok` in its handler (HTTP and DeploymentHandle
callers alike). ray.serve.llm's OpenAI ingress has no API-key option (vLLM's
own server has `--api-key`; Ray's ingress does not), so `build_vllm_app` adds
`BearerKeyMiddleware` to the ingress app; /health stays open for probes.
"""

from __future__ import annotations

import hmac
import json

OPEN_PATHS = ("/health", "/-/healthz", "/-/routes")
UNAUTHORIZED = "missing or wrong API key (Authorization: Bearer <key>)"


def bearer_ok(header: str | bytes | None, api_key: str) -> bool:
    """Does an Authorization header carry `Bearer <api_key>`? Constant-time compare."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    header = header or ""
    token = header[7:] if header.lower().startswith("bearer ") else ""
    return hmac.compare_digest(token.encode(), api_key.encode())


class BearerKeyMiddleware:
    def __init__(self, app, api_key: str):
        if not api_key:
            raise ValueError("BearerKeyMiddleware needs a non-empty key")
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path", "").endswith(OPEN_PATHS):
            return await self.app(scope, receive, send)
        if bearer_ok(dict(scope.get("headers") or []).get(b"authorization"), self.api_key):
            return await self.app(scope, receive, send)
        body = json.dumps({"error": {"message": UNAUTHORIZED,
                                     "type": "invalid_request_error", "param": None,
                                     "code": "invalid_api_key"}}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
