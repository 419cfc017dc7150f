"""The HTTP side: OpenAI-format routes (FastAPI) over one batching engine per served model."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import jinja2.sandbox
import uvicorn
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinyscale.serve.choices import Choice, TokenDecoder, chat_logprobs, legacy_logprobs
from tinyscale.serve.engine import Engine, Job, QueueFull, Sampling
from tinyscale.serve.loading import Served
from tinyscale.serve.penalties import Penalties
from tinyscale.serve.schemas import (
    ERRORS,
    MAX_STOP_CHARS,
    MAX_STOPS,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)

log = logging.getLogger("tinyscale.serve")

# The chat format (documented in docs/serve.md): a plain transcript, since tinyscale's models are
# story models, not chat-tuned. The same Jinja2 text is served at /tokenizer_info for clients.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}Assistant:{% endif %}")
CHAT_STOPS = ["\nUser:", "\nSystem:", "\nDeveloper:"]
RETRY_AFTER_S = 1
# Token entries one request may ask for: sum over prompts of n x (echoed + new tokens) x (1 + logprobs).
# Each is ~25 bytes of JSON built on the event loop, so this keeps an answer under ~6 MB and a
# 30 KB request from blocking every other client for seconds (one lm-eval log-likelihood: ~1,000).
MAX_RESPONSE_ENTRIES = 250_000


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error", headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


@dataclass
class Backend:
    served: Served
    engine: Engine
    vocab: TokenDecoder
    eot: int | None
    dtype: str = "fp32"

    @property
    def context(self) -> int:
        return self.engine.context


# --- guard: API key and body size, before any parsing ----------------------------------------------


class Guard:
    """Pure ASGI middleware: 401 without the key, 413 for bodies over `max_body` bytes (checked while
    reading, so a client that sends no Content-Length cannot make the server buffer more)."""

    def __init__(self, app, api_key: str | None, max_body: int) -> None:
        self.app, self.max_body = app, max_body
        self.expected = None if api_key is None else f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            reply = error_response(401, "missing or wrong API key (send the header Authorization: Bearer <key>)",
                                   code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await reply(scope, receive, send)
        too_big = error_response(413, f"request body larger than {self.max_body} bytes", code="body_too_large")
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_body:
            return await too_big(scope, receive, send)
        body, more = b"", scope["method"] in ("POST", "PUT", "PATCH")
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # later calls wait for the disconnect, as the real channel does
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


# --- one request's jobs and choices -------------------------------------------------------------------


class Mailbox:
    """Events from the engine thread to the event loop's queues, handed over in batches: one wake-up
    of the loop (`call_soon_threadsafe`, a write to its self-pipe) per engine step, not one per token
    of each running sequence (64 per step at 64 clients)."""

    _by_loop: dict[int, Mailbox] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.items, self.lock, self.scheduled = loop, [], threading.Lock(), False

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Mailbox:
        box = cls._by_loop.get(id(loop))
        if box is None or box.loop is not loop:
            box = cls._by_loop[id(loop)] = cls(loop)
        return box

    def post(self, queue: asyncio.Queue, item) -> None:
        with self.lock:
            self.items.append((queue, item))
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass

    def _deliver(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class Run:
    """The jobs of one request (one per prompt, `n` choices each) and their choices, fed by the engine."""

    def __init__(self, backend: Backend, prompts: list[list[int]], skip_first: list[bool], n: int,
                 sampling: Sampling, stops: list[str]) -> None:
        mailbox = Mailbox.of(asyncio.get_running_loop())
        self.queue: asyncio.Queue = asyncio.Queue()
        self.n, self.skip_first, self.stops = n, skip_first, stops
        self.choices = [Choice(i, backend.vocab, stops) for i in range(len(prompts) * n)]
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.pending = len(self.choices)

        def emitter(p: int):
            def emit(event: tuple) -> None:
                mailbox.post(self.queue, (p, event))
            return emit

        self.jobs = [Job(ids, n, sampling, emitter(p)) for p, ids in enumerate(prompts)]
        try:
            for job in self.jobs:
                backend.engine.submit(job)
        except QueueFull:
            self.close()
            raise APIError(429, "the server is busy: too many requests are waiting; retry later",
                           code="rate_limit_exceeded", kind="rate_limit_error",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    def close(self) -> None:
        """Free the engine's rows if the client stops listening before every choice is done."""
        if self.pending:
            for job in self.jobs:
                job.cancelled = True

    async def updates(self) -> AsyncIterator[Choice]:
        """Yield each choice whenever it changes, until all are finished."""
        while self.pending:
            p, event = await self.queue.get()
            kind = event[0]
            if kind == "error":
                raise APIError(500, event[1], kind="server_error")
            if kind == "prompt":
                tokens = event[1][1:] if self.skip_first[p] else event[1]
                for c in range(self.n):
                    self.choices[p * self.n + c].echo = tokens
                continue
            choice = self.choices[p * self.n + event[1]]
            if choice.finish is not None:  # already cut by a stop string
                continue
            if kind == "token":
                if choice.add(event[2]):
                    self.jobs[p].stopped.add(event[1])
                    self.pending -= 1
            else:
                choice.finish = event[2]
                self.pending -= 1
            yield choice

    async def wait(self, request: Request) -> None:
        """Collect every choice; a client that disconnects first frees its rows at the next step."""
        async def drain() -> None:
            async for _ in self.updates():
                pass

        done, gone = asyncio.ensure_future(drain()), asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            gone.cancel()
            self.close()
        if done.done() and not done.cancelled():
            done.result()  # an engine error becomes the request's 500

    def usage(self) -> dict:
        done = sum(len(c.tokens) for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body was read, so receive() waits for that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- request checks --------------------------------------------------------------------------------


def _backend(request: Request, model: str | None) -> Backend:
    backends: dict[str, Backend] = request.app.state.backends
    if model is None:  # only the tokenizer routes, where the field is optional
        if request.app.state.tokenizers_differ:
            raise APIError(400, f"model: required here, since the served models' tokenizers differ "
                           f"({', '.join(backends)})", param="model")
        return next(iter(backends.values()))
    if model not in backends:
        raise APIError(404, f"model '{model}' not found (serving: {', '.join(backends)})", param="model",
                       code="model_not_found")
    return backends[model]


def _check_ids(ids: list[int], backend: Backend, param: str) -> None:
    bad = [i for i in ids if not 0 <= i < min(backend.vocab.size, backend.served.model.cfg.vocab_size)]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary of {backend.vocab.size}", param=param)


def _with_start(ids: list[int], backend: Backend) -> tuple[list[int], bool]:
    """The prompt as the model reads it: after an end-of-text token (tinyscale's models read every story
    after one). Added unless the prompt already starts with it; the flag says it was added, so that
    echo leaves it out. Text and token-id prompts are treated alike."""
    if backend.eot is None or ids[:1] == [backend.eot]:
        return ids, False
    return [backend.eot, *ids], True


def _encode_text(text: str, backend: Backend) -> tuple[list[int], bool]:
    return _with_start(backend.vocab.tokenizer.encode(text, add_special_tokens=False).ids, backend)


def _prompts(prompt, backend: Backend) -> tuple[list[list[int]], list[bool]]:
    if isinstance(prompt, str):
        prompt = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt")
    if len(prompt) > backend.engine.max_queue:
        raise APIError(400, f"at most {backend.engine.max_queue} prompts per request", param="prompt")
    out, skip = [], []
    for p in prompt:
        if not isinstance(p, str):
            if not p:
                raise APIError(400, "prompt is empty (a list of no token ids)", param="prompt")
            _check_ids(p, backend, "prompt")
        ids, added = _encode_text(p, backend) if isinstance(p, str) else _with_start(list(p), backend)
        if not ids:  # "" still holds the start token; only a model without one reads nothing here
            raise APIError(400, "prompt is empty", param="prompt")
        out.append(ids)
        skip.append(added)
    return out, skip


def _max_tokens(requested: int | None, prompts: list[list[int]], backend: Backend) -> int:
    longest = max(len(p) for p in prompts)
    if requested is None:  # what fits; a prompt that leaves no room for one token is refused below
        requested = max(backend.context - longest, 1)
    if longest + requested > backend.context:
        # The context is the one the model was trained at (runs.load_model): nothing past it was learned.
        raise APIError(400, f"prompt of {longest} tokens + max_tokens {requested} exceeds the model's trained "
                       f"context of {backend.context} tokens", param="max_tokens", code="context_length_exceeded")
    return requested


def _stops(stop, extra: list[str] = ()) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS or any(not 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise APIError(400, f"stop: give at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} "
                       "characters", param="stop")
    return stops + list(extra)


def _check_size(prompts: list[list[int]], skip: list[bool], n: int, max_tokens: int, echo: bool,
                logprobs: int | None) -> None:
    echoed = sum(len(p) - s for p, s in zip(prompts, skip, strict=True)) if echo else 0
    entries = n * (echoed + len(prompts) * max_tokens) * (1 + (logprobs or 0))
    if entries > MAX_RESPONSE_ENTRIES:
        raise APIError(400, f"the answer would hold {entries:,} token entries (n x (echoed + new tokens) x "
                       f"(1 + logprobs), over all prompts); at most {MAX_RESPONSE_ENTRIES:,} per request: "
                       "split it into several requests", param="prompt", code="response_too_large")


def _sampling(body, backend: Backend, max_tokens: int, logprobs: int | None, echo: bool) -> Sampling:
    if body.n > backend.engine.max_batch:
        raise APIError(400, f"n: at most {backend.engine.max_batch} (the server's --max-batch)", param="n")
    return Sampling(max_tokens=max_tokens, temperature=body.temperature,
                    top_p=body.top_p if body.top_p < 1 else None, top_k=body.top_k if body.top_k and body.top_k > 0 else None,
                    seed=body.seed, logprobs=logprobs, echo=echo, stop_id=None if body.ignore_eos else backend.eot,
                    penalties=_penalties(body, backend))


def _penalties(body, backend: Backend) -> Penalties:
    if body.repetition_penalty != 1 and body.repeat_penalty != 1:
        raise APIError(400, "repetition_penalty and repeat_penalty: give one of them (vLLM's and llama.cpp's names)",
                       param="repeat_penalty")
    repetition, window = body.repetition_penalty, -1
    if body.repeat_penalty != 1:
        repetition, window = body.repeat_penalty, body.repeat_last_n
    return Penalties(logit_bias=_logit_bias(body.logit_bias, backend), repetition=repetition, window=window,
                     presence=body.presence_penalty, frequency=body.frequency_penalty, min_tokens=body.min_tokens,
                     min_p=body.min_p)


def _logit_bias(bias: dict[str, float] | None, backend: Backend) -> dict[int, float] | None:
    if not bias:
        return None
    out = {}
    for key, value in bias.items():
        if not key.isdigit() or not math.isfinite(value) or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: keys are token ids and values in [-100, 100], got {key!r}: {value}",
                           param="logit_bias")
        out[int(key)] = value
    _check_ids(list(out), backend, "logit_bias")
    return out


def _sse(chunks: AsyncIterator[dict], run: Run, usage: bool, head: dict) -> StreamingResponse:
    async def body():
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(head | chunk)}\n\n"
            if usage:
                yield f"data: {json.dumps(head | {'choices': [], 'usage': run.usage()})}\n\n"
        except APIError as e:  # the headers are gone: report in the stream, as OpenAI does
            yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.kind, 'param': None, 'code': e.code}})}\n\n"
        finally:
            run.close()
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _head(kind: str, b: Backend) -> dict:
    """The fields every answer starts with; `system_fingerprint` names the numeric precision served."""
    from tinyscale import __version__

    prefix = "cmpl" if kind == "text_completion" else "chatcmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": b.served.name, "system_fingerprint": f"tinyscale-{__version__}-{b.dtype}"}


