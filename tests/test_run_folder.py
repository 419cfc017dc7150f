"""A run's folder (training/run_folder.py): hidden until its first checkpoint, published then, locked
while it is written; through kill -9 (train and incentivize as real subprocesses) a rerun into the
same folder works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _tiny_shards import make_shards
from tinyscale.cli import main
from tinyscale.errors import UserError
from tinyscale.runs import list_checkpoints
from tinyscale.training.checkpoints import Retention
from tinyscale.training.run_folder import check_new_out, open_run

TRAIN = ["--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32", "--batch", "8",
         "--threads", "1", "--dtype", "fp32", "--eval-every", "0", "--log-every", "1"]
LONG = ["--tokens", str(100_000 * 8 * 32)]  # far more steps than the test waits for


def _spawn(argv: list[str], pythonpath: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.Popen([sys.executable, "-m", "tinyscale.cli", "-q", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stages(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.partial"))


def _steps(folder: Path) -> list[int]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            continue
    return [r["step"] for r in rows if "loss" in r]


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited early: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _kill_after_step_1(proc: subprocess.Popen, out: Path) -> Path:
    """kill -9 the run once its step-1 metrics line is written; return its hidden folder."""
    _wait_for(lambda: any(1 in _steps(s) for s in _stages(out)), proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    (stage,) = _stages(out)
    return stage


def _call(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["-q", *argv])
    return code, capsys.readouterr().err


def _check_killed_before_first_checkpoint(out: Path, stage: Path, pid: int, resume: list[str], capsys) -> None:
    assert not out.exists()  # nothing visible: the run never reached a checkpoint
    assert stage.name.startswith(f".{out.name}.{pid}.")
    assert (stage / "run.json").is_file() and 1 in _steps(stage) and not list_checkpoints(stage)
    code, err = _call(resume, capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "never reached its first checkpoint" in err, err


@pytest.mark.slow
def test_train_killed_at_step_1_leaves_a_hidden_folder_and_the_rerun_starts_clean(tmp_path, capsys):
    shards = make_shards(tmp_path / "data")
    out = tmp_path / "r"
    new = ["train", "--data", str(shards), "--out", str(out), *TRAIN]
    first = _spawn([*new, *LONG, "--checkpoint-every", "100000"])
    try:
        _wait_for(lambda: any(1 in _steps(s) for s in _stages(out)), first)
        for argv in ([*new, "--tokens", "256"], ["train", "--resume", str(out)]):  # meanwhile, into r
            code, err = _call(argv, capsys)
            assert code == 2 and "another tinyscale process" in err and len(err.splitlines()) == 1, err
        stage = _kill_after_step_1(first, out)
    finally:
        first.kill()
        first.wait()
    _check_killed_before_first_checkpoint(out, stage, first.pid, ["train", "--resume", str(out)], capsys)

    # The same --out again: the killed run's hidden folder goes, and the run appears at its first
    # checkpoint (step 2), locked while it trains; killed then, it resumes from that checkpoint.
    second = _spawn([*new, *LONG, "--checkpoint-every", "2"])
    try:
        _wait_for(lambda: bool(list_checkpoints(out)), second)
        assert _stages(out) == []  # published: the killed run's folder and its own hidden one are gone
        code, err = _call(["eval", str(out)], capsys)
        assert code == 2 and "another tinyscale process" in err, err
    finally:
        second.kill()
        second.wait()
    reached = list_checkpoints(out)[-1]  # the run went on training while the test looked
    assert list_checkpoints(out)[0] == 2 and reached % 2 == 0
    assert _call(["train", "--resume", str(out), "--tokens", str((reached + 4) * 8 * 32)], capsys)[0] == 0
    assert list_checkpoints(out)[-1] == reached + 4 and _steps(out) == list(range(1, reached + 5))  # one clean run


@pytest.mark.slow
def test_incentivize_killed_at_step_1_leaves_a_hidden_folder_and_the_rerun_starts_clean(tmp_path, capsys,
                                                                                        monkeypatch):
    from test_incentivize import make_start_run

    run, prompts = make_start_run(tmp_path / "start")
    (tmp_path / "ball_reward.py").write_text(
        "def pays(prompt, completion, truth):\n    return 1.0 if truth['want'] in completion else 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "rl"
    new = ["incentivize", str(run), "--out", str(out), "--prompts", str(prompts), "--reward", "ball_reward:pays",
           "--group", "4", "--prompts-per-step", "2", "--max-new-tokens", "3", "--threads", "1", "--device", "cpu",
           "--log-every", "1"]
    first = _spawn([*new, "--steps", "5000", "--checkpoint-every", "100000"], pythonpath=tmp_path)
    try:
        stage = _kill_after_step_1(first, out)
    finally:
        first.kill()
        first.wait()
    _check_killed_before_first_checkpoint(out, stage, first.pid, ["incentivize", "--resume", str(out)], capsys)

    assert _call([*new, "--steps", "2"], capsys)[0] == 0  # the same --out again
    assert _stages(out) == [] and list_checkpoints(out) == [2] and _steps(out) == [1, 2]


# --- the manager itself, in this process ----------------------------------------------------------------


def _held(folder: Path) -> bool:
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / ".lock"), timeout=0)
    try:  # another open file description: refused while this process holds the run's lock too
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def _model_and_optimizer():
    import torch

    model = torch.nn.Linear(2, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("existing", [False, True])  # an empty --out made beforehand is used as well
def test_a_new_run_appears_locked_at_its_first_checkpoint(tmp_path, existing):
    import torch

    out = tmp_path / "r"
    if existing:
        out.mkdir()
    model, opt = _model_and_optimizer()
    with open_run(out, new=True, retention=Retention(every=5)) as run:
        assert not out.exists() and run.path.name.startswith(".r.") and _held(run.path)
        run.begin({"config": {}}, tmp_path / "no-tokenizer.json", 0)
        run.log({"step": 1, "loss": 1.0})
        run.save(1, model, opt, torch.device("cpu"), tokens=10, elapsed_s=0.5)
        assert run.path == out and _stages(out) == [] and _held(out)
        assert list_checkpoints(out) == [1] and _steps(out) == [1]
    assert not _held(out)
    model2, opt2 = _model_and_optimizer()
    with open_run(out, new=False, retention=Retention(every=5)) as run:
        step, state = run.load_newest(model2, opt2, torch.device("cpu"))
    assert step == 1 and state["tokens"] == 10 and state["elapsed_s"] == 0.5
    assert torch.equal(model2.weight, model.weight)


def test_a_new_run_that_fails_leaves_nothing_before_its_first_checkpoint_and_its_checkpoint_after(tmp_path):
    import torch

    out = tmp_path / "r"
    model, opt = _model_and_optimizer()
    with pytest.raises(KeyboardInterrupt), open_run(out, new=True, retention=Retention(every=5)) as run:
        run.log({"step": 1, "loss": 1.0})
        raise KeyboardInterrupt
    assert sorted(tmp_path.iterdir()) == []
    with pytest.raises(UserError), open_run(out, new=True, retention=Retention(every=5)) as run:
        run.save(1, model, opt, torch.device("cpu"), tokens=10, elapsed_s=0.5)
        raise UserError("diverged at step 2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"] and list_checkpoints(out) == [1]


def test_the_current_folder_is_no_new_run_folder(tmp_path, monkeypatch):
    (tmp_path / "r").mkdir()
    monkeypatch.chdir(tmp_path / "r")
    for out in (".", "../r"):
        with pytest.raises(UserError, match="current folder"):
            check_new_out(Path(out))
