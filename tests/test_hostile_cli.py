"""Issue 28's hostile probe of the CLI: the rows about endpoints, locks and escaping errors.

The rows that need no endpoint are in the bad-input table of test_reliability.py (ids "28.N-...").
Endpoints here are tests/fake_openai_server.py on 127.0.0.1 or a closed port (9); every case is
bounded by short timeouts and the rule of endpoint.py: a request gets 2 attempts until the endpoint
has answered once, then a failure stops the session.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import shutil
import time
from pathlib import Path

import pytest

from fake_openai_server import FakeConfig, running
from test_judge import make_run
from test_reliability import call
from tinyscale.cli import main
from tinyscale.endpoint import FIRST_ATTEMPTS
from tinyscale.errors import UserError

DEAD = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: connection refused at once
FAULTS = ("dead", "500", "malformed", "drop", "timeout")


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(params=FAULTS)
def bad_endpoint(request):
    """(base URL, server state or None) of an endpoint that never gives a usable answer."""
    if request.param == "dead":
        yield DEAD, None
        return
    with running(FakeConfig(fault_rate=1.0, faults=(request.param,), slow_seconds=1.5)) as server:
        yield server.base_url, server.state


def _one_line_naming(err: str, url: str) -> None:
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert url in err and "last error" in err, err


# rows 20 and 21: an endpoint that is dead, answers 500s, garbage, dropped connections or too slowly
def test_data_llm_stops_at_once_on_an_endpoint_that_never_answers(bad_endpoint, tmp_path, capsys):
    url, state = bad_endpoint
    out = tmp_path / "x"
    t0 = time.monotonic()
    code, err = call(["data", "llm", "--base-url", url, "--model", "m", "--stories", "2000", "--concurrency", "16",
                      "--timeout", "0.5", "--out", str(out)], capsys)
    # At once: each of the 16 workers gives its first story FIRST_ATTEMPTS tries (16-32 requests seen),
    # not 2,000 stories' worth; in seconds (1-2 here) loosely, as a busy machine must not fail it.
    assert code == 2 and time.monotonic() - t0 < 60, err
    assert state is None or state.counts["requests"] <= 16 * FIRST_ATTEMPTS, state.counts
    _one_line_naming(err, url)
    assert "0 stories written now, 2000 left" in err, err
    assert not (out / "train.jsonl").exists()  # nothing produced: no corpus that looks finished


# rows 4 and 21: a judged run keeps its results when a later judge reaches nothing
@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> Path:
    run = make_run(tmp_path_factory.mktemp("judged"), steps=(10,), stories=2)
    with running(FakeConfig()) as server:
        assert main(["-q", "judge", str(run), "--base-url", server.base_url, "--model", "j"]) == 0
    return run


def test_judge_on_an_endpoint_that_never_answers_keeps_the_earlier_result(judged, bad_endpoint, tmp_path, capsys):
    url, _ = bad_endpoint
    run = shutil.copytree(judged, tmp_path / "r")
    before = _files(run)
    code, err = call(["judge", str(run), "--base-url", url, "--model", "other", "--timeout", "0.5"], capsys)
    assert code == 2, err
    _one_line_naming(err, url)
    assert "no judge result written" in err, err
    after = _files(run)
    assert {k: v for k, v in after.items() if k != "eval/judge_cache.jsonl"} == \
        {k: v for k, v in before.items() if k != "eval/judge_cache.jsonl"}


def test_a_result_with_no_verdict_never_replaces_one_with_verdicts(judged, tmp_path):
    from tinyscale.evaluate.judge import _keep_earlier

    path = shutil.copytree(judged, tmp_path / "r") / "eval" / "judge_10.json"
    empty = {"student": {"n": 0}}
    with pytest.raises(UserError, match="not replaced"):
        _keep_earlier(path, empty, type("E", (), {"base_url": DEAD})())
    _keep_earlier(path, {"student": {"n": 3}}, None)  # a result with verdicts may replace it


# the other half of the rule: after the endpoint answered, FAILS_IN_A_ROW failed requests stop it
def test_requests_failing_in_a_row_stop_the_session_with_the_last_error():
    from tinyscale.endpoint import FAILS_IN_A_ROW, CallStats, Endpoint, EndpointDown, RequestFailed, chat

    class Client:  # every reply is a body that is not JSON
        class chat:  # noqa: N801 - the client's own attribute names
            class completions:  # noqa: N801
                @staticmethod
                async def create(**kw):
                    raise ValueError("Expecting value: line 1 column 1 (char 0)")

    ep = Endpoint(DEAD, "m", max_attempts=2, backoff=0.0)
    stats = CallStats(answered=3)

    async def ask() -> None:
        await chat(Client, ep, [{"role": "user", "content": "x"}], stats, random.Random(0))

    for _ in range(FAILS_IN_A_ROW - 1):
        with pytest.raises(RequestFailed):
            asyncio.run(ask())
    with pytest.raises(EndpointDown, match=rf"{FAILS_IN_A_ROW} requests in a row failed.*last error: malformed"):
        asyncio.run(ask())


# row 7: two writers of one output folder (or run) at once
def test_data_llm_and_judge_take_the_folder_lock(judged, tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "x"
    out.mkdir()
    run = shutil.copytree(judged, tmp_path / "r")
    with running(FakeConfig()) as server:
        url = server.base_url
        for folder, argv in ((out, ["data", "llm", "--base-url", url, "--model", "m", "--stories", "3", "--out",
                                    str(out)]),
                             (run, ["judge", str(run), "--base-url", url, "--model", "other"])):
            with FileLock(str(folder / ".lock"), timeout=0):
                code, err = call(argv, capsys)
            assert code == 2 and "another tinyscale process" in err and len(err.splitlines()) == 1, err
        assert server.state.counts["requests"] == 0  # refused before anything was asked (or paid for)


# row 25: a full disk while appending names the file
def test_append_on_a_full_disk_is_one_line_naming_the_file():
    from tinyscale.fileio import append_jsonl

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with pytest.raises(UserError, match="/dev/full: cannot write"):
        append_jsonl("/dev/full", {"a": 1})


# point 6: any exception that escapes a verb is one line and a hint; --debug shows the traceback
def test_an_unexpected_error_is_one_line_with_a_hint(monkeypatch, tmp_path, capsys):
    import tinyscale.data.stats as stats

    def broken(*args, **kwargs):
        raise RuntimeError("something broke\nsecond line")

    monkeypatch.setattr(stats, "corpus_stats", broken)
    code, err = call(["data", "stats", str(tmp_path)], capsys)
    assert code == 1 and err == ("tinyscale: error: RuntimeError: something broke (rerun as tinyscale --debug ... for the "
                                 "traceback)\n"), err
    with pytest.raises(RuntimeError, match="something broke"):
        main(["-q", "--debug", "data", "stats", str(tmp_path)])


# row 24: -q silences the libraries that log by themselves (the hub client's retries)
def test_quiet_silences_library_loggers(tmp_path, capsys):
    hub = logging.getLogger("huggingface_hub")
    level = hub.level
    try:
        call(["data", "stats", str(tmp_path / "none")], capsys)
        assert hub.getEffectiveLevel() >= logging.ERROR
    finally:
        hub.setLevel(level)


# row 8: the spending cap holds before each request, for data llm and judge alike
def test_max_cost_is_enforced_before_each_request(judged, tmp_path, capsys):
    import json

    run = shutil.copytree(judged, tmp_path / "r")
    with running(FakeConfig()) as server:
        url = server.base_url
        code, err = call(["data", "llm", "--base-url", url, "--model", "m", "--stories", "5", "--out",
                          str(tmp_path / "x"), "--max-cost", "0.0001", "--price-in", "1000"], capsys)
        assert code == 2 and "--max-cost 0.0001" in err and "no story written" in err, err
        code, err = call(["judge", str(run), "--base-url", url, "--model", "other", "--max-cost", "0.0001",
                          "--price-in", "1000"], capsys)
        assert code == 2 and "--max-cost 0.0001" in err and len(err.splitlines()) == 1, err
        assert server.state.counts["requests"] == 0  # nothing was sent that could break the cap
        # A cap that allows some verdicts: the worst case of each request is reserved before it is sent.
        from tinyscale.evaluate.judge import load_template

        prompt = len(load_template()) + 200  # the template and a short story: above one judge prompt
        cap = 2.5 * prompt * 1000 / 1e6
        code, err = call(["judge", str(run), "--base-url", url, "--model", "other", "--max-cost", str(cap),
                          "--price-in", "1000", "--concurrency", "4"], capsys)
        assert code == 0, err
    result = json.loads((run / "eval" / "judge_10.json").read_text())
    assert result["judge"]["stopped_by_cost"] and 0 < result["judge"]["cost_usd"] <= cap
    assert result["not_graded"] > 0


# --- incentivize: locks, failed runs, full disks (rows 5, 6, 17) -------------------------------------------

RL_FLAGS = ["--group", "2", "--prompts-per-step", "1", "--max-new-tokens", "2", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def start(tmp_path_factory) -> tuple[Path, Path]:
    """(run, prompts): a tiny random-init start (context 64) and prompts that fit it."""
    from test_incentivize import make_start_run

    return make_start_run(tmp_path_factory.mktemp("start"))


def _rl(start, out: Path, *flags: str) -> list[str]:
    run, prompts = start
    return ["incentivize", str(run), "--out", str(out), "--prompts", str(prompts), *RL_FLAGS, *flags]


# row 6: two incentivize runs, resumes or comparisons into one folder at once
def test_incentivize_and_compare_take_their_folder_lock(start, tmp_path, capsys):
    from filelock import FileLock

    rl, new, cmp = tmp_path / "rl", tmp_path / "new", tmp_path / "cmp"
    assert call(_rl(start, rl, "--steps", "1"), capsys)[0] == 0
    for folder, argv in ((rl, ["incentivize", "--resume", str(rl), "--steps", "2"]),
                         (new, _rl(start, new)),  # a new run whose folder another process has just locked
                         (cmp, _rl(start, cmp, "--compare", "--steps", "1")),
                         (cmp / start[0].name, _rl(start, cmp, "--compare", "--size-job", "--steps", "1"))):
        folder.mkdir(parents=True, exist_ok=True)
        before = _files(folder)
        with FileLock(str(folder / ".lock"), timeout=0):
            code, err = call(argv, capsys)
        assert code == 2 and "another tinyscale process" in err and len(err.splitlines()) == 1, (argv, err)
        assert folder.is_dir() and _files(folder) == before


def _disk_full(*args, **kwargs):
    """What torch.save raises when the disk fills under it (its C++ writer's message)."""
    raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                       "data/0: file write failed")