# --- routes ----------------------------------------------------------------------------------------

router = APIRouter(responses=ERRORS)


@router.get("/health")
async def health(request: Request) -> dict:
    """Liveness, and each model's batch: sequences running, requests waiting, sequences finished or cancelled."""
    return {"status": "ok", "models": {name: b.engine.stats() for name, b in request.app.state.backends.items()}}


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": [_model_card(b) for b in request.app.state.backends.values()]}


@router.get("/v1/models/{model}")
async def get_model(model: str, request: Request) -> dict:
    return _model_card(_backend(request, model))


def _model_card(b: Backend) -> dict:
    return {"id": b.served.name, "object": "model", "created": int(time.time()), "owned_by": "tinyscale",
            "max_model_len": b.context, "dtype": b.dtype}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    b = _backend(request, body.model)
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of: only equal to n is supported", param="best_of")
    prompts, skip = _prompts(body.prompt, b)
    max_tokens = _max_tokens(body.max_tokens, prompts, b)
    _check_size(prompts, skip, body.n, max_tokens, body.echo, body.logprobs)
    sampling = _sampling(body, b, max_tokens, body.logprobs, body.echo)
    run = Run(b, prompts, skip, body.n, sampling, _stops(body.stop))
    head = _head("text_completion", b)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(_completion_chunks(run, body), run, usage, head)
    await run.wait(request)
    # Built in a worker thread: a large answer (up to MAX_RESPONSE_ENTRIES) must not stall other clients.
    choices = await asyncio.to_thread(lambda: [_completion_choice(c, body) for c in run.choices])
    return head | {"choices": choices, "usage": run.usage()}


