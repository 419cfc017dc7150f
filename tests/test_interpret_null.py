"""Neuron significance that random weights fail: the within-token permutation and the twin null."""

import numpy as np
import pytest
import torch

from tinyscale.interpret.neurons import (
    StreamingTopK,
    TagCounts,
    TokenStrata,
    against_twin,
    label_neurons,
    twin_p_values,
)
from tinyscale.interpret.one_model import Options, analyze_model
from tinyscale.interpret.tags import BIT
from tinyscale.model import Transformer, model_config

NAME, FIRST = BIT["class:name"], BIT["role:first_mention"]


def _stream(acts_fn, tokens=30_000, seed=0, k=20):
    """Token ids 0..49 at positions 1..99; id 5 is a name, first mentioned (a context tag) on a
    third of its occurrences. Neurons' activations come from acts_fn(ids, tags, rng)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50, tokens)
    pos = rng.integers(1, 100, tokens)
    tags = np.where(ids == 5, NAME, BIT["class:function"]).astype(np.int64)
    tags[(ids == 5) & (rng.random(tokens) < 1 / 3)] |= FIRST
    acts = acts_fn(ids, tags, rng)
    top, counts, strata = StreamingTopK(acts.shape[1], k), TagCounts(reservoir=5000, seed=seed), TokenStrata()
    for s in range(0, tokens, 1000):
        sl = slice(s, s + 1000)
        top.update(torch.from_numpy(acts[sl]).float(), torch.from_numpy(pos[sl]), torch.from_numpy(tags[sl]),
                   torch.from_numpy(ids[sl]))
        counts.add(tags[sl])
        strata.add(ids[sl], pos[sl], tags[sl])
    return label_neurons(top, counts, draws=500, strata=strata, positions=top.keys.numpy(), perm_draws=500)


def _planted(ids, tags, rng):
    """Neuron 0 fires on first mentions of the name (context), neuron 1 on every occurrence of
    the name (token identity), neuron 2 at random."""
    noise = rng.random((len(ids), 3))
    return np.stack([((tags & FIRST) != 0) * 5.0, (ids == 5) * 5.0, np.zeros(len(ids))], 1) + noise


def test_within_token_test_keeps_context_roles_and_rejects_token_detectors():
    lab = _stream(_planted)
    # The token-blind test calls both the role neuron and the token detector significant.
    assert lab.significant_iid[0] and lab.significant_iid[1]
    # Within the token: the role survives (every top-k name is a first mention, a third would be
    # expected), the token detector does not (its tags are those of any occurrence of the name).
    assert lab.context_tag[0] == "role:first_mention" and lab.z[0] > 5
    assert lab.p_perm[0] < 0.01 and lab.significant_perm[0]
    assert lab.p_perm[1] > 0.05 and not lab.significant_perm[1] and not lab.significant_perm[2]


def test_against_the_twin():
    model = _stream(_planted)
    twin = _stream(lambda ids, tags, rng: np.stack([(ids == j % 50) * 5.0 for j in range(100)], 1)
                   + rng.random((len(ids), 100)), seed=1)  # 100 token detectors, no roles
    against_twin(model, twin.z)
    assert model.p_value[0] == pytest.approx(1 / 101) and model.significant[0]  # beyond every twin neuron
    assert not model.significant[1:].any()
    assert twin_p_values(np.array([-1.0, 10.0]), np.array([0.0, 1.0, 2.0])).tolist() == [1.0, 0.25]


def test_a_random_init_model_has_no_more_significant_neurons_than_the_nominal_rate(tmp_path):
    from tinyscale.data.tokenize import load_tokenizer, tokenize_corpus
    from tinyscale.data.world import write_world_corpus
    from tinyscale.generate import eot_id_of

    write_world_corpus(tmp_path / "corpus", stories=160, seed=3, val_fraction=0.5)
    tokenize_corpus(tmp_path / "corpus", tmp_path / "shards", vocab_size=300, workers=1)
    tok = load_tokenizer(tmp_path / "shards" / "tokenizer.json")
    cfg = model_config(vocab_size=tok.get_vocab_size(), max_seq_len=256, family="llama", d_model=32, n_layers=2,
                       n_heads=2)
    torch.manual_seed(1)  # the control is seed 0: a different random model of the same shape
    data = analyze_model(Transformer(cfg).eval(), tmp_path / "corpus" / "val.jsonl", tok, eot_id_of(tok),
                         Options(stories=80, top_k=20, ablate_stories=0, layers=[1]))
    summary = data["model"]["summary"]
    n = summary["neurons"]
    assert n == cfg.ffn_dim  # layer 1, against the twin's neurons of both layers
    assert summary["significant_iid"] > n / 2  # the token-blind test passes most random neurons
    assert summary["significant"] <= 0.05 * n  # the new test: at most the nominal rate
    assert data["control"]["summary"]["significant"] is None  # a twin is not tested against itself
    p = np.array([r["p_value"] for r in data["model"]["neurons"]])
    # p-values of a null model are not piled up near 0 (one twin draw: ~9% here, not exactly 5%).
    assert np.mean(p < 0.05) < 0.15
