"""The policy-gradient loop: its objective against hand computations, learning from a reward, exact resume."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from _tiny_shards import make_shards
from tinyscale.cli import main
from tinyscale.config import ModelConfig
from tinyscale.errors import UserError
from tinyscale.fileio import write_json
from tinyscale.incentivize.policy_gradient import (
    IncentiveConfig,
    group_advantages,
    incentivize,
    kl_k3,
    policy_loss,
    resume,
)
from tinyscale.model import Transformer
from tinyscale.runs import list_checkpoints, weights_path
from tinyscale.training.checkpoints import save_checkpoint


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, -4.0], [2.0, 2.0, 2.0, 2.0]])
    a = group_advantages(r, eps=0.0 + 1e-12)
    mean, sd = -0.75, math.sqrt(((1.75) ** 2 + 0.75 ** 2 * 2 + 3.25 ** 2) / 3)  # unbiased std
    assert a[0].tolist() == pytest.approx([(x - mean) / sd for x in (1.0, 0.0, 0.0, -4.0)], rel=1e-5)
    assert a[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # a group that scored alike teaches nothing


def test_kl_term_by_hand():
    logp, ref = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.2)])
    # d = ref - logp = log(0.5): exp(d) - d - 1 = 0.5 - log 0.5 - 1
    assert kl_k3(logp, ref).tolist() == pytest.approx([0.5 - math.log(0.5) - 1, 0.0])
    assert bool((kl_k3(torch.randn(100), torch.randn(100)) >= 0).all())


def test_clipped_ratio_and_loss_by_hand():
    old = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.8, 0.5], [0.2, 0.5]]))  # ratios 1.6, 1 | 0.4, 1
    ref = new.clone()  # KL term 0
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, stats = policy_loss(new, old, ref, adv, mask, clip=0.2, kl=0.1)
    # row 0: min(1.6*1, 1.2*1)=1.2 and 1 -> mean 1.1; row 1 (one token): min(0.4*-1, 0.8*-1) = -0.8
    assert float(loss) == pytest.approx(-(1.1 + -0.8) / 2)
    assert stats["clip_frac"] == pytest.approx(2 / 3) and stats["kl"] == pytest.approx(0.0)
    # Gradient flows only where the ratio is not clipped: the clipped tokens give d loss / d logp = 0.
    new.requires_grad_(True)
    policy_loss(new, old, ref, adv, mask, clip=0.2, kl=0.0)[0].backward()
    assert new.grad[0, 0] == 0 and new.grad[1, 0] == 0 and new.grad[0, 1] == pytest.approx(-0.25)
    # The KL penalty adds beta * k3 per token, averaged like the surrogate.
    far = torch.log(torch.tensor([[0.25, 0.25], [0.25, 0.25]]))
    l0, _ = policy_loss(old, old, old, torch.zeros(2), mask, 0.2, 0.1)
    l1, s1 = policy_loss(old, old, far, torch.zeros(2), mask, 0.2, 0.1)
    assert float(l0) == 0.0 and float(l1) == pytest.approx(0.1 * (0.5 - math.log(0.5) - 1))


@pytest.fixture(scope="module")
def start_run(tmp_path_factory):
    return make_start_run(tmp_path_factory.mktemp("start"))


def make_start_run(root):
    """(run, prompts file): a randomly initialized tiny model as a run folder (what `train` leaves
    behind, context 64) and four short prompts whose reward pays for the word "upon"."""
    shards = make_shards(root, stories=120)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(shards / "tokenizer.json")).get_vocab_size()
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, max_seq_len=64)
    torch.manual_seed(0)
    model = Transformer(cfg)
    run = root / "run"
    write_json(run / "run.json", {"model": cfg.model_dump(), "data": {"dir": str(shards)}})
    shutil.copy(shards / "tokenizer.json", run / "tokenizer.json")
    save_checkpoint(run, 0, model, {"step": 0})
    prompts = root / "prompts.jsonl"
    with open(prompts, "w") as f:
        for name in ("Lily", "Tom", "Ben", "Mia"):
            f.write(json.dumps({"prompt": f"Once upon a time, {name} had a", "truth": {"want": "upon"},
                                "reference": " ball"}) + "\n")
    return run, prompts


def _cfg(start_run, **kw):
    run, prompts = start_run
    base = dict(start=str(run), prompts=str(prompts), reward="ball_reward:pays", steps=6, group=8,
                prompts_per_step=2, max_new_tokens=4, lr=1e-2, kl=0.0, threads=1, device="cpu",
                checkpoint_every=3)
    return IncentiveConfig(**{**base, **kw})


@pytest.fixture
def ball_reward(tmp_path, monkeypatch):
    (tmp_path / "ball_reward.py").write_text(
        "def pays(prompt, completion, truth):\n    return 1.0 if truth['want'] in completion else 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def _metrics(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_reward_for_one_token_makes_the_policy_emit_it(start_run, ball_reward, tmp_path):
    out = tmp_path / "rl"
    incentivize(_cfg(start_run, steps=40, checkpoint_every=40), out)
    rewards = [m["reward"] for m in _metrics(out)]
    assert rewards[0] < 0.3, rewards[:5]
    assert sum(rewards[-5:]) / 5 > 0.8, rewards


def test_resume_after_a_kill_between_checkpoints_is_exact(start_run, ball_reward, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    incentivize(_cfg(start_run), whole)
    incentivize(_cfg(start_run), killed)
    # What kill -9 after step 5 leaves: checkpoint 3, metrics lines up to 5 (the last one cut).
    for p in (weights_path(killed, 6), weights_path(killed, 6).with_suffix("").with_suffix(".state.pt")):
        p.unlink()
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:5]) + '\n{"step": 6, "tok')
    assert list_checkpoints(killed) == [3]
    resume(killed)
    assert list_checkpoints(killed)[-1] == 6
    a, b = load_file(weights_path(whole, 6)), load_file(weights_path(killed, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in m.items() if "per_s" not in k and k != "elapsed_s"} for m in _metrics(whole)]
    assert strip == [{k: v for k, v in m.items() if "per_s" not in k and k != "elapsed_s"} for m in _metrics(killed)]


def test_teach_lowers_the_loss_of_references_and_counts_tokens(start_run, tmp_path):
    out = tmp_path / "teach"
    incentivize(_cfg(start_run, objective="teach", steps=100, tokens=200, lr=3e-3), out)
    m = _metrics(out)
    assert m[-1]["tokens"] >= 200 and m[-2]["tokens"] < 200  # stopped by the token budget
    assert m[-1]["loss"] < m[0]["loss"]


def test_bad_input_is_one_line(start_run, tmp_path, capsys):
    run, _ = start_run
    assert main(["-q", "incentivize", str(run), "--out", str(tmp_path / "x"), "--prompts", "nope.jsonl"]) == 2
    assert "--prompts" in capsys.readouterr().err
    assert main(["-q", "incentivize", str(run), "--out", str(tmp_path / "y"), "--reward", "nomod:f",
                 "--prompts", str(start_run[1])]) == 2
    with pytest.raises(UserError, match="not an incentivize run"):
        resume(run)



def test_grouped_log_probs_and_sampling_match_the_plain_ones(start_run):
    from tinyscale.generate import generate
    from tinyscale.incentivize.policy_gradient import Answerer, completion_logps, group_logps
    from tinyscale.runs import load_model, load_tokenizer

    run, _ = start_run
    model, _ = load_model(run)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (7, 12, 3)]
    groups = [[torch.randint(0, 300, (n,), generator=g).tolist() for n in lens]
              for lens in ((1, 4, 2), (3, 3, 1), (4, 2, 2))]
    flat_prompts = [p for p, grp in zip(prompts, groups, strict=True) for _ in grp]
    a, ma = completion_logps(model, flat_prompts, [c for grp in groups for c in grp], torch.device("cpu"))
    b, mb = group_logps(model, prompts, groups, torch.device("cpu"))
    assert torch.equal(ma, mb) and torch.allclose(a, b, atol=1e-5)
    # A group too long for one row of the context (64 here) is spread over rows: same values.
    long_p = [torch.randint(0, 300, (50,), generator=g).tolist()]
    long_g = [[torch.randint(0, 300, (6,), generator=g).tolist() for _ in range(5)]]
    c, _ = completion_logps(model, long_p * 5, long_g[0], torch.device("cpu"))
    d, _ = group_logps(model, long_p, long_g, torch.device("cpu"))
    assert torch.allclose(c, d, atol=1e-5)
    ans = Answerer(load_tokenizer(run), 5)
    greedy = ans.sample_group(model, prompts[1], 3, temperature=0.0, seed=0)
    plain = [ans.cut(r) for r in generate(model, [prompts[1]] * 3, 5, temperature=0.0, eot_id=ans.eot)]
    assert greedy == plain


def test_ratio_and_kl_use_log_probs_at_the_sampling_temperature(start_run, ball_reward, tmp_path, monkeypatch):
    """A fixed prompt and answer on a tiny model: the logits of a plain forward pass, divided by T and
    normalized by hand, give the ratio and k3 KL that the loop's functions compute; and the loop
    scores its rollouts at the temperature it sampled them at."""
    from tinyscale.incentivize import policy_gradient as pg

    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=16)
    old, new, ref = Transformer(cfg), Transformer(cfg), Transformer(cfg)
    prompt, answer, T = [1, 2, 3], [4, 5], 0.5

    def by_hand(model):  # log pi_T(answer token | prefix) from the logits, written out
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer[:-1]]))[0, len(prompt) - 1:].double() / T
        lse = torch.log(torch.exp(logits - logits.max(-1, keepdim=True).values).sum(-1)) + logits.max(-1).values
        return torch.stack([logits[k, t] - lse[k] for k, t in enumerate(answer)])

    hand = {name: by_hand(m) for name, m in (("old", old), ("new", new), ("ref", ref))}
    got = {name: pg.group_logps(m, [prompt], [[answer]], torch.device("cpu"), T)[0][0].detach().double()
           for name, m in (("old", old), ("new", new), ("ref", ref))}
    for name in hand:
        assert torch.allclose(got[name], hand[name], atol=1e-5), name
    untempered = pg.group_logps(new, [prompt], [[answer]], torch.device("cpu"))[0][0].double()
    assert not torch.allclose(untempered, hand["new"], atol=1e-3)  # T matters here
    ratio = torch.exp(hand["new"] - hand["old"])
    d = hand["ref"] - hand["new"]
    kl = torch.exp(d) - d - 1
    adv, clip, beta = 1.5, 0.2, 0.1
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    loss, stats = pg.policy_loss(got["new"][None], got["old"][None], got["ref"][None], torch.tensor([adv]),
                                 torch.ones(1, 2, dtype=torch.float64), clip, beta)
    assert float(loss) == pytest.approx(float((-surrogate + beta * kl).mean()), rel=1e-5)
    assert stats["kl"] == pytest.approx(float(kl.mean()), rel=1e-5)
    # The loop asks for every log-probability at its sampling temperature.
    seen = []
    plain = pg.group_logps
    monkeypatch.setattr(pg, "group_logps", lambda *a: seen.append(a[4]) or plain(*a))
    incentivize(_cfg(start_run, steps=1, temperature=0.7, updates=2), tmp_path / "t07")
    assert seen == [0.7] * 4  # reference, old policy, then one per update


def test_cli_runs_teaches_and_refuses_a_changed_resume(start_run, ball_reward, tmp_path, capsys):
    run, prompts = start_run
    common = ["--prompts", str(prompts), "--reward", "ball_reward:pays", "--group", "4", "--prompts-per-step", "2",
              "--max-new-tokens", "3", "--threads", "1", "--device", "cpu"]
    assert main(["-q", "incentivize", str(run), "--out", str(tmp_path / "rl"), "--steps", "2", *common]) == 0
    assert main(["-q", "incentivize", str(run), "--out", str(tmp_path / "t"), "--teach", "--steps", "2", *common]) == 0
    info = json.loads((tmp_path / "t" / "run.json").read_text())
    assert info["config"]["objective"] == "teach" and info["model"]["d_model"] == 32
    assert len(_metrics(tmp_path / "rl")) == 2 and list_checkpoints(tmp_path / "rl") == [2]
    assert main(["-q", "incentivize", "--resume", str(tmp_path / "rl"), "--lr", "0.5"]) == 2
    assert "--lr 0.5 differs" in capsys.readouterr().err
    assert main(["-q", "incentivize", "--resume", str(tmp_path / "rl"), "--steps", "3"]) == 0
    assert list_checkpoints(tmp_path / "rl")[-1] == 3


def test_story_val_loss_is_the_mean_token_loss_on_fixed_validation_windows(start_run):
    import numpy as np
    import torch.nn.functional as F

    from tinyscale.data.shards import ShardSet
    from tinyscale.incentivize.compare import story_val_loss
    from tinyscale.runs import load_model

    run, _ = start_run
    model, _ = load_model(run, None, "cpu")
    shards = json.loads((run / "run.json").read_text())["data"]["dir"]
    got = story_val_loss(model, shards, torch.device("cpu"), tokens=256, seq_len=32)
    assert got == story_val_loss(model, shards, torch.device("cpu"), tokens=256, seq_len=32)  # same windows
    val = np.asarray(ShardSet.open(shards).tokens("val"), dtype=np.int64)
    starts = np.linspace(0, len(val) - 33, 8).astype(np.int64)
    rows = torch.from_numpy(np.stack([val[s:s + 33] for s in starts]))
    with torch.no_grad():
        want = F.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten()).item()
    assert got == pytest.approx(want, rel=1e-5)
    assert abs(got - math.log(model.cfg.vocab_size)) < 0.5  # an untrained model: near chance


def test_learning_rate_warms_up_linearly_per_update(start_run):
    from tinyscale.incentivize.policy_gradient import _step_update

    cfg = _cfg(start_run, lr=1.0, warmup=4, grad_clip=0.0)
    layer = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(layer.parameters(), lr=123.0)
    seen = []
    for step in (-0.5, 0, 1, 3, 10):  # rl_step: two updates per step are steps -0.5 and 0 of the first
        _step_update(layer, opt, layer(torch.ones(1, 2)).sum(), cfg, step)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == [0.125, 0.25, 0.5, 1.0, 1.0]
    _step_update(layer, opt, layer(torch.ones(1, 2)).sum(), _cfg(start_run, lr=0.5, warmup=0), 0)
    assert opt.param_groups[0]["lr"] == 0.5


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags, message", [
    (["--warmup", "-1"], "--warmup"),
    (["--compare", "--parallel", "0"], "--parallel"),
    (["--compare", "--launcher", "slurm"], "--launcher"),
    (["--launcher", "local"], "go with --compare"),
    (["--unanswerable", "2"], "--unanswerable"),
    (["--prompt-count", "0"], "--prompt-count"),
    (["--grad-clip", "-1"], "--grad-clip"),
    (["--start-step", "99"], "no checkpoint at step 99"),
    (["--out-inside"], "is inside the starting run"),
    (["--out-is-start"], "is the starting run"),
    (["--compare", "--out-inside"], "is inside the starting run"),
    (["--compare", "--out-parent"], "contains the starting run"),
])
def test_bad_flags_and_outputs_fail_in_one_line_leaving_the_start_alone(start_run, tmp_path, capsys, flags, message):
    run, prompts = start_run
    before = _tree(run)
    outs = {"--out-inside": run / "rl", "--out-is-start": run, "--out-parent": run.parent}
    out = next((outs[f] for f in flags if f in outs), tmp_path / "out")
    flags = [f for f in flags if f not in outs]
    try:  # argparse's own checks exit, the library's return the code
        code = main(["-q", "incentivize", str(run), "--out", str(out), "--prompts", str(prompts), *flags])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert _tree(run) == before and not (tmp_path / "out").exists()