def _completion_choice(c: Choice, body: CompletionRequest) -> dict:
    echo = c.echo if body.echo else []
    prefix = c.vocab.decode([t.id for t in echo])
    logprobs = None
    if body.logprobs is not None:
        ids = [t.id for t in echo] + [t.id for t in c.tokens]
        logprobs = legacy_logprobs(echo + c.tokens, c.vocab.offsets(ids), c.vocab)
    return {"index": c.index, "text": prefix + c.text, "logprobs": logprobs, "finish_reason": c.finish}


async def _completion_chunks(run: Run, body: CompletionRequest) -> AsyncIterator[dict]:
    echoed: set[int] = set()
    async for c in run.updates():
        text, tokens, offsets = "", [], []
        base = len(c.echo_text) if body.echo else 0
        if body.echo and c.index not in echoed:
            echoed.add(c.index)
            text, tokens = c.echo_text, list(c.echo)
            offsets = c.vocab.offsets([t.id for t in c.echo])
        delta = c.ready_text()
        c.sent_chars += len(delta)
        new = c.tokens[c.sent_tokens:]
        if body.logprobs is not None:  # offsets only where asked: each decodes the text so far
            gen_ids = [t.id for t in c.tokens]
            offsets += [base + len(c.vocab.decode(gen_ids[:i])) for i in range(c.sent_tokens, len(c.tokens))]
        c.sent_tokens = max(c.sent_tokens, len(c.tokens))
        text, tokens = text + delta, tokens + new
        if not text and not tokens and c.finish is None:
            continue
        logprobs = legacy_logprobs(tokens, offsets, c.vocab) if body.logprobs is not None else None
        yield {"choices": [{"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish}]}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    b = _backend(request, body.model)
    ids, _ = _encode_text(render_chat(body), b)  # the start token is always added: the transcript is text
    if not ids:
        raise APIError(400, "messages render to an empty prompt", param="messages")
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    top = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = _max_tokens(requested, [ids], b)
    _check_size([ids], [True], body.n, max_tokens, False, top)
    sampling = _sampling(body, b, max_tokens, top, False)
    run = Run(b, [ids], [True], body.n, sampling, _stops(body.stop, CHAT_STOPS))
    head = _head("chat.completion.chunk" if body.stream else "chat.completion", b)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(_chat_chunks(run, body), run, usage, head)
    await run.wait(request)
    choices = [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c.tokens, c.vocab) if body.logprobs else None, "finish_reason": c.finish}
               for c in run.choices]
    return head | {"choices": choices, "usage": run.usage()}


def render_chat(body: ChatRequest) -> str:
    messages = [{"role": m.role, "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)}
                for m in body.messages]
    return _chat_template().render(messages=messages, add_generation_prompt=True)


_TEMPLATE: list = []


def _chat_template():
    if not _TEMPLATE:  # sandboxed: the template is ours, but the content is the client's
        _TEMPLATE.append(jinja2.sandbox.ImmutableSandboxedEnvironment().from_string(CHAT_TEMPLATE))
    return _TEMPLATE[0]


async def _chat_chunks(run: Run, body: ChatRequest) -> AsyncIterator[dict]:
    started: set[int] = set()
    async for c in run.updates():
        delta: dict = {}
        if c.index not in started:
            started.add(c.index)
            delta = {"role": "assistant", "content": ""}
        text = c.ready_text()
        c.sent_chars += len(text)
        if text:
            delta["content"] = text
        new = c.tokens[c.sent_tokens:]
        c.sent_tokens = max(c.sent_tokens, len(c.tokens))
        if not delta and c.finish is None:
            continue
        logprobs = chat_logprobs(new, c.vocab) if body.logprobs else None
        yield {"choices": [{"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": c.finish}]}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> dict:
    b = _backend(request, body.model)
    ids, added = _encode_text(body.prompt, b)
    if added and not body.add_special_tokens:
        ids = ids[1:]
    return {"tokens": ids, "count": len(ids), "max_model_len": b.context}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request) -> dict:
    b = _backend(request, body.model)
    _check_ids(body.tokens, b, "tokens")
    return {"prompt": b.vocab.decode(body.tokens)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request, model: str | None = None) -> dict:
    """What lm-evaluation-harness's remote tokenizer reads (the vLLM format)."""
    b = _backend(request, model)
    eot = None if b.eot is None else b.vocab.piece(b.eot)
    return {"eos_token": eot, "bos_token": eot, "pad_token": eot, "chat_template": CHAT_TEMPLATE,
            "model_max_length": b.context, "tokenizer_class": "PreTrainedTokenizerFast"}


# --- the app -----------------------------------------------------------------------------------------


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return error_response(e.status, e.message, param=e.param, code=e.code, kind=e.kind, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        # pydantic adds the branch of a union to the location ("str", "function-after[...]"): not a field
        where = [str(p) for p in first.get("loc", ())[1:] if isinstance(p, int) or p not in _TYPE_TAGS and
                 not any(c in str(p) for c in "[(")]
        param = ".".join(where) or None
        message = first.get("msg", "invalid")
        if first.get("type") == "extra_forbidden":  # a field of OpenAI, vLLM or llama.cpp that is not implemented
            message = "not supported by tinyscale serve (see docs/serve.md for the fields it implements)"
        return error_response(400, f"{param + ': ' if param else ''}{message}", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error_response(e.status_code, str(e.detail), kind=kind, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error: {type(e).__name__}", kind="server_error")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _document_errors_as_400(app: FastAPI) -> None:
    """Invalid bodies answer 400 (as OpenAI does), not FastAPI's 422: say so in the schema."""
    default = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = default()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def _tokenizer_identity(tokenizer) -> str:
    """What decides the server's ids and text: the tokenizer less the parts it never uses (it encodes
    without special tokens, so an export's added post-processor, padding and truncation do not count)."""
    spec = json.loads(tokenizer.to_str())
    for unused in ("post_processor", "padding", "truncation"):
        spec.pop(unused, None)
    return json.dumps(spec, sort_keys=True)


def create_app(backends: dict[str, Backend], api_key: str | None, max_body: int) -> FastAPI:
    from tinyscale import __version__

    app = FastAPI(title="tinyscale", version=__version__,
                  description="An OpenAI-compatible server for tinyscale models (completions, chat, tokenize).")
    app.state.backends = backends
    app.state.tokenizers_differ = len({_tokenizer_identity(b.vocab.tokenizer) for b in backends.values()}) > 1
    app.include_router(router)
    _install_error_handlers(app)
    _document_errors_as_400(app)
    app.add_middleware(Guard, api_key=api_key, max_body=max_body)
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn's server, except that SIGTERM drains running requests and then exits 0 (uvicorn re-raises
    the signal after its graceful shutdown, which would end the process with -SIGTERM)."""

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM:
            self.should_exit = True
        else:
            super().handle_exit(sig, frame)
