"""`tinyscale serve` as a real process on a loopback port, driven by the official openai client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from _serve_helpers import Server, make_run

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

WORDS = ("Once upon a time Lily Tom Ben Mia Sam Anna had red big small happy soft shiny ball cat dog kite cake "
         "tree boat loved the very much One day was lost looked for it and found").split()
KEY = "sk-test-7f3a9c"  # only ever sent in the Authorization header; the server must not print it


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few seconds, so greedy text is varied and peaked (not near-ties)."""
    from _tiny_shards import make_shards
    from tinyscale.config import TrainConfig
    from tinyscale.train import train

    root = tmp_path_factory.mktemp("serve")
    shards = make_shards(root, stories=200)
    cfg = TrainConfig(data=str(shards), preset=None, d_model=32, n_layers=2, n_heads=2, max_seq_len=128,
                      seq_len=64, batch=16, tokens=100 * 16 * 64, lr=3e-3, warmup=10, eval_every=0,
                      checkpoint_every=10_000, dtype="fp32", device="cpu", threads=1)
    train(cfg, root / "story")
    return root / "story"


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    s = Server([trained], tmp_path_factory.mktemp("logs"), "--max-batch", "16", key=KEY)  # fp32: the default
    yield s
    s.stop()
    assert KEY not in s.logs()  # after every request of this module, including the refused ones
    # Logs on stderr, uvicorn's access lines too (it writes them to stdout by default): nothing on stdout.
    assert s.stdout.read_bytes() == b"" and '"POST /v1/completions HTTP/1.1" 200' in s.stderr.read_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=60)


def post(server, path: str, body, **kw) -> requests.Response:
    headers = {**server.headers, **kw.pop("headers", {})}
    if isinstance(body, (bytes, str)):
        return requests.post(server.base + path, data=body, headers=headers, timeout=60, **kw)
    return requests.post(server.base + path, json=body, headers=headers, timeout=60, **kw)


def test_models_lists_the_run_by_folder_name_and_the_exact_default_precision(client):
    assert [m.id for m in client.models.list().data] == ["story"]
    assert client.models.list().data[0].model_extra["dtype"] == "fp32"  # started without --dtype
    done = client.completions.create(model="story", prompt="Tom", max_tokens=2)
    assert done.system_fingerprint.endswith("-fp32")


def test_requests_without_the_key_get_401(server):
    for method, path in (("get", "/v1/models"), ("post", "/v1/completions"), ("get", "/health")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = requests.request(method, server.base + path, headers=headers, json={"model": "story"}, timeout=10)
            assert r.status_code == 401, (path, headers)
            assert r.json()["error"]["code"] == "invalid_api_key"
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_sync_client_completions_and_chat_streaming_or_not(server, client):
    kw = dict(model="story", max_tokens=20, temperature=0)
    full = client.completions.create(prompt="Once upon a time", **kw)
    assert full.choices[0].finish_reason in ("stop", "length") and full.choices[0].text.strip()
    # A text prompt starts with the end-of-text token, as every story the model read did.
    ids = post(server, "/tokenize", {"prompt": "Once upon a time", "add_special_tokens": False}).json()["tokens"]
    assert full.usage.prompt_tokens == 1 + len(ids)
    streamed = "".join(c.choices[0].text for c in client.completions.create(prompt="Once upon a time", stream=True, **kw))
    assert streamed == full.choices[0].text

    msgs = [{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "One day the"}]
    chat = client.chat.completions.create(messages=msgs, **kw)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content.strip()
    chunks = list(client.chat.completions.create(messages=msgs, stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_async_client_completions_and_chat_streaming_or_not(server):
    async def main():
        aclient = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=60)
        kw = dict(model="story", max_tokens=16, temperature=0)
        full = await aclient.completions.create(prompt="One day the", **kw)
        parts = [c.choices[0].text async for c in await aclient.completions.create(prompt="One day the", stream=True, **kw)]
        msgs = [{"role": "user", "content": "Mia had a ball."}]
        chat = await aclient.chat.completions.create(messages=msgs, **kw)
        deltas = [c.choices[0].delta.content or "" async for c in
                  await aclient.chat.completions.create(messages=msgs, stream=True, **kw)]
        await aclient.close()
        return full, parts, chat, deltas

    full, parts, chat, deltas = asyncio.run(main())
    assert "".join(parts) == full.choices[0].text and len(parts) > 1
    assert "".join(deltas) == chat.choices[0].message.content


def test_echo_with_logprobs_gives_the_model_own_prompt_logprobs(client, trained):
    """The layout lm-evaluation-harness reads: prompt tokens first (the first without a log-probability),
    then the generated ones, with text offsets into the returned text."""
    from tinyscale import runs

    model, _ = runs.load_model(trained)
    tok = runs.load_tokenizer(trained)
    ids = [tok.token_to_id("<|endoftext|>")] + tok.encode("Mia looked for it and found").ids
    out = client.completions.create(model="story", prompt=ids, max_tokens=3, temperature=0, echo=True, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 3
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    text = out.choices[0].text
    assert text.startswith(tok.decode(ids, skip_special_tokens=False))
    assert "".join(lp.tokens) == text and lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    with torch.no_grad():
        want = torch.log_softmax(model(torch.tensor([ids]))[0, :-1].double(), -1)
    want = want.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:len(ids)], want.tolist(), strict=True)) < 1e-4
    for chosen, top in zip(lp.token_logprobs[len(ids):], lp.top_logprobs[len(ids):], strict=True):
        assert 2 <= len(top) <= 3 and chosen == max(top.values())  # greedy: the chosen token is the best


