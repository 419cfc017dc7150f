"""Loss per skill against a hand computation, on a model whose probabilities are known."""

import math

import numpy as np
import pytest
import torch

from tinyscale.data.corpus import SKILLS
from tinyscale.evaluate.completions import cut_middle, story_bounds
from tinyscale.evaluate.loss import loss_windows, skill_losses

V = 7


class Bigram(torch.nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.randn(V, V, generator=g).log_softmax(-1))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def arrays(n: int = 101, seed: int = 1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, n).astype(np.uint16)
    skills = rng.integers(0, 4, n).astype(np.uint8)
    floor = np.where(rng.random(n) < 0.5, rng.random(n), np.nan).astype(np.float32)
    return tokens, skills, floor


def test_loss_per_skill_matches_hand_computation():
    tokens, skills, floor = arrays()
    model = Bigram()
    data = loss_windows("val", tokens, skills, floor, seq_len=10, max_tokens=10_000)
    out = skill_losses(model, data, batch_size=3)

    # By hand: windows of 10 predictions cover tokens 1..100 (all of them for n = 101).
    loss = {s: [] for s in range(4)}
    excess = {s: [] for s in range(4)}
    for t in range(1, 101):
        nll = -model.table[tokens[t - 1], tokens[t]].item()
        loss[skills[t]].append(nll)
        if not math.isnan(floor[t]):
            excess[skills[t]].append(nll - float(floor[t]))
    assert out["tokens"] == 100
    everything = [x for v in loss.values() for x in v]
    assert out["loss"] == pytest.approx(sum(everything) / 100, abs=1e-6)
    assert out["ppl"] == pytest.approx(math.exp(out["loss"]), rel=1e-9)
    for sid in range(4):
        row = out["skills"][SKILLS[sid]]
        assert row["tokens"] == len(loss[sid])
        assert row["loss"] == pytest.approx(sum(loss[sid]) / len(loss[sid]), abs=1e-6)
        assert row["floor_tokens"] == len(excess[sid])
        assert row["excess"] == pytest.approx(sum(excess[sid]) / len(excess[sid]), abs=1e-6)
    assert set(out["skills"]) == {SKILLS[s] for s in range(4)}


def test_max_tokens_takes_windows_spread_over_the_split():
    tokens, skills, floor = arrays(n=1001)
    data = loss_windows("val", tokens, skills, floor, seq_len=10, max_tokens=50, min_skill_tokens=0)
    assert data.x.shape == (5, 10) and data.n_tokens == 50
    # Each row is a real window of the split, and the windows reach its end, not just its start.
    first, last = data.x[0].numpy(), data.x[-1].numpy()
    assert np.array_equal(first, tokens[:10])
    assert np.array_equal(last, tokens[990:1000])
    assert torch.equal(data.y[:, :-1], data.x[:, 1:])


def test_baseline_and_gap_match_hand_computation():
    tokens, skills, floor = arrays()
    base = np.where(np.random.default_rng(3).random(len(tokens)) < 0.7, 2.0, np.nan).astype(np.float32)
    model = Bigram()
    data = loss_windows("val", tokens, skills, floor, seq_len=10, max_tokens=10_000, base=base)
    out = skill_losses(model, data)
    for sid in range(4):
        nll = [(-model.table[tokens[t - 1], tokens[t]].item(), float(base[t])) for t in range(1, 101)
               if skills[t] == sid and not math.isnan(base[t])]
        row = out["skills"][SKILLS[sid]]
        assert row["baseline_tokens"] == len(nll) and row["baseline"] == pytest.approx(2.0)
        assert row["gap"] == pytest.approx(sum(a - b for a, b in nll) / len(nll), abs=1e-6)
        # Bootstrap intervals over windows bracket the estimate.
        assert row["gap_lo"] <= row["gap"] <= row["gap_hi"] and row["gap_se"] > 0
        assert row["loss_lo"] <= row["loss"] <= row["loss_hi"]


