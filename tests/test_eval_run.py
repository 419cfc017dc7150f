"""End to end: evaluate a tiny run folder built by hand (shards, two checkpoints), via the API and the CLI."""

import json
import shutil

import pytest
import torch

from _tiny_shards import make_shards
from tinyscale.cli import main
from tinyscale.errors import UserError
from tinyscale.evaluate import evaluate_run, load_eval


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from safetensors.torch import save_model

    from tinyscale.config import ModelConfig
    from tinyscale.data.shards import ShardSet
    from tinyscale.model import Transformer

    root = tmp_path_factory.mktemp("evalrun")
    shards = ShardSet.open(make_shards(root, stories=60))
    cfg = ModelConfig(vocab_size=shards.vocab_size, d_model=32, n_layers=2, n_heads=2, max_seq_len=128)
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    for step in (0, 10):
        torch.manual_seed(step)
        save_model(Transformer(cfg), str(run / "checkpoints" / f"step_{step:08d}.safetensors"))
        torch.save({}, run / "checkpoints" / f"step_{step:08d}.state.pt")
    shutil.copy(shards.dir / "tokenizer.json", run / "tokenizer.json")
    info = {"config": {"data": str(shards.dir), "seq_len": 128}, "model": cfg.model_dump(),
            "data": {"dir": str(shards.dir), "eot_id": shards.eot_id, "vocab_size": shards.vocab_size}}
    (run / "run.json").write_text(json.dumps(info))
    return run