def test_16_concurrent_streams_match_16_sequential_and_share_decoding_steps(server):
    # Word salad of 1 to 12 story words: prompts of different lengths whose greedy continuations differ
    # and end at different steps, so rows join, move and leave the batch while others run.
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(16)]
    kw = dict(model="story", max_tokens=20, temperature=0, stream=True)  # + the longest prompt (42) fits 64

    def steps() -> int:
        return requests.get(server.base + "/health", headers=server.headers, timeout=60).json()["models"]["story"]["steps"]

    async def one(aclient, prompt):
        return "".join([c.choices[0].text async for c in await aclient.completions.create(prompt=prompt, **kw)])

    async def both():
        aclient = openai.AsyncOpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=120)
        # 16 connections opened before counting, so that the 16 requests below arrive together
        await asyncio.gather(*(aclient.completions.create(model="story", prompt="Mia", max_tokens=1) for _ in prompts))
        s0 = steps()
        sequential = [await one(aclient, p) for p in prompts]
        s1 = steps()
        concurrent = await asyncio.gather(*(one(aclient, p) for p in prompts))
        s2 = steps()
        await aclient.close()
        return sequential, list(concurrent), s1 - s0, s2 - s1

    sequential, concurrent, seq_steps, conc_steps = asyncio.run(both())
    assert concurrent == sequential
    assert len(set(sequential)) >= 10  # different stories: rows mixed up would not go unnoticed
    # Counted in decoding steps, not seconds: a wall-clock bound failed on a busy CI machine (0.81 s
    # against 0.06 s) with nothing wrong. One at a time every token costs a step; together the rows
    # share them: 19 to 41 steps against 288 here, idle or beside other work (the requests reach the
    # engine in two or three groups). A server that stepped rows one by one would take 288.
    assert conc_steps <= seq_steps / 2, (conc_steps, seq_steps)


def test_stop_strings_n_choices_and_seeds(client):
    full = client.completions.create(model="story", prompt="Once upon a time", max_tokens=40, temperature=0).choices[0]
    cut = full.text[5:9]
    stopped = client.completions.create(model="story", prompt="Once upon a time", max_tokens=40, temperature=0,
                                        stop=[cut]).choices[0]
    assert stopped.text == full.text[: full.text.index(cut)] and stopped.finish_reason == "stop"

    kw = dict(model="story", prompt=["Tom had", "Lily had"], max_tokens=12, temperature=1.0, n=3, seed=7)
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.index for c in a.choices] == list(range(6))
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # a seed makes sampling repeatable
    assert len({c.text for c in a.choices}) > 1


