"""Request bodies of the OpenAI-compatible API (pydantic models; FastAPI turns them into the OpenAPI schema).

Fields follow the OpenAI API. Extensions shared with vLLM: `top_k`, `ignore_eos`, and the
`/tokenize` / `/detokenize` bodies that lm-evaluation-harness's remote tokenizer sends. Fields the
server accepts but cannot honour (penalties, best_of > n, suffix, logit_bias) are rejected with a 400
rather than silently ignored.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr

MAX_LOGPROBS = 20
MAX_STOPS = 16

TokenIds = list[StrictInt]
Prompt = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
Stop = StrictStr | list[StrictStr] | None


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _Sampling(BaseModel):
    model: StrictStr
    temperature: float = Field(1.0, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=1, description="sample among the k most likely tokens (extension)")
    n: StrictInt = Field(1, ge=1, le=1024, description="choices per prompt (at most the server's --max-batch)")
    stop: Stop = None
    seed: StrictInt | None = Field(None, ge=0, le=2**62)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="only 0 is supported")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="only 0 is supported")
    logit_bias: dict[str, float] | None = Field(None, description="not supported")
    ignore_eos: StrictBool = Field(False, description="do not stop at the end-of-text token (extension)")
    user: StrictStr | None = None


class CompletionRequest(_Sampling):
    prompt: Prompt = Field(description="a string, a list of strings, a list of token ids or a list of such lists")
    max_tokens: StrictInt | None = Field(16, ge=0, le=1_000_000)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False
    best_of: StrictInt | None = Field(None, ge=1, le=1024, description="only equal to n is supported")
    suffix: StrictStr | None = Field(None, description="not supported")


class TextPart(BaseModel):
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=0, le=1_000_000)
    max_completion_tokens: StrictInt | None = Field(None, ge=0, le=1_000_000)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(BaseModel):
    model: StrictStr | None = None
    prompt: StrictStr
    add_special_tokens: StrictBool = Field(True, description="start with the end-of-text token, as text prompts do")


class DetokenizeRequest(BaseModel):
    model: StrictStr | None = None
    tokens: TokenIds


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx/5xx answer (the OpenAI error format)."""

    error: ErrorDetail


ERRORS = {status: {"model": ErrorResponse, "description": why} for status, why in (
    (400, "invalid request"), (401, "missing or wrong API key"), (404, "unknown model or route"),
    (413, "request body too large"), (429, "too many requests waiting; see Retry-After"))}
