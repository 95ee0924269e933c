"""The OpenAI API surface we serve: request models and OpenAI-style errors.

Only the fields the LAB stages and common OpenAI clients send are modelled;
unknown fields are ignored (as OpenAI does), wrong types are 422. The
constrained-choice extension follows vLLM's OpenAI server: `guided_choice`
(a list of allowed strings) in the request body, or the newer
`structured_outputs: {"choice": [...]}`.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal, Optional, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Optional[Union[str, list]] = ""


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    n: int = Field(1, ge=1, le=64)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    stream: bool = False
    guided_choice: Optional[list[str]] = Field(None, min_length=1)
    structured_outputs: Optional[dict] = None
    # vLLM's extension: keep generating past EOS up to max_tokens (benchmarks).
    ignore_eos: bool = False

    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def choices(self) -> tuple[str, ...]:
        if self.guided_choice:
            return tuple(self.guided_choice)
        if self.structured_outputs and isinstance(self.structured_outputs.get("choice"), list):
            return tuple(str(c) for c in self.structured_outputs["choice"])
        return ()


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    echo: bool = False


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
          code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())