def test_the_corpus_trigram_loss_per_skill_matches_hand_computation():
    """The trigram's surprisal on the windows' targets, per skill, over the tokens with a baseline
    where the skill has any; a window's first target (one token of context) is left out."""
    from tinyscale.data.ngram import Trigram
    from tinyscale.evaluate.loss import trigram_levels

    tokens, skills, floor = arrays()
    base = np.where(skills == 1, 2.0, np.nan).astype(np.float32)  # only skill 1 has a baseline
    base[::2] = np.nan  # and only on some of its tokens
    trigram = Trigram(np.random.default_rng(5).integers(0, V, 500), V)
    data = loss_windows("val", tokens, skills, floor, seq_len=10, max_tokens=10_000, base=base)
    out = trigram_levels(data, trigram)
    surprisal = trigram.surprisal(tokens)  # the windows tile the split: the same contexts...
    firsts = set(range(1, 101, 10))  # ...except each window's first target
    for sid in range(4):
        ts = [t for t in range(1, 101) if skills[t] == sid and t not in firsts
              and (sid != 1 or not math.isnan(base[t]))]
        row = out[SKILLS[sid]]
        assert row["trigram"] == pytest.approx(np.mean([surprisal[t] for t in ts]), abs=1e-9)
        # its excess over the floor, on the tokens whose floor is known, with an error over windows
        on_floor = [t for t in range(1, 101) if skills[t] == sid and t not in firsts and not math.isnan(floor[t])]
        assert row["trigram_excess"] == pytest.approx(np.mean([surprisal[t] - floor[t] for t in on_floor]), abs=1e-6)
        assert row["trigram_excess_se"] > 0


def test_rare_skills_get_enough_tokens_and_the_overall_loss_is_reweighted():
    rng = np.random.default_rng(4)
    n = 50_001
    tokens = rng.integers(0, V, n).astype(np.uint16)
    skills = np.where(rng.random(n) < 0.01, 2, 0).astype(np.uint8)  # 1% "fact"
    floor = np.full(n, np.nan, np.float32)
    plain = loss_windows("val", tokens, skills, floor, seq_len=20, max_tokens=2000, min_skill_tokens=0)
    assert int((plain.skill == 2).sum()) < 100
    data = loss_windows("val", tokens, skills, floor, seq_len=20, max_tokens=2000, min_skill_tokens=300)
    assert int((data.skill == 2).sum()) >= 300
    # The same windows every time, and the evenly spaced ones are all still there.
    again = loss_windows("val", tokens, skills, floor, seq_len=20, max_tokens=2000, min_skill_tokens=300)
    assert torch.equal(data.x, again.x)
    assert {tuple(r) for r in plain.x.tolist()} <= {tuple(r) for r in data.x.tolist()}
    out = skill_losses(Bigram(), data)
    share = float(np.mean(skills[1:] == 2))
    expected = (1 - share) * out["skills"]["other"]["loss"] + share * out["skills"]["fact"]["loss"]
    assert out["loss"] == pytest.approx(expected, abs=1e-9)


def test_short_split_is_one_shorter_window():
    tokens, skills, floor = arrays(n=6)
    data = loss_windows("val", tokens, skills, floor, seq_len=64, max_tokens=1000)
    assert data.x.shape == (1, 5)


def test_no_floor_gives_no_excess():
    tokens, skills, _ = arrays()
    data = loss_windows("val", tokens, np.zeros_like(skills), np.full(len(tokens), np.nan, np.float32), 10, 1000)
    out = skill_losses(Bigram(), data)
    assert out["excess"] is None and out["floor_tokens"] == 0 and list(out["skills"]) == ["other"]


def test_cut_middle_splits_at_a_sentence_end():
    text = 'Tom had a ball. He said, "Look at it!" Mia smiled at him. They played all day. The end.'
    prompt, ending = cut_middle(text)
    assert prompt + ending == text
    assert prompt.endswith(('.', '!', '"')) and ending.startswith(" ")
    assert abs(len(prompt) - len(text) / 2) < 20
    assert cut_middle("Just one sentence.") is None


def test_story_bounds_between_end_of_text_tokens():
    tokens = np.array([0, 5, 6, 0, 7, 0, 0, 8, 9, 9, 0])
    assert story_bounds(tokens, 0) == [(1, 3), (4, 5), (7, 10)]