# rows 5 and 17: a run that fails (a full disk at its first checkpoint, a reward that breaks) leaves no
# new folder behind, and a failed resume leaves the run at its last good checkpoint
def test_a_failed_checkpoint_is_one_line_and_leaves_no_new_run(start, tmp_path, capsys, monkeypatch):
    import torch

    from tinyscale.runs import list_checkpoints, state_path, weights_path

    rl = tmp_path / "rl"
    assert call(_rl(start, rl, "--steps", "1"), capsys)[0] == 0
    checkpoints = _files(rl / "checkpoints")
    monkeypatch.setattr(torch, "save", _disk_full)
    code, err = call(_rl(start, tmp_path / "new", "--steps", "1"), capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "step_00000001.state.pt: cannot write checkpoint (PytorchStreamWriter failed writing file" in err, err
    assert not (tmp_path / "new").exists()  # so the same --out works next time
    shards = json.loads((start[0] / "run.json").read_text())["data"]["dir"]
    code, err = call(["train", "--data", shards, "--out", str(tmp_path / "t"), "--preset", "100K", "--batch", "2",
                      "--seq-len", "32", "--tokens", "64", "--threads", "1"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "cannot write checkpoint" in err, err
    assert not (tmp_path / "t").exists()
    code, err = call(["incentivize", "--resume", str(rl), "--steps", "2"], capsys)
    assert code == 2 and f"{state_path(rl, 2)}: cannot write checkpoint" in err, err
    assert _files(rl / "checkpoints") == checkpoints and not weights_path(rl, 2).exists()  # no half checkpoint
    monkeypatch.undo()
    assert call(["incentivize", "--resume", str(rl), "--steps", "2"], capsys)[0] == 0
    assert list_checkpoints(rl)[-1] == 2


# row 17 on a real full disk (a small tmpfs, where the test may mount one)
def test_incentivize_on_a_full_disk_is_one_line_and_leaves_nothing_half_written(start, tmp_path, capsys):
    from test_reliability import _fill, _tmpfs

    with _tmpfs(tmp_path / "disk", "2m") as disk:
        for leave in (600_000, 200_000, 20_000):  # fails at a later checkpoint, the first, the run files
            _fill(disk, leave)
            out = disk / f"o{leave}"
            code, err = call(_rl(start, out, "--steps", "8", "--checkpoint-every", "1"), capsys)
            assert code == 2 and len(err.splitlines()) == 1 and str(disk) in err, (leave, err)
            left = [p.name for p in disk.rglob("*") if p.name != "filler"]
            assert not [n for n in left if n.endswith((".partial", ".tmp"))], left
            assert not out.exists() or (out / "checkpoints").is_dir(), left  # resumable or gone
            shutil.rmtree(out, ignore_errors=True)
