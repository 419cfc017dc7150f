"""Calls to an OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama, `tinyscale serve`).

Shared by `data llm` (story writing) and `judge` (grading). The official async client does the HTTP;
this module adds what both stages need and the client does not report: how many retries and failures
happened and why, Retry-After honoured with exponential backoff and jitter, malformed bodies treated
as retryable, and the API key kept out of every message (it is read from the environment only).

When to give up (the same for every command that calls an endpoint):
- until the endpoint has answered one request in this session, a request gets `FIRST_ATTEMPTS` (2)
  attempts, and a request that still fails stops the session: a wrong URL, a dead server, an
  endpoint that answers only errors or garbage is reported in about a second, not after hours;
- after that, each request gets `Endpoint.max_attempts` (6) attempts with backoff, and
  `FAILS_IN_A_ROW` (5) requests failing one after another (every attempt of each) stop the session.
Stopping raises `EndpointDown`, whose message names the endpoint and the last error; the commands
turn it into one line and a non-zero exit, keeping what was finished before.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tinyscale.errors import UserError

# A key is required by the client even for local servers that ignore it.
NO_KEY = "not-needed"
FIRST_ATTEMPTS = 2  # attempts per request until the endpoint has answered once
FAILS_IN_A_ROW = 5  # failed requests in a row (after their retries) that stop a session


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 60.0  # seconds per request
    max_attempts: int = 6  # per request and session; then it is recorded as failed
    backoff: float = 1.0  # first wait in seconds, doubled per attempt (with jitter)
    max_backoff: float = 60.0

    def key(self) -> str:
        return os.environ.get(self.api_key_env) or NO_KEY


@dataclass
class CallStats:
    """What happened on the wire during one session."""
    requests: int = 0
    retries: int = 0
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)  # one count per failed attempt, by reason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    answered: int = 0  # requests that got a usable reply
    failed_in_a_row: int = 0
    last_error: str = ""  # the last failure, said in words (for the message that stops a session)


@dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


class RequestFailed(Exception):
    """Every attempt failed with a retryable problem; `reason` names the last one."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


class EndpointDown(Exception):
    """The session stops: the endpoint never answered, or FAILS_IN_A_ROW requests failed in a row."""


class RequestRejected(Exception):
    """The endpoint refused the request itself (4xx other than 408/409/429): retrying cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class _Malformed(Exception):
    pass


def make_client(ep: Endpoint):
    """The official async client, with its own retries off (ours count and log them)."""
    try:
        from openai import AsyncOpenAI
    except ImportError:
        raise UserError("this command needs the openai client: pip install 'tinyscale[llm]'") from None
    check_url(ep)
    return AsyncOpenAI(api_key=ep.key(), base_url=ep.base_url, timeout=ep.timeout, max_retries=0)



def check_money(settings: Any) -> None:
    """The spending cap's inputs (`max_cost`, `price_in`, `price_out` of a settings object): each
    finite and >= 0, and a cap only with a price to count it by."""
    for name in ("max_cost", "price_in", "price_out"):
        value = getattr(settings, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UserError(f"--{name.replace('_', '-')}: must be a finite number >= 0, got {value}")
    if settings.max_cost is not None and not (settings.price_in or settings.price_out):
        raise UserError("--max-cost needs --price-in and/or --price-out (USD per million tokens)")

def check_url(ep: Endpoint) -> None:
    """Refuse a --base-url that is not http(s) before any folder is made or request sent."""
    if not ep.base_url.startswith(("http://", "https://")):
        raise UserError(f"--base-url {ep.base_url}: expected an http:// or https:// URL")


def scrub(text: str, ep: Endpoint) -> str:
    """A message with the API key (should an endpoint echo it) replaced by ***."""
    key = ep.key()
    return text.replace(key, "***") if key != NO_KEY else text


def _reply(resp: Any) -> Reply:
    """Validate a chat completion; anything unexpected is a malformed body (retryable)."""
    try:
        choice = resp.choices[0]
        text = choice.message.content
        if not isinstance(text, str):
            raise TypeError("no message content")
        usage = getattr(resp, "usage", None)
        return Reply(text, choice.finish_reason, int(getattr(usage, "prompt_tokens", 0) or 0),
                     int(getattr(usage, "completion_tokens", 0) or 0))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        raise _Malformed(f"malformed response ({type(e).__name__})") from None


def _retry_after(err: Any) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header, when the error carries one."""
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:  # an HTTP date: rare enough to fall back on our own backoff
        return None
    return None


