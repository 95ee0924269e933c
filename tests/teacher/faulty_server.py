"""A small real OpenAI-shaped HTTP server that misbehaves on a deterministic schedule.

Each request names its own script in its text (the last chat message, or the
prompt): ``"<row>|<step>,<step>,..."``. The server counts the attempts it has
seen for ``<row>`` and plays step ``min(attempt, len(steps) - 1)``, so the
schedule is the same whatever the concurrency or the client's jitter.

Steps:
  ok            200, an OpenAI reply with usage 7 prompt / 3 completion tokens per choice
                (honours guided_choice: answers its first string)
  free          like ok but ignores guided_choice (free text, as a server without it would)
  vllm          like vLLM >= 0.12: ignores guided_choice, honours structured_outputs.choice
                (answers its last string) and returns first-token top_logprobs, no choice_logprobs
  500, 503      that status with an OpenAI-style JSON error
  429           429 without Retry-After
  429ra=<s>     429 with ``Retry-After: <s>``
  400, 404      client errors (the client must not retry them)
  timeout       sleep ``hang_s`` before answering (longer than the client's timeout)
  garbage       200 with a body that is not JSON
  nochoices     200 with JSON that has no ``choices``
  drop          close the connection without answering
  slow=<s>      sleep <s>, then answer like ``ok`` (for concurrency checks)

The server records every attempt (row, step, time) and the peak number of
requests in flight, for tests to assert on.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROMPT_TOKENS = 7
COMPLETION_TOKENS = 3


class _Server(ThreadingHTTPServer):
    # The default listen backlog (5) refuses connections under a burst of
    # concurrent requests: the client would then retry attempts the schedule never saw.
    request_queue_size = 128


class FaultyServer:
    def __init__(self, hang_s: float = 2.0):
        self.hang_s = hang_s
        self.attempts: dict[str, int] = defaultdict(int)
        self.log: list[tuple[str, str, float]] = []  # (row, step, monotonic time)
        self.in_flight = 0
        self.peak_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="faulty-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FaultyServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FaultyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def seen(self, row: str) -> int:
        """How many attempts the server saw for a row."""
        with self._lock:
            return self.attempts.get(row, 0)

    def times(self, row: str) -> list[float]:
        with self._lock:
            return [t for r, _, t in self.log if r == row]

    # -- the scheduled behaviour --------------------------------------------
    def _next_step(self, row: str, steps: list[str]) -> str:
        with self._lock:
            attempt = self.attempts[row]
            self.attempts[row] += 1
            step = steps[min(attempt, len(steps) - 1)]
            self.log.append((row, step, time.monotonic()))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        return step

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real server

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str, headers: dict | None = None) -> None:
                body = {"error": {"message": message, "type": "test_error", "param": None, "code": None}}
                self._send(status, json.dumps(body).encode(), headers)

            def do_GET(self):
                if self.path.endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": "faulty", "object": "model"}]}).encode())
                else:
                    self._error(404, "not found")

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                chat = self.path.endswith("/chat/completions")
                text = body["messages"][-1]["content"] if chat else body["prompt"]
                if isinstance(text, list):
                    text = text[0]
                row, _, script = text.partition("|")
                step = server._next_step(row, script.split(","))
                try:
                    self._play(step, body, chat, row)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer
                finally:
                    server._done()

            def _play(self, step: str, body: dict, chat: bool, row: str) -> None:
                if step == "timeout":
                    time.sleep(server.hang_s)
                    step = "ok"
                elif step.startswith("slow="):
                    time.sleep(float(step.split("=", 1)[1]))
                    step = "ok"
                if step in ("ok", "free", "vllm"):
                    n = int(body.get("n") or 1)
                    if chat:
                        choices = [{"index": i, "message": {"role": "assistant", "content": f"reply {row} {i}"},
                                    "finish_reason": "stop", "logprobs": None} for i in range(n)]
                    else:
                        choices = [{"index": i, "text": f"reply {row} {i}", "finish_reason": "stop",
                                    "logprobs": None} for i in range(n)]
                    if body.get("guided_choice") and step == "ok":
                        choices[0]["message"]["content"] = body["guided_choice"][0]
                        choices[0]["choice_logprobs"] = {c: -float(k + 1) for k, c in enumerate(body["guided_choice"])}
                    allowed = (body.get("structured_outputs") or {}).get("choice")
                    if allowed and step == "vllm":
                        choices[0]["message"]["content"] = allowed[-1]
                        if body.get("logprobs"):
                            # last choice most likely; a leading-space token, as BPE vocabularies give
                            top = [{"token": " " + c[:1], "logprob": -0.5 * k} for k, c in enumerate(reversed(allowed))]
                            choices[0]["logprobs"] = {"content": [{"token": allowed[-1][:1], "logprob": -0.0,
                                                                   "top_logprobs": top[: body.get("top_logprobs", 0)]}]}
                    completion = COMPLETION_TOKENS * n
                    reply = {"id": "x", "object": "chat.completion" if chat else "text_completion", "created": 0,
                             "model": body.get("model"), "choices": choices,
                             "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
                                       "total_tokens": PROMPT_TOKENS + completion}}
                    self._send(200, json.dumps(reply).encode())
                elif step in ("500", "503", "400", "404"):
                    self._error(int(step), f"scheduled {step}")
                elif step == "429":
                    self._error(429, "rate limited")
                elif step.startswith("429ra="):
                    self._error(429, "rate limited", {"Retry-After": step.split("=", 1)[1]})
                elif step == "garbage":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html")
                    page = b"<html>502 Bad Gateway from a proxy</html>"
                    self.send_header("Content-Length", str(len(page)))
                    self.end_headers()
                    self.wfile.write(page)
                elif step == "nochoices":
                    self._send(200, json.dumps({"id": "x", "object": "chat.completion", "usage": {}}).encode())
                elif step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                else:
                    self._error(400, f"test server: unknown step {step!r}")

        return Handler
