"""Request bodies of the OpenAI-compatible API (pydantic models; FastAPI turns them into the OpenAPI schema).

Fields follow the OpenAI API, plus the sampling extensions vLLM and llama.cpp users send (`top_k`,
`min_p`, `repetition_penalty`, `repeat_penalty` / `repeat_last_n`, `min_tokens`, `ignore_eos`) and the
`/tokenize` / `/detokenize` bodies that lm-evaluation-harness's remote tokenizer sends. Every body
forbids unknown fields: a field the server does not implement (`tools`, `response_format`,
`guided_json`, ...) is answered with a 400 naming it, never silently ignored (see
`tests/test_serve.py`, which enumerates vLLM's extra parameters).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt
from pydantic import StrictStr as _StrictStr

MAX_LOGPROBS = 20
MAX_STOPS = 16
MAX_STOP_CHARS = 256  # per stop string: stop matching looks back this far at each new token


def _no_lone_surrogates(text: str) -> str:
    """JSON may escape half of a UTF-16 pair ("\\ud800"); such a string has no UTF-8 form to tokenize or echo."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone UTF-16 surrogate (not valid Unicode text)") from None
    return text


StrictStr = Annotated[_StrictStr, AfterValidator(_no_lone_surrogates)]
TokenIds = list[StrictInt]
Prompt = StrictStr | list[StrictStr] | TokenIds | list[TokenIds]
Stop = StrictStr | list[StrictStr] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _Sampling(_Body):
    model: StrictStr
    temperature: float = Field(1.0, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: StrictInt | None = Field(None, ge=-1, description="sample among the k most likely tokens; -1 or 0: all (extension)")
    min_p: float = Field(0.0, ge=0, le=1, description="drop tokens less likely than min_p times the most likely (extension)")
    n: StrictInt = Field(1, ge=1, le=1024, description="choices per prompt (at most the server's --max-batch)")
    stop: Stop = None
    seed: StrictInt | None = Field(None, ge=0, le=2**62)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2, description="subtracted once from each token already generated")
    frequency_penalty: float = Field(0.0, ge=-2, le=2, description="subtracted per occurrence in the generated text")
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="vLLM's: logits of tokens in the prompt or "
                                      "generated text divided by it (if positive) or multiplied (extension)")
    repeat_penalty: float = Field(1.0, gt=0, le=10, description="llama.cpp's: the same over the last "
                                  "repeat_last_n tokens (extension)")
    repeat_last_n: StrictInt = Field(64, ge=-1, le=2**20, description="window of repeat_penalty; -1: all, 0: off")
    logit_bias: dict[StrictStr, float] | None = Field(None, description="token id -> bias in [-100, 100], "
                                                      "added to its logit")
    min_tokens: StrictInt = Field(0, ge=0, le=1_000_000, description="no end-of-text before this many tokens "
                                  "(extension)")
    ignore_eos: StrictBool = Field(False, description="do not stop at the end-of-text token (extension)")
    user: StrictStr | None = None


class CompletionRequest(_Sampling):
    prompt: Prompt = Field(description="a string, a list of strings, a list of token ids or a list of such lists")
    max_tokens: StrictInt | None = Field(16, ge=0, le=1_000_000)
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: StrictBool = False
    best_of: StrictInt | None = Field(None, ge=1, le=1024, description="only equal to n is supported")


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None
    # What the openai client puts in an assistant message it returned, so that a reply can be sent back
    # as history: accepted when empty, refused (400) when they carry something the server cannot do.
    refusal: None = None
    tool_calls: None = None
    function_call: None = None
    audio: None = None
    annotations: list[None] | None = Field(None, max_length=0)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=0, le=1_000_000)
    max_completion_tokens: StrictInt | None = Field(None, ge=0, le=1_000_000)
    logprobs: StrictBool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_LOGPROBS)


class TokenizeRequest(_Body):
    model: StrictStr | None = Field(None, description="required when the served models' tokenizers differ")
    prompt: StrictStr
    add_special_tokens: StrictBool = Field(True, description="start with the end-of-text token, as prompts do")


class DetokenizeRequest(_Body):
    model: StrictStr | None = Field(None, description="required when the served models' tokenizers differ")
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