def _describe(err: Exception) -> str:
    """The error in a few words, with its root cause (the client says only "Connection error.")."""
    cause = err
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__
    text = str(err).strip() or type(err).__name__
    if cause is not err and str(cause).strip() and _is_connection(err):
        text += f" ({str(cause).strip()})"
    return " ".join(text.split())[:200]


def _is_connection(err: Exception) -> bool:
    import openai

    return isinstance(err, openai.APIConnectionError)


def _classify(err: Exception) -> tuple[str, float | None]:
    """(reason, Retry-After seconds) for a retryable error; raise RequestRejected for a final one."""
    import openai

    if isinstance(err, _Malformed | ValueError):  # ValueError: a body that is not JSON
        return "malformed", None
    if isinstance(err, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return "timeout", None
    if isinstance(err, openai.APIConnectionError):
        return "connection", None
    if isinstance(err, openai.APIResponseValidationError):
        return "malformed", None
    if isinstance(err, openai.APIStatusError):
        status = err.status_code
        if status == 429 or status >= 500 or status in (408, 409):
            return str(status), _retry_after(err)
        raise RequestRejected(status, str(getattr(err, "message", err))[:300]) from None
    raise err


async def chat(client: Any, ep: Endpoint, messages: list[dict], stats: CallStats, rng: random.Random,
               **params: Any) -> Reply:
    """One chat completion with retries; raises RequestFailed, RequestRejected or EndpointDown."""
    import openai

    reason, attempt = "unknown", 0
    while True:
        stats.requests += 1
        try:
            resp = await client.chat.completions.create(model=ep.model, messages=messages, **params)
            reply = _reply(resp)
            stats.prompt_tokens += reply.prompt_tokens
            stats.completion_tokens += reply.completion_tokens
            stats.answered += 1
            stats.failed_in_a_row = 0
            return reply
        except (openai.OpenAIError, _Malformed, ValueError) as e:
            reason, wait = _classify(e)
            stats.last_error = scrub(_describe(e), ep)
        stats.reasons[reason] += 1
        attempt += 1
        # Decided after each attempt: once any request of the session got an answer, all get them all.
        if attempt >= (ep.max_attempts if stats.answered else min(ep.max_attempts, FIRST_ATTEMPTS)):
            break
        stats.retries += 1
        backoff = min(ep.max_backoff, ep.backoff * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)
        # Retry-After is honoured as a floor, with a little jitter so that waiting clients spread out.
        await asyncio.sleep(min(ep.max_backoff, wait) * rng.uniform(1.0, 1.1) if wait is not None else backoff)
    stats.failed += 1
    stats.failed_in_a_row += 1
    if not stats.answered:
        raise EndpointDown(f"{ep.base_url}: no usable answer from the endpoint ({attempt} attempts; last error: "
                           f"{reason}: {stats.last_error})")
    if stats.failed_in_a_row >= FAILS_IN_A_ROW:
        raise EndpointDown(f"{ep.base_url}: {stats.failed_in_a_row} requests in a row failed, each after "
                           f"{attempt} attempts (last error: {reason}: {stats.last_error})")
    raise RequestFailed(reason, attempt)


async def run_workers(workers: list[Any]) -> None:
    """Run coroutines together; the first that raises (EndpointDown, a full disk) cancels the others,
    so that no request is left retrying in the background, and its error is raised."""
    tasks = [asyncio.ensure_future(w) for w in workers]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()
