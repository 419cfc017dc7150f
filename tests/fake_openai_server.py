"""A small OpenAI-compatible server for tests: scripted stories and verdicts, injected faults.

    with running(FakeConfig(fault_rate=0.2)) as server:
        ...  # point a client at server.base_url; server.state.counts says what it answered

Stories: a chat request that asks for the verb "v", the noun "n" and the adjective "a" gets a short
story that uses them (unless `missing_word_rate` drops the adjective), cut short with
finish_reason "length" at `cut_rate`. A request whose prompt holds "***" is a judge request and gets
a verdict (after `judge_seconds`): JSON when response_format asks for it, else one of a few text
layouts; state.judged lists the prompts graded and counts["max_in_flight"] the most verdicts under way
at once. The story text is a function of the prompt, so a retried request gets the same story.

Faults, drawn per /v1 request with probability `fault_rate`, evenly among: 429 with Retry-After,
500, a reply slower than any test's client timeout, a connection dropped mid-body, and a malformed
200 body. Run alone: python tests/fake_openai_server.py --port 8008 --fault-rate 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

FAULTS = ("429", "500", "timeout", "drop", "malformed")
_WORDS = re.compile(r'the verb "([^"]+)", the noun "([^"]+)" and the adjective "([^"]+)"')
NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Zoe", "Leo", "Ella"]
PLACES = ["park", "garden", "forest", "beach", "farm", "town", "river", "hill"]


@dataclass
class FakeConfig:
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    missing_word_rate: float = 0.0
    cut_rate: float = 0.0
    unparsable_verdict_rate: float = 0.0  # judge replies that are refusals
    reject_json_mode: bool = False  # answer 400 to response_format, as servers without JSON mode do
    slow_seconds: float = 5.0  # how long a "timeout" fault takes to answer
    retry_after: str = "1"
    judge_seconds: float = 0.0  # how long each verdict takes (so that a test can stop a client midway)
    seed: int = 0


@dataclass
class FakeState:
    cfg: FakeConfig
    rng: random.Random = field(init=False)
    counts: Counter = field(default_factory=Counter)  # "requests", "ok", each fault name, "judge", ...
    keys: set = field(default_factory=set)  # bearer tokens seen (the tests check the key was sent)
    judged: list = field(default_factory=list)  # the prompt of every verdict answered, in order
    in_flight: int = 0  # judge requests being answered now; counts["max_in_flight"] is the most seen
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.cfg.seed)

    def draw_fault(self) -> str | None:
        with self.lock:
            self.counts["requests"] += 1
            if self.rng.random() < self.cfg.fault_rate:
                fault = self.rng.choice(self.cfg.faults)
                self.counts[fault] += 1
                return fault
            return None


def _story(prompt: str, cfg: FakeConfig) -> tuple[str, str]:
    """(story, finish_reason) for a story prompt, a pure function of the prompt."""
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    m = _WORDS.search(prompt)
    verb, noun, adj = m.groups() if m else ("play", "ball", "red")
    if rng.random() < cfg.missing_word_rate:
        adj = "nice" if adj != "nice" else "good"
    name, friend = rng.sample(NAMES, 2)
    place = rng.choice(PLACES)
    n = rng.randrange(1000)
    text = (f"Once upon a time, {name} went to the {place} with a {adj} {noun}. "
            f"{name} wanted to {verb} with {friend}. \"Look at my {noun}!\" said {name}. "
            f"{friend} smiled and they played for {n} minutes. "
            f"At the end of the day, {name} and {friend} went home happy.")
    if "Summary:" in prompt:
        text += f"\nSummary: {name} and {friend} play with a {adj} {noun} at the {place}."
    if rng.random() < cfg.cut_rate:
        return text[: len(text) // 2], "length"
    return text, "stop"


def _verdict(prompt: str, json_mode: bool, cfg: FakeConfig) -> str:
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    if rng.random() < cfg.unparsable_verdict_rate:
        return "I'm sorry, but I can't help with grading this text."
    g = {k: rng.randint(3, 9) for k in ("grammar", "creativity", "consistency", "plot")}
    age = rng.choice("ABCDEF")
    if json_mode:
        return json.dumps({"assessment": "The student completes the story simply.", **g, "age_group": age})
    return (f"The student continues the story after *** in simple words.\n\nGrammar: {g['grammar']}/10, "
            f"Creativity: {g['creativity']}/10, Consistency: {g['consistency']}/10, "
            f"Plot: {g['plot']}/10\nAge group: {age}")


def _completion(text: str, finish: str, prompt_chars: int, model: str) -> dict:
    return {"id": "fake-1", "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text) // 4,
                      "total_tokens": prompt_chars // 4 + len(text) // 4}}


def make_app(state: FakeState) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        if "***" in prompt:
            json_mode = (body.get("response_format") or {}).get("type") == "json_object"
            if json_mode and state.cfg.reject_json_mode:
                with state.lock:
                    state.counts["rejected_json_mode"] += 1
                return JSONResponse({"error": {"message": "response_format is not supported"}}, status_code=400)
            with state.lock:
                state.in_flight += 1
                state.counts["max_in_flight"] = max(state.counts["max_in_flight"], state.in_flight)
            try:
                await asyncio.sleep(state.cfg.judge_seconds)
            finally:
                with state.lock:
                    state.in_flight -= 1
            with state.lock:
                state.counts["judge"] += 1
                state.judged.append(prompt)
            text, finish = _verdict(prompt, json_mode, state.cfg), "stop"
        else:
            text, finish = _story(prompt, state.cfg)
        with state.lock:
            state.counts["ok"] += 1
        return JSONResponse(_completion(text, finish, len(prompt), body.get("model", "fake")))

    return app


class FaultInjector:
    """ASGI wrapper: decides each /v1 POST's fault before the app sees it."""

    def __init__(self, app: FastAPI, state: FakeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        with self.state.lock:
            self.state.keys.add(auth.removeprefix("Bearer "))
        fault = self.state.draw_fault()
        if fault is None:
            return await self.app(scope, receive, send)
        if fault == "timeout":
            await asyncio.sleep(self.state.cfg.slow_seconds)
            return await self.app(scope, receive, send)
        if fault == "drop":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"400")]})
            await send({"type": "http.response.body", "body": b'{"id": "fake-1", "cho', "more_body": True})
            raise ConnectionAbortedError("fault injected: connection dropped")  # uvicorn closes the socket
        status, body, headers = {
            "429": (429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}',
                    [(b"retry-after", self.state.cfg.retry_after.encode())]),
            "500": (500, b'{"error": {"message": "internal error", "type": "server_error"}}', []),
            "malformed": (200, b'{"choices": [{"index": 0, "message": ' if self.state.rng.random() < 0.5
                          else b'{"object": "chat.completion", "choices": []}', []),
        }[fault]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})


@dataclass
class RunningServer:
    base_url: str
    state: FakeState


@contextlib.contextmanager
def running(cfg: FakeConfig | None = None) -> Iterator[RunningServer]:
    """Serve on 127.0.0.1 (a free port) in a thread for the duration of the block."""
    state = FakeState(cfg or FakeConfig())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(FaultInjector(make_app(state), state), log_level="critical",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake server did not start")
        time.sleep(0.02)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}/v1", state)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8008)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--missing-word-rate", type=float, default=0.0)
    args = p.parse_args()
    state = FakeState(FakeConfig(fault_rate=args.fault_rate, missing_word_rate=args.missing_word_rate))
    uvicorn.run(FaultInjector(make_app(state), state), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