def small_suite(tmp_path):
    path = tmp_path / "mini.jsonl"
    rows = [{"id": f"m{i}", "prompt": "Once upon a time, Lily had a red", "answer": a, "wrong": w, "kind": k,
             "style": "novel"} for i, (a, w, k) in enumerate([("ball", ["kite", "cake"], "thing"),
                                                               ("kite", ["ball", "boat"], "thing"),
                                                               ("cat", ["dog", "tree"], "animal")])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def numbers(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def test_evaluate_all_checkpoints_twice_gives_identical_numbers(run_dir, tmp_path):
    kwargs = dict(checkpoints="all", suites=["grammar", str(small_suite(tmp_path))], device="cpu",
                  max_tokens=256, completions=2, samples=2)
    first = evaluate_run(run_dir, **kwargs)
    again = evaluate_run(run_dir, **kwargs)
    assert sorted(first) == [0, 10]
    for step in first:
        assert numbers(first[step]) == numbers(again[step])
    # different weights, different numbers: the weights really were swapped between checkpoints
    assert first[0]["loss"]["val"]["loss"] != first[10]["loss"]["val"]["loss"]

    r = first[10]
    val = r["loss"]["val"]
    # 256 evenly spaced tokens, then more windows until each labeled skill has its minimum (the run's
    # eval_min_skill_tokens, 2000 by default: here the whole tiny split).
    assert val["tokens"] >= 256 and sum(s["tokens"] for s in val["skills"].values()) == val["tokens"]
    # The name's baseline (log 6) sits on its first token, 0 on the others, as the floor does.
    tracking = val["skills"]["tracking"]
    assert 0 < tracking["baseline"] <= 1.7918 + 1e-4 and tracking["baseline_tokens"] == tracking["tokens"]
    assert tracking["gap_lo"] <= tracking["gap"] <= tracking["gap_hi"]
    assert {"tracking", "free", "other"} <= set(val["skills"])
    assert tracking["floor"] == 0.0 and val["skills"]["free"]["floor"] > 0
    assert set(r["probes"]) == {"grammar", "mini"}
    mini = r["probes"]["mini"]
    assert mini["n"] == 3 and mini["chance"] == pytest.approx(1 / 3) and set(mini["by_kind"]) == {"thing", "animal"}
    assert 0 <= mini["mc"]["lo"] <= mini["mc"]["acc"] <= mini["mc"]["hi"] <= 1
    assert len(r["completions"]) == 2
    for c in r["completions"]:
        assert len(c["completions"]) == 2 and c["ending"].startswith(" ") and c["prompt"]

    on_disk = load_eval(run_dir)
    assert sorted(on_disk) == [0, 10]
    assert on_disk[10]["probes"]["mini"]["items"] == json.loads(json.dumps(r["probes"]["mini"]["items"]))
    assert not [p for p in (run_dir / "eval").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_loss_per_skill_matches_a_hand_computation(run_dir):
    """With a budget above the split, eval reads every whole window of the validation split; its
    numbers must be what the checkpoint's own cross-entropy gives on those windows, per skill."""
    import numpy as np
    import torch.nn.functional as F

    from tinyscale.data.corpus import SKILLS
    from tinyscale.data.shards import ShardSet
    from tinyscale.runs import load_model

    (result,) = evaluate_run(run_dir, checkpoints="last", suites=[], device="cpu", max_tokens=10**6,
                             completions=0).values()
    val = result["loss"]["val"]
    shards = ShardSet.open(json.loads((run_dir / "run.json").read_text())["data"]["dir"])
    tokens, skills = np.asarray(shards.tokens("val"), np.int64), np.asarray(shards.skills("val"))
    floor, base = np.asarray(shards.floor("val"), np.float64), np.asarray(shards.base("val"), np.float64)
    seq = 128  # the run's seq_len
    model, _ = load_model(run_dir, 10)
    losses, targets = [], []
    with torch.no_grad():
        for s in range(0, len(tokens) - seq, seq):  # consecutive windows; a tail shorter than one is left out
            logits = model(torch.from_numpy(tokens[s:s + seq])[None])[0].float()
            y = torch.from_numpy(tokens[s + 1:s + seq + 1])
            losses.append(F.cross_entropy(logits, y, reduction="none").double().numpy())
            targets.append(np.arange(s + 1, s + seq + 1))
    ce, t = np.concatenate(losses), np.concatenate(targets)
    assert val["tokens"] == len(ce) == (len(tokens) - 1) // seq * seq
    tracking = skills[t] == SKILLS.index("tracking")
    known = tracking & ~np.isnan(base[t])
    expect = {"loss": ce[tracking].mean(), "baseline": base[t][known].mean(),
              "gap": (ce[known] - base[t][known]).mean(), "excess": (ce - floor[t])[tracking].mean()}
    got = val["skills"]["tracking"]
    assert got["tokens"] == int(tracking.sum()) > 0 and got["baseline_tokens"] == int(known.sum()) > 0
    for key, value in expect.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # The overall loss weights each skill's mean by its share of the split's predicted tokens.
    share = np.bincount(skills[1:], minlength=len(SKILLS)) / (len(skills) - 1)
    present = np.flatnonzero(share)
    by_skill = np.array([ce[skills[t] == k].mean() for k in present])
    assert val["loss"] == pytest.approx(float(share[present] @ by_skill), rel=1e-5)


def test_cli_prints_table_and_writes_result(run_dir, tmp_path, capsys):
    code = main(["-q", "eval", str(run_dir), "--checkpoints", "0", "--suite", str(small_suite(tmp_path)),
                 "--completions", "1", "--samples", "1", "--max-tokens", "128", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert "loss per skill" in out and "tracking" in out and "mini" in out
    assert (run_dir / "eval" / "0.json").is_file()


@pytest.mark.parametrize("args, problem", [
    (["--checkpoints", "5"], "no checkpoint at step(s) 5"),
    (["--checkpoints", "x"], "expected all, last or steps"),
    (["--suite", "nonsense"], "not a built-in suite"),
    (["--completions", "-1"], "--completions"),
])
def test_cli_bad_input_is_one_line_exit_2(run_dir, capsys, args, problem):
    assert main(["-q", "eval", str(run_dir), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1


def test_bad_suite_line_reported_through_cli(run_dir, tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "p", "answer": "x", "wrong": [], "kind": "k",
                                "style": "world"}) + "\n")
    assert main(["-q", "eval", str(run_dir), "--suite", str(path), "--device", "cpu"]) == 2
    assert f"{path}:1: field 'wrong'" in capsys.readouterr().err


def test_missing_run_and_empty_eval(tmp_path):
    with pytest.raises(UserError, match="run folder not found"):
        evaluate_run(tmp_path / "nope")
    assert load_eval(tmp_path) == {}


def test_tables_to_a_file_or_pipe_keep_their_headers(capsys, monkeypatch):
    """Redirected (`tinyscale eval RUN > eval.txt`, a sweep's logs), a table is printed at its natural
    width up to progress.WIDE_TABLE columns, its headers wrapped past that, never cut to "repe…"
    as at rich's default 80 columns."""
    from rich.table import Table

    from tinyscale.progress import WIDE_TABLE, print_product

    monkeypatch.delenv("COLUMNS", raising=False)
    names = ["facts", "reasoning", "tracking", "grammar", "repeat", "repeat_ood", "repeat_copy",
             "repeat_copy_ood", "repeat_familiar"]
    t = Table(title="accuracy")
    t.add_column("step")
    for n in names:
        t.add_column(f"{n} (chance 0.33, untrained 0.26)")
    t.add_row("100", *["0.50"] * len(names))
    print_product(t)
    out = capsys.readouterr().out
    assert "…" not in out and all(n in out for n in names)
    assert max(len(line) for line in out.splitlines()) <= WIDE_TABLE