ERRORS = [
    ({"model": "nope", "prompt": "x"}, 404, "model"),
    ({"model": "story", "prompt": "x", "max_tokens": 500}, 400, "max_tokens"),
    ({"model": "story", "prompt": "x", "temperature": -0.5}, 400, "temperature"),
    ({"model": "story", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "story", "prompt": "x", "top_p": 1.5}, 400, "top_p"),
    ({"model": "story", "prompt": "x", "n": 0}, 400, "n"),
    ({"model": "story", "prompt": "x", "n": 99}, 400, "n"),
    ({"model": "story", "prompt": 12}, 400, "prompt"),
    ({"model": "story", "prompt": [1, "a"]}, 400, "prompt"),
    ({"model": "story", "prompt": [[]]}, 400, "prompt"),
    ({"model": "story", "prompt": [10**6]}, 400, "prompt"),
    ({"model": "story", "prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": "story", "prompt": "x", "logprobs": 50}, 400, "logprobs"),
    ({"model": "story", "prompt": "x", "stop": [""]}, 400, "stop"),
    ({"model": "story", "prompt": "x", "presence_penalty": 3}, 400, "presence_penalty"),
    ({"model": "story", "prompt": "x", "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ({"model": "story", "prompt": "x", "logit_bias": {"5": 500}}, 400, "logit_bias"),
    ({"model": "story", "prompt": "x", "logit_bias": {"100000": 1}}, 400, "logit_bias"),
    ({"model": "story", "prompt": "x", "repetition_penalty": 1.2, "repeat_penalty": 1.1}, 400, "repeat_penalty"),
    ({"model": "story", "prompt": "x", "stop": "s" * 257}, 400, "stop"),
    ({"model": "story", "prompt": "x", "stop": ["s" * 270_000] * 15, "stream": True}, 400, "stop"),  # row 9
    ({"model": "story", "prompt": "a\ud800b"}, 400, "prompt"),  # row 13: lone surrogates
    ({"model": "\ud800", "prompt": "x"}, 400, "model"),
    ({"model": "story", "prompt": "x", "stop": "\udc80"}, 400, "stop"),
    ({"model": "story", "prompt": [5] * 600, "max_tokens": None}, 400, "max_tokens"),  # row 11
    ({"model": "story", "prompt": [[7] * 50] * 16, "max_tokens": 0, "echo": True, "logprobs": 20, "n": 16},
     400, "prompt"),  # row 10: a 5 KB request asking for a 7 MB answer
    ({"model": "story", "prompt": "x", "tools": [{"type": "function"}]}, 400, "tools"),
    ({"model": "story", "prompt": "x", "min_p": 2}, 400, "min_p"),
    ({"model": "story", "prompt": "x", "top_k": -3}, 400, "top_k"),
    ({"model": "story", "prompt": "x", "repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"model": "story", "prompt": "x", "repeat_penalty": 11}, 400, "repeat_penalty"),
    ({"model": "story", "prompt": "x", "repeat_last_n": -5}, 400, "repeat_last_n"),
    ({"model": "story", "prompt": "x", "min_tokens": -1}, 400, "min_tokens"),
    ({"model": "story", "prompt": "x", "frequency_penalty": "nan"}, 400, "frequency_penalty"),
    ({"model": "story", "prompt": "x", "logit_bias": {"5": "nan"}}, 400, "logit_bias"),
    ({"prompt": "x"}, 400, "model"),
]


@pytest.mark.parametrize("body,status,param", ERRORS, ids=[f"{e[2]}-{i}" for i, e in enumerate(ERRORS)])
def test_bad_requests_get_openai_error_bodies(server, body, status, param):
    r = post(server, "/v1/completions", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert (err["param"] or "").split(".")[0] == param


def test_malformed_oversized_and_unknown_requests(server, client):
    for body, status in ((b'{"model": "story", "prompt": ', 400), (b"[1, 2]", 400), (b"null", 400),
                         (b'{"model": "story", "prompt": "' + b"a" * 5_000_000 + b'"}', 413)):
        r = post(server, "/v1/completions", body, headers={"Content-Type": "application/json"})
        assert r.status_code == status and r.json()["error"]["message"]
    r = post(server, "/v1/chat/completions", {"model": "story", "messages": [{"role": "robot", "content": "hi"}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")
    r = requests.get(server.base + "/v1/nothing", headers=server.headers, timeout=10)
    assert r.status_code == 404 and r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x")
    assert client.completions.create(model="story", prompt="x", max_tokens=2).choices  # still serving


def test_the_trained_context_is_advertised_and_enforced(server, client):
    """The run trained at seq_len 64 in a model with 128 positions: the server is a 64-token model."""
    assert client.models.retrieve("story").model_extra["max_model_len"] == 64
    ids = [5] * 59  # read after the end-of-text token the server puts first: 60 positions
    assert len(client.completions.create(model="story", prompt=ids, max_tokens=4, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text) > 0
    for body in ({"model": "story", "prompt": ids, "max_tokens": 5},  # 65 positions
                 {"model": "story", "prompt": [5] * 65, "max_tokens": 0, "echo": True}):
        r = post(server, "/v1/completions", body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and "context of 64 tokens" in err["message"]
    # Without max_tokens, a chat answer fills the context and no more.
    chat = client.chat.completions.create(model="story", messages=[{"role": "user", "content": "Tell me a story."}],
                                          temperature=0, extra_body={"ignore_eos": True})
    assert chat.usage.prompt_tokens + chat.usage.completion_tokens == 64


# Issue 28 point 3: vLLM's documented extra parameters (Completions and Chat "Extra Parameters", v0.6),
# llama.cpp's sampling fields, and OpenAI fields the server has no use for. Each must be honoured or
# answered with a 400 naming it: never accepted and ignored.
IMPLEMENTED = {"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.3, "repeat_penalty": 1.3, "repeat_last_n": 16,
               "presence_penalty": 0.5, "frequency_penalty": 0.5, "logit_bias": {"5": 2.0}, "min_tokens": 1,
               "ignore_eos": True, "seed": 3, "user": "u", "best_of": 1}
REFUSED = {"use_beam_search": True, "length_penalty": 1.1, "stop_token_ids": [5], "include_stop_str_in_output": True,
           "skip_special_tokens": False, "spaces_between_special_tokens": False, "truncate_prompt_tokens": 4,
           "allowed_token_ids": [5], "prompt_logprobs": 1, "add_special_tokens": False, "response_format":
           {"type": "json_object"}, "guided_json": {}, "guided_regex": "a+", "guided_choice": ["a"],
           "guided_grammar": "root ::= 'a'", "guided_decoding_backend": "outlines", "guided_whitespace_pattern": " ",
           "priority": 1, "logits_processors": ["x"], "return_tokens_as_token_ids": True, "bad_words": ["cat"],
           "structured_outputs": {}, "cache_salt": "s", "suffix": "end", "tools": [], "tool_choice": "auto",
           "functions": [], "function_call": "auto", "parallel_tool_calls": False, "mirostat": 2, "tfs_z": 0.9,
           "typical_p": 0.9, "penalize_nl": True, "n_predict": 4, "grammar": "x", "json_schema": {},
           "dry_multiplier": 0.8, "xtc_probability": 0.5, "cache_prompt": True, "samplers": ["top_k"]}
CHAT_REFUSED = {"echo": True, "add_generation_prompt": False, "continue_final_message": True, "documents": [],
                "chat_template": "{{ x }}", "chat_template_kwargs": {}, "mm_processor_kwargs": {},
                "request_id": "r", "store": True, "metadata": {"a": "b"}, "reasoning_effort": "low",
                "modalities": ["text"], "audio": {}, "prediction": {}, "service_tier": "auto",
                "web_search_options": {}}


@pytest.mark.parametrize("route,field,value,honoured", [
    *[("/v1/completions", k, v, True) for k, v in IMPLEMENTED.items()],
    *[("/v1/chat/completions", k, v, True) for k, v in IMPLEMENTED.items() if k != "best_of"],
    *[("/v1/completions", k, v, False) for k, v in REFUSED.items()],
    *[("/v1/chat/completions", k, v, False) for k, v in (REFUSED | CHAT_REFUSED).items() if k != "suffix"],
], ids=lambda x: x if isinstance(x, str) else None)
def test_every_field_is_honoured_or_refused_by_name(server, route, field, value, honoured):
    body = {"model": "story", "max_tokens": 2, field: value}
    body |= {"prompt": "Once"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]}
    r = post(server, route, body)
    if honoured:
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field and "not supported" in r.json()["error"]["message"]


def test_logit_bias_and_min_tokens_change_what_is_generated(server):
    """The sampling extensions act (their arithmetic is in test_serve_penalties.py): a +100 bias makes one
    token the only choice; min_tokens holds the end-of-text back; the logprobs stay the model's own."""
    eot = post(server, "/tokenize", {"prompt": "<|endoftext|>", "add_special_tokens": False}).json()["tokens"][0]
    base = {"model": "story", "prompt": "Tom", "temperature": 0, "max_tokens": 6, "logprobs": 1}
    forced = post(server, "/v1/completions", base | {"logit_bias": {"7": 100}, "ignore_eos": True}).json()
    assert forced["choices"][0]["logprobs"]["tokens"] == [post(server, "/detokenize", {"tokens": [7]}).json()["prompt"]] * 6
    plain = post(server, "/v1/completions", base | {"ignore_eos": True}).json()
    assert forced["choices"][0]["logprobs"]["token_logprobs"][0] <= plain["choices"][0]["logprobs"]["token_logprobs"][0]
    ends = post(server, "/v1/completions", base | {"logit_bias": {str(eot): 100}}).json()["choices"][0]
    assert ends["text"] == "" and ends["finish_reason"] == "stop"
    held = post(server, "/v1/completions", base | {"logit_bias": {str(eot): 100}, "min_tokens": 3}).json()["choices"][0]
    assert len(held["logprobs"]["tokens"]) == 3 and held["finish_reason"] == "stop"


def test_text_and_token_id_prompts_are_read_alike(server, client):
    """Both start after the end-of-text token (added unless the prompt has it), hidden from echo (point 4)."""
    text = "Mia looked for it"
    ids = post(server, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()["tokens"]
    kw = dict(model="story", max_tokens=5, temperature=0, echo=True, logprobs=1)
    by_text, by_ids = (client.completions.create(prompt=p, **kw).choices[0] for p in (text, ids))
    assert by_text.text == by_ids.text and by_text.text.startswith(text)
    assert by_text.logprobs.token_logprobs == by_ids.logprobs.token_logprobs
    assert by_ids.logprobs.token_logprobs[0] is not None  # the first prompt token is read after the start token
    with_start = post(server, "/tokenize", {"prompt": text}).json()["tokens"]
    given = client.completions.create(prompt=with_start, **kw).choices[0]  # the start given: not doubled
    assert given.text == "<|endoftext|>" + by_text.text
    assert given.logprobs.token_logprobs[1:] == by_text.logprobs.token_logprobs


def test_underflowing_temperature_or_top_p_is_greedy_and_lone_surrogates_are_400(server):
    """Issue 28 rows 12 and 13: both were 500s (a token id = vocabulary size; a UnicodeEncodeError)."""
    greedy = post(server, "/v1/completions", {"model": "story", "prompt": "Tom", "max_tokens": 8, "temperature": 0})
    for extra in ({"temperature": 5e-324}, {"top_p": 1e-300}, {"temperature": 1e-45, "top_p": 1e-300}):
        r = post(server, "/v1/completions", {"model": "story", "prompt": "Tom", "max_tokens": 8, "seed": 1} | extra)
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"], extra
    for path, body, param in (("/tokenize", {"prompt": "a\udc80b"}, "prompt"),
                              ("/v1/chat/completions", {"model": "story", "messages": [{"role": "user",
                                                                                     "content": "a\ud800"}]},
                               "messages.0.content")):
        r = post(server, path, body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_tokenize_and_detokenize_round_trip(server):
    r = post(server, "/tokenize", {"prompt": "Tom had a cat.", "add_special_tokens": False}).json()
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 64  # trained at 64 in a 128-position model
    assert post(server, "/detokenize", {"tokens": r["tokens"]}).json()["prompt"] == "Tom had a cat."
    with_start = post(server, "/tokenize", {"prompt": "Tom had a cat."}).json()["tokens"]
    assert with_start[1:] == r["tokens"]
    info = requests.get(server.base + "/tokenizer_info", headers=server.headers, timeout=10).json()
    assert info["eos_token"] == "<|endoftext|>" and "Assistant:" in info["chat_template"]


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """Property-based requests from the server's own OpenAPI schema (a bounded run): never a 5xx, and
    every answer's status, content type and body are the documented ones (errors are 4xx OpenAI bodies)."""
    pytest.importorskip("schemathesis")
    import subprocess
    import sys

    checks = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", server.base + "/openapi.json", "--checks", checks,
           "--max-examples", "12", "--header", f"Authorization: Bearer {KEY}",
           "--generation-deterministic", "--phases", "examples,coverage,fuzzing", "--workers", "1",
           "--request-timeout", "30"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=150, cwd=tmp_path)  # its cache goes there
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert requests.get(server.base + "/health", headers=server.headers, timeout=10).status_code == 200


# --- a server with one batch row and one waiting place: the queue limit, disconnects, SIGTERM ------------


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    root = tmp_path_factory.mktemp("busy")
    # Wide and deep enough that a lone 500-token request (decoded by the C++ kernel) runs for a while:
    # ~0.8 s on the 2-core AVX-512 Xeon. At d_model 128 it took 90 ms there, and a disconnect test
    # failed once in a full run when the request finished before the closed socket was noticed.
    run = make_run(root, "slow", context=512, d_model=256, n_layers=8)
    s = Server([run], root, "--max-batch", "1", "--max-queue", "1")
    yield s
    s.stop()


def _long(prompt: str = "Once", max_tokens: int = 200) -> dict:
    return {"model": "slow", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}


def _stats(s: Server) -> dict:
    return requests.get(s.base + "/health", timeout=10).json()["models"]["slow"]


def test_beyond_the_queue_the_answer_is_429_with_retry_after(busy):
    barrier = threading.Barrier(8)

    def call(i):
        barrier.wait(timeout=30)
        return requests.post(busy.base + "/v1/completions", json=_long(max_tokens=60), timeout=120)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(8)))
    refused = [r for r in answers if r.status_code == 429]
    served = [r for r in answers if r.status_code == 200]
    assert refused and served and len(refused) + len(served) == 8
    assert all(int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error" for r in refused)
    assert all(r.json()["usage"]["completion_tokens"] == 60 for r in served)


def test_a_client_that_disconnects_frees_its_row(busy):
    before = _stats(busy)["cancelled"]
    body = _long(max_tokens=500) | {"stream": True}  # long enough to be cut short even on a fast machine
    with requests.post(busy.base + "/v1/completions", json=body, stream=True, timeout=60) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 20
    while _stats(busy)["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stats(busy)["cancelled"] == before + 1 and _stats(busy)["running"] == 0


def test_a_non_streaming_client_that_disconnects_frees_its_row_within_a_step(busy):
    """Point 2: rows decoded for ~7.5 s (all 500 tokens) after the socket closed; now the next step drops them."""
    import socket

    before = _stats(busy)["cancelled"]
    body = json.dumps(_long(max_tokens=500)).encode()
    sock = socket.create_connection(("127.0.0.1", busy.port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.monotonic() + 20
    while _stats(busy)["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    stats = _stats(busy)
    assert stats["running"] == 1
    sock.close()
    closed = time.monotonic()
    while _stats(busy)["cancelled"] == before and time.monotonic() < closed + 20:
        time.sleep(0.005)
    after = _stats(busy)
    assert after["cancelled"] == before + 1 and after["running"] == 0
    # Counted in decoding steps, not seconds, so that a busy machine does not fail it: the close
    # reaches the server's event loop within a few steps (0-2 here), not at the end of the 499 steps.
    assert after["steps"] - stats["steps"] <= 50, after["steps"] - stats["steps"]


def test_sigterm_drains_running_requests_then_exits_0(busy):
    body = _long() | {"stream": True, "stream_options": {"include_usage": True}}
    with requests.post(busy.base + "/v1/completions", json=body, stream=True, timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        code = {}
        killer = threading.Thread(target=lambda: code.setdefault("exit", busy.terminate(timeout=90)))
        killer.start()
        rest = [line for line in lines if line]
    killer.join(timeout=100)
    events = [json.loads(line[6:]) for line in [first, *rest] if line != b"data: [DONE]"]
    assert rest[-1] == b"data: [DONE]"
    assert events[-1]["usage"]["completion_tokens"] == 200  # the request in flight ran to its end
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert code["exit"] == 0


def test_tokenizer_routes_need_a_model_name_when_the_tokenizers_differ(tmp_path):
    """Point 4: without `model`, /tokenize answered with the first model's tokenizer, wrong for the second."""
    s = Server([make_run(tmp_path, "a"), make_run(tmp_path, "b", vocab=280)], tmp_path)
    try:
        for path, body in (("/tokenize", {"prompt": "Once upon"}), ("/detokenize", {"tokens": [5, 6]})):
            r = requests.post(s.base + path, json=body, timeout=10)
            assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
        assert requests.get(s.base + "/tokenizer_info", timeout=10).status_code == 400
        a, b = (requests.post(s.base + "/tokenize", json={"prompt": "Once upon a time", "model": m}, timeout=10).json()
                for m in ("a", "b"))
        assert a["tokens"] != b["tokens"]
        info = requests.get(s.base + "/tokenizer_info", params={"model": "b"}, timeout=10)
        assert info.status_code == 200 and info.json()["eos_token"] == "<|endoftext|>"
    finally:
        s.stop()
