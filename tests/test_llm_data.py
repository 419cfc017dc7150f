"""`data llm`: the recipe's prompts, checks, resume after SIGKILL against a faulty server, cost cap, key."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_openai_server import FakeConfig, running
from tinyscale.cli import main
from tinyscale.data.llm import LlmSettings, generate_llm_corpus, load_template, missing_words, plan
from tinyscale.endpoint import Endpoint
from tinyscale.errors import UserError

SRC = str(Path(__file__).resolve().parents[1] / "src")
SECRET = "sk-test-3f9c1d2e-never-on-disk"


def _ep(url: str, **kw) -> Endpoint:
    return Endpoint(url, "fake", api_key_env="TINYSCALE_TEST_KEY", timeout=2.0, backoff=0.01, **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def test_prompt_follows_the_recipe_and_is_a_function_of_seed_and_index():
    t = load_template("plain")
    a, b, c = plan(5, 17, "plain", t), plan(5, 17, "plain", t), plan(5, 18, "plain", t)
    assert a == b and a["prompt"] != c["prompt"]
    w = a["words"]
    assert f'the verb "{w["verb"]}", the noun "{w["noun"]}" and the adjective "{w["adjective"]}"' in a["prompt"]
    assert a["prompt"].startswith("Write a short story (3-5 paragraphs) which only uses very simple words")
    assert a["prompt"].endswith("Remember to only use simple words!")
    prompts = [plan(0, i, "plain", t) for i in range(200)]
    with_dialogue = [p for p in prompts if "dialogue" in p["features"]]
    assert 60 < len(with_dialogue) < 180
    assert all("the story should contain at least one dialogue" in p["prompt"] for p in with_dialogue)
    assert len({p["words"]["noun"] for p in prompts}) > 50


def test_required_words_found_in_any_inflection():
    words = {"verb": "run", "noun": "puppy", "adjective": "happy"}
    assert missing_words("The puppies ran and were happier than ever.", words) == []
    assert missing_words("Tom was running with the puppy's happy face.", words) == []
    assert missing_words("The dog ran. It was happy.", words) == ["noun"]
    # Irregular forms come from the lexicon (hang: hung, foot: feet).
    assert missing_words("Her feet hung over the cuter one.", {"verb": "hang", "noun": "foot", "adjective": "cute"}) == []


def test_sigkill_midway_then_resume_gives_each_story_once(tmp_path):
    out = tmp_path / "corpus"
    cfg = FakeConfig(fault_rate=0.2, slow_seconds=3.0, seed=1)
    env = {**os.environ, "PYTHONPATH": SRC, "TINYSCALE_TEST_KEY": SECRET}
    with running(cfg) as server:
        cmd = [sys.executable, "-m", "tinyscale.cli", "-q", "data", "llm", "--base-url", server.base_url,
               "--model", "fake", "--stories", "60", "--out", str(out), "--concurrency", "8", "--seed", "3",
               "--timeout", "1", "--api-key-env", "TINYSCALE_TEST_KEY"]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240  # generous: the machine may be shared
        while len(_lines(out / "stories.jsonl")) < 20 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        before = len({r["meta"]["index"] for r in _lines(out / "stories.jsonl")})
        assert 20 <= before < 60, "the first run should have been killed midway"
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    stories = _lines(out / "stories.jsonl")
    indices = [r["meta"]["index"] for r in stories]
    assert sorted(indices) == list(range(60))  # exactly 60, each once
    assert summary["written"] == 60 and summary["written_now"] == 60 - before and summary["missing"] == 0
    assert summary["retries"] > 0 and sum(summary["errors_by_reason"].values()) >= summary["retries"]
    assert set(summary["errors_by_reason"]) <= {"429", "500", "timeout", "connection", "malformed"}
    assert "failed_requests" in summary
    split_ids = [r["id"] for s in ("train", "val") for r in _lines(out / f"{s}.jsonl")]
    assert len(split_ids) == len(set(split_ids)) == 60 - summary["flagged"]
    # The key was sent to the server, and is nowhere on disk or in the output.
    assert SECRET in server.state.keys
    assert server.state.counts["requests"] > 60 and sum(server.state.counts[f] for f in cfg.faults) > 0
    for path in out.rglob("*"):
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in second.stdout + second.stderr


def test_an_endpoint_that_never_answers_stops_the_session_and_a_rerun_resumes(tmp_path):
    settings = LlmSettings(stories=6, concurrency=3)
    with running(FakeConfig(fault_rate=1.0, faults=("500",))) as server, \
            pytest.raises(UserError, match=r"no usable answer from the endpoint .*500.*6 left to write"):
        generate_llm_corpus(tmp_path, _ep(server.base_url, max_attempts=2), settings)
    assert not (tmp_path / "train.jsonl").exists()  # nothing produced: no empty corpus either
    with running(FakeConfig()) as server:
        summary = generate_llm_corpus(tmp_path, _ep(server.base_url), settings)
    assert summary["written"] == 6 and summary["missing"] == 0 and summary["failed_requests"] == 0


def test_checks_flag_missing_words_cut_stories_and_duplicates(tmp_path):
    settings = LlmSettings(stories=40, concurrency=4, seed=1)
    with running(FakeConfig(missing_word_rate=0.3, cut_rate=0.15, seed=2)) as server:
        summary = generate_llm_corpus(tmp_path / "a", _ep(server.base_url), settings)
        recs = {r["meta"]["index"]: r for r in _lines(tmp_path / "a" / "stories.jsonl")}
        # A story written twice (same first and last 20 words) is a near-duplicate.
        dup = dict(recs[1], meta={**recs[1]["meta"], "index": 2, "flags": []})
        (tmp_path / "a" / "stories.jsonl").write_text(
            "".join(json.dumps(dup if i == 2 else r) + "\n" for i, r in sorted(recs.items())))
        summary = generate_llm_corpus(tmp_path / "a", _ep(server.base_url), settings)
        kept = generate_llm_corpus(tmp_path / "b", _ep(server.base_url),
                                   LlmSettings(stories=40, concurrency=4, seed=1, keep_flagged=True))
    flags = summary["flags"]
    assert flags["missing_words"] >= 4 and flags["cut"] >= 2 and flags.get("near_duplicate") == (
        0 if recs[1]["meta"]["flags"] else 1)
    for r in recs.values():
        assert ("missing_words" in r["meta"]["flags"]) == bool(r["meta"]["missing"])
        assert ("cut" in r["meta"]["flags"]) == (r["meta"]["finish_reason"] == "length")
    n_split = sum(len(_lines(tmp_path / "a" / f"{s}.jsonl")) for s in ("train", "val"))
    assert n_split == 40 - summary["flagged"] and summary["flagged"] > 0
    assert sum(kept["splits"].values()) == 40


def test_instruct_format_writes_the_header(tmp_path, capsys, monkeypatch):
    from tinyscale import progress

    monkeypatch.setenv("TINYSCALE_TEST_KEY", SECRET)
    progress.enable(True)  # the bar and log lines are drawn: the key must not be in them either
    try:
        with running(FakeConfig(fault_rate=0.3, faults=("500", "drop"), seed=3)) as server:
            generate_llm_corpus(tmp_path, _ep(server.base_url), LlmSettings(stories=12, fmt="instruct"))
    finally:
        progress.enable(False)
    captured = capsys.readouterr()
    assert "llm stories" in captured.err + captured.out and SECRET not in captured.err + captured.out
    assert SECRET in server.state.keys
    recs = _lines(tmp_path / "stories.jsonl")
    assert len(recs) == 12
    for r in recs:
        header, story = r["text"].split("\nStory: ", 1)
        kinds = [line.split(":")[0] for line in header.splitlines()]
        assert kinds == r["meta"]["instruct"] and kinds
        assert "Summary:" not in story and story.startswith("Once upon a time")
        if "Words" in kinds:
            w = r["meta"]["words"]
            assert f"Words: {w['verb']}, {w['noun']}, {w['adjective']}" in header
    assert any("Summary" in r["meta"]["instruct"] for r in recs)


def test_stops_cleanly_at_max_cost(tmp_path):
    # ~40 prompt + ~60 completion tokens per story at $1000 per million: about $0.1 a story.
    settings = LlmSettings(stories=50, concurrency=4, max_cost=1.0, price_in=1000.0, price_out=1000.0,
                           max_tokens=100)
    with running(FakeConfig()) as server:
        summary = generate_llm_corpus(tmp_path, _ep(server.base_url), settings)
    assert summary["stopped_by_cost"] and 0 < summary["written"] < 50
    assert summary["cost_usd"] <= 1.0
    assert summary["missing"] == 50 - summary["written"]


def test_resume_with_another_seed_is_refused_and_torn_line_is_cut(tmp_path):
    with running(FakeConfig()) as server:
        generate_llm_corpus(tmp_path, _ep(server.base_url), LlmSettings(stories=4))
        with pytest.raises(UserError, match="another seed"):
            generate_llm_corpus(tmp_path, _ep(server.base_url), LlmSettings(stories=4, seed=9))
        with open(tmp_path / "stories.jsonl", "a") as f:
            f.write('{"id": "llm-0-9", "text": "Once up')  # a kill in the middle of a line
        summary = generate_llm_corpus(tmp_path, _ep(server.base_url), LlmSettings(stories=6))
    assert summary["written"] == 6 and summary["written_now"] == 2
    assert sorted(r["meta"]["index"] for r in _lines(tmp_path / "stories.jsonl")) == list(range(6))
    lines = (tmp_path / "stories.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "stories.jsonl").write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    with pytest.raises(UserError, match="stories.jsonl:2: not a story line"):
        generate_llm_corpus(tmp_path, _ep("http://127.0.0.1:9/v1"), LlmSettings(stories=6))
    assert len((tmp_path / "stories.jsonl").read_text().splitlines()) == 7  # nothing dropped


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    code = main(["-q", "data", "llm", "--base-url", "ftp://x", "--model", "m", "--stories", "3",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "--base-url" in capsys.readouterr().err
    code = main(["-q", "data", "llm", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--stories", "3",
                 "--out", str(tmp_path / "o"), "--max-cost", "1"])
    assert code == 2 and "--price-in" in capsys.readouterr().err


def test_endpoint_refusal_stops_with_one_line(tmp_path, capsys):
    with running(FakeConfig()) as server:
        code = main(["-q", "data", "llm", "--base-url", server.base_url.replace("/v1", "/nope"), "--model", "m",
                     "--stories", "3", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "refused" in err and "404" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_against_tinyscale_serve_with_a_tiny_model(tmp_path):
    pytest.importorskip("tinyscale.serve")
    from _tiny_shards import make_shards
    from tinyscale.config import TrainConfig
    from tinyscale.train import train

    shards = make_shards(tmp_path / "data", stories=200)
    run = tmp_path / "run"
    # The server's context is the trained one: a TinyStories prompt (~380 tokens here) + 40 must fit it.
    train(TrainConfig(data=str(shards), tokens=20 * 2 * 512, d_model=32, n_layers=2, n_heads=2, seq_len=512,
                      batch=2, eval_every=0, checkpoint_every=20, threads=1, dtype="fp32"), run)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC}
    serve = subprocess.Popen([sys.executable, "-m", "tinyscale.cli", "-q", "serve", str(run), "--port", str(port),
                              "--name", "tiny", "--threads", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert serve.poll() is None and time.monotonic() < deadline, "tinyscale serve did not start"
                time.sleep(0.2)
        done = subprocess.run([sys.executable, "-m", "tinyscale.cli", "-q", "data", "llm", "--base-url",
                               f"http://127.0.0.1:{port}/v1", "--model", "tiny", "--stories", "6", "--out",
                               str(tmp_path / "llm"), "--concurrency", "2", "--max-tokens", "40"],
                              env=env, capture_output=True, text=True, timeout=300)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["written"] == 6 and summary["missing"] == 0
    # A tiny model writes nonsense: the stories are kept, flagged and counted as missing words.
    assert summary["flags"].get("missing_words", 0) >= 5 and summary["flagged"] >= 5
