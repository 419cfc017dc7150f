"""Model structures for the instruct format (structure.py): each forward pass against a reference
written from plain torch ops, one example at a time, without padding; parameter and FLOP counts
against the model itself and torch's FLOP counter; the split of examples; resume exactness."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tinyscale.cli import main
from tinyscale.config import STRUCTURES
from tinyscale.data.examples import batch, find_examples, marker_ids
from tinyscale.model import model_config
from tinyscale.structure import StructuredLM, count_structured_params, structured_flops

S, T = 6, 7


def _model(structure: str, family: str = "neo", tie: bool = True, layers: int = 2) -> StructuredLM:
    torch.manual_seed(0)
    cfg = model_config(vocab_size=40, max_seq_len=S + T, d_model=16, n_layers=layers, n_heads=2, family=family,
                       tie_embeddings=tie, structure=structure)
    m = StructuredLM(cfg).eval()
    with torch.no_grad():  # biases and norm weights away from their 0/1 init, so a swapped one shows
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    return m


# --- the reference: plain ops, one unpadded example --------------------------------------------------


def _ln(x, norm):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _attend(q, k, v, allowed, n_heads):
    """Multi-head attention written out: per head, softmax(q k^T / sqrt(hd)) v over allowed keys."""
    hd = q.shape[-1] // n_heads
    out = []
    for h in range(n_heads):
        qh, kh, vh = (t[:, h * hd:(h + 1) * hd] for t in (q, k, v))
        s = qh @ kh.T / math.sqrt(hd)
        s = s.masked_fill(~allowed, float("-inf"))
        out.append(torch.softmax(s, -1) @ vh)
    return torch.cat(out, -1)


def _self_attn(x, block, allowed, n_heads):
    xn = _ln(x, block.attn_norm)
    q, k, v = (xn @ block.attn.qkv.weight.T).chunk(3, -1)
    return x + _attend(q, k, v, allowed, n_heads) @ block.attn.proj.weight.T + block.attn.proj.bias


def _mlp(x, block):
    h = _ln(x, block.mlp_norm) @ block.mlp.fc.weight.T + block.mlp.fc.bias
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    return x + h @ block.mlp.proj.weight.T + block.mlp.proj.bias


def _embed(m, ids):
    return m.lm.tok_emb.weight[ids] + m.lm.pos_emb.weight[torch.arange(len(ids))]


def _reference(m: StructuredLM, inp: list[int], tgt: list[int]) -> torch.Tensor:
    """Logits [len(tgt), V] predicting `tgt` from `inp`, as the structure's definition says."""
    st, H = m.st, m.cfg.n_heads
    if st.cross == "none":
        seq = torch.tensor(inp + tgt[:-1])
        n = len(seq)
        allowed = torch.tensor([[j <= i or (st.bidirectional and j < len(inp)) for j in range(n)] for i in range(n)])
        x = _embed(m, seq)
        for block in m.lm.blocks:
            x = _mlp(_self_attn(x, block, allowed, H), block)
        return _ln(x, m.lm.norm)[len(inp) - 1:] @ m.lm.head.weight.T
    enc_blocks = m.enc_blocks if st.separate else m.lm.blocks
    e = _embed(m, torch.tensor(inp))
    states = []
    for block in enc_blocks:  # bidirectional over the whole input
        e = _mlp(_self_attn(e, block, torch.ones(len(inp), len(inp), dtype=torch.bool), H), block)
        states.append(_ln(e, m.enc_norm))
    dec = torch.tensor(inp[-1:] + tgt[:-1])  # the decoder starts from the input's last token
    x = _embed(m, dec)
    causal = torch.ones(len(dec), len(dec), dtype=torch.bool).tril()
    for i, block in enumerate(m.lm.blocks):
        x = _self_attn(x, block, causal, H)
        mem = states[i] if st.cross == "layerwise" else states[-1]
        c = m.cross[i]
        q = _ln(x, c.norm) @ c.attn.q.weight.T
        k, v = (mem @ c.attn.kv.weight.T).chunk(2, -1)
        x = x + _attend(q, k, v, torch.ones(len(dec), len(inp), dtype=torch.bool), H) @ c.attn.proj.weight.T \
            + c.attn.proj.bias
        x = _mlp(x, block)
    return _ln(x, m.lm.norm) @ m.lm.head.weight.T


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_forward_matches_reference(structure):
    m = _model(structure)
    rng = random.Random(1)
    # Rows with short inputs (left pads), a target that ends early (right pads), and full rows.
    rows = [(rng.choices(range(40), k=a), rng.choices(range(40), k=b)) for a, b in ((3, 7), (6, 4), (1, 7), (6, 7))]
    w = torch.zeros(len(rows), S + T, dtype=torch.long)
    valid = torch.zeros(len(rows), S + T, dtype=torch.bool)
    for r, (inp, tgt) in enumerate(rows):
        w[r, S - len(inp):S], w[r, S:S + len(tgt)] = torch.tensor(inp), torch.tensor(tgt)
        valid[r, S - len(inp):S + len(tgt)] = True
    with torch.no_grad():
        got = m(w, valid, S)
        for r, (inp, tgt) in enumerate(rows):
            ref = _reference(m, inp, tgt)
            torch.testing.assert_close(got[r, :len(tgt)], ref, atol=1e-5, rtol=1e-5)


def test_prefix_differs_from_decoder_only_through_the_input():
    """Same weights: the prefix-LM and the decoder agree on nothing but the first target token's
    prediction can differ; changing a target token never changes an earlier prediction (causal)."""
    pre, dec = _model("prefix"), _model("decoder")
    dec.load_state_dict(pre.state_dict())
    w = torch.randint(0, 40, (1, S + T))
    valid = torch.ones_like(w, dtype=torch.bool)
    with torch.no_grad():
        a, b = pre(w, valid, S), dec(w, valid, S)
        assert not torch.allclose(a, b)
        w2 = w.clone()
        w2[0, S + 3] = (w2[0, S + 3] + 1) % 40
        for m in (pre, dec, _model("encdec")):
            x, y = m(w, valid, S), m(w2, valid, S)
            torch.testing.assert_close(x[:, :4], y[:, :4])
            assert not torch.allclose(x[:, 4:], y[:, 4:])


# --- counts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("family,tie", [("neo", True), ("llama", False)])
def test_param_count_is_exact(structure, family, tie):
    m = _model(structure, family, tie)
    unique = {id(p): p.numel() for p in m.parameters()}
    assert count_structured_params(m.cfg) == sum(unique.values())
    tables = {id(m.lm.tok_emb.weight), id(m.lm.head.weight)} | ({id(m.lm.pos_emb.weight)} if m.lm.pos_emb else set())
    assert count_structured_params(m.cfg, non_embedding=True) == sum(n for i, n in unique.items() if i not in tables)


def test_param_counts_by_hand():
    """d=16, ff=64, V=40, 2 layers, LayerNorm (2d) and biases; tied head."""
    d, f, V, L = 16, 64, 40, 2
    block = 2 * 2 * d + (4 * d * d + d) + (2 * d * f + f + d)  # two norms, attention (+ out bias), MLP
    one_stack = V * d + (S + T) * d + L * block + 2 * d  # embeddings, position table, blocks, final norm
    cross = 2 * d + 4 * d * d + d  # norm, q, k/v, out projection and its bias
    want = {"decoder": one_stack, "prefix": one_stack,
            "encdec-shared-layerwise": one_stack + L * cross + 2 * d,
            "encdec-shared": one_stack + L * cross + 2 * d,
            "encdec": one_stack + L * cross + 2 * d + L * block}
    for structure, n in want.items():
        assert count_structured_params(_model(structure).cfg) == n, structure


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("family", ["neo", "llama"])
def test_matmul_flops_match_torch_counter(structure, family):
    """Every matmul of a training step (forward + backward) as torch counts it equals the count."""
    m = _model(structure, family)
    B = 3
    w = torch.randint(0, 40, (B, S + T))
    valid = torch.ones_like(w, dtype=torch.bool)
    with FlopCounterMode(display=False) as counter:
        h = m(w, valid, S, hidden=True)
        (h @ m.head.weight.T).sum().backward()
    counts = counter.get_flop_counts()["Global"]
    counted = sum(v for k, v in counts.items() if str(k) in ("aten.mm", "aten.addmm", "aten.bmm"))
    matmul, attn = structured_flops(m.cfg, S, T)
    assert counted == B * matmul
    d, L = 16, 2
    by_hand = {"none": 6 * L * (S + T - 1) ** 2 * d, "final": 6 * L * (S * S + T * T + T * S) * d}
    assert attn == by_hand["none" if m.st.cross == "none" else "final"]


# --- examples ---------------------------------------------------------------------------------------


def _instruct_corpus(folder: Path, stories: int = 240, seed: int = 0) -> Path:
    from tinyscale.data.tokenize import tokenize_corpus

    rng = random.Random(seed)
    corpus = folder / "corpus"
    corpus.mkdir(parents=True)
    names, things = ["Lily", "Tom", "Ben", "Mia"], ["ball", "cat", "kite", "cake", "boat"]
    for split, n in (("train", stories), ("val", 40)):
        with open(corpus / f"{split}.jsonl", "w") as f:
            for i in range(n):
                name, thing = rng.choice(names), rng.choice(things)
                header = f"Words: {thing}, {name}\nStory: "
                body = f"Once {name} had a {thing}. {name} liked the {thing}. The end."
                at = len(header) + body.index(name, 6)
                rec = {"id": f"{split}{i}", "text": header + body, "meta": {"instruct": ["Words"]},
                       "spans": [[at, at + len(name), "tracking", 0.0, -1.386]]}
                f.write(json.dumps(rec) + "\n")
    tokenize_corpus(corpus, folder / "shards", vocab_size=300, workers=1)
    return folder / "shards"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return _instruct_corpus(tmp_path_factory.mktemp("instruct"))


def test_examples_split_at_the_story_line(shards):
    from tinyscale.data.shards import ShardSet
    from tinyscale.data.tokenize import load_tokenizer

    s = ShardSet.open(shards)
    tok = load_tokenizer(shards / "tokenizer.json")
    tokens = np.asarray(s.tokens("val"))
    ex = find_examples(tokens, s.eot_id, marker_ids(shards / "tokenizer.json"))
    assert len(ex) == 40
    texts = [json.loads(line)["text"] for line in (shards.parent / "corpus" / "val.jsonl").read_text().splitlines()]
    w, valid, index = batch(tokens, ex, np.arange(len(ex)), 16, 40, s.eot_id)
    for r, text in enumerate(texts):
        head, body = text.split("Story:")
        assert tok.decode(w[r, :16][valid[r, :16]].tolist()) == head + "Story:"
        assert tok.decode(w[r, 16:][valid[r, 16:]].tolist()) == body  # the closing EOT decodes to nothing
        assert w[r, 16:][valid[r, 16:]][-1] == s.eot_id and w[r, :16][valid[r, :16]][0] == s.eot_id
    assert (index[~valid] == -1).all()


# --- training and resume ------------------------------------------------------------------------------


FLAGS = ["--d-model", "16", "--n-layers", "1", "--n-heads", "2", "--seq-len", "24", "--input-len", "12",
         "--batch", "4", "--threads", "1", "--dtype", "fp32", "--warmup", "2", "--lr", "3e-3", "--tokens",
         str(12 * 4 * 24), "--checkpoint-every", "6", "--eval-every", "6", "--eval-tokens", "200",
         "--log-every", "1", "--family", "neo"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("structure", ["encdec", "prefix"])
def test_resume_continues_exactly(shards, tmp_path, structure, capsys):
    whole = tmp_path / "whole"
    assert main(["-q", "train", "--data", str(shards), "--out", str(whole), "--structure", structure, *FLAGS]) == 0
    info = json.loads((whole / "run.json").read_text())
    assert info["model"]["structure"] == structure and info["params"]["total"] > 0
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for f in (cut / "checkpoints").glob("step_00000012.*"):
        f.unlink()
    assert sorted(int(p.name[5:13]) for p in (cut / "checkpoints").glob("*.safetensors"))[-1] == 6
    assert main(["-q", "train", "--resume", str(cut)]) == 0
    a, b = _metrics(whole), _metrics(cut)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "val_loss"):
            if key in ra:
                assert abs(ra[key] - rb[key]) <= 1e-6, (ra["step"], key)
    last = a[-1]
    assert last["val_loss"] < math.log(300) and set(last["val_loss_by_skill"]) >= {"tracking"}
    # `tinyscale eval` measures the trainer's validation examples the same way; `sample` writes a story.
    assert main(["-q", "eval", str(whole)]) == 0
    result = json.loads((whole / "eval" / "12.json").read_text())
    assert result["loss"]["val"]["loss"] == pytest.approx(last["val_loss"], abs=1e-6)
    capsys.readouterr()
    assert main(["-q", "sample", str(whole), "--prompt", "Words: cat, Tom", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("Words: cat, Tom\nStory:")
    # What reads a decoder-only model refuses a structured run in one line.
    assert main(["-q", "export", str(whole), "--out", str(tmp_path / "hf")]) == 2
    assert "structure" in capsys.readouterr().err


@pytest.mark.parametrize("structure", ["encdec", "encdec-shared-layerwise", "prefix"])
def test_greedy_sampling_matches_forward_and_encodes_once(structure, monkeypatch):
    from tinyscale.structure import sample

    m = _model(structure)
    calls = []
    encode = m.encode
    monkeypatch.setattr(m, "encode", lambda *a: calls.append(1) or encode(*a))
    inputs = torch.randint(1, 40, (2, S))
    out = sample(m, inputs, T, eot_id=0, temperature=0)
    assert calls == ([1] if m.st.cross != "none" else [])
    # Each sampled token is the argmax of the model over the input and the tokens before it.
    w = torch.cat([inputs, out], 1)
    logits = m(w, torch.ones_like(w, dtype=torch.bool), S)
    for r in range(2):
        n = int((out[r] == 0).nonzero()[0]) + 1 if (out[r] == 0).any() else out.shape[1]
        assert torch.equal(logits[r, :n].argmax(-1), out[r, :n])


def test_structure_study_fits_each_structure_and_finds_the_crossing():
    """Two synthetic structures whose laws cross inside the measured range: the fits recover them
    and the crossing matches a root of the difference found by scipy."""
    from scipy.optimize import brentq

    from tinyscale.analysis.structure_study import structure_study

    laws = {"encdec": (2.0, 40.0, 0.25), "decoder": (1.2, 2000.0, 0.35)}  # E, A, alpha
    rng = np.random.default_rng(0)
    records = []
    for name, (E, A, a) in laws.items():
        for c in np.geomspace(1e9, 1e14, 6):
            for seed in (0, 1):
                loss = (E + A / c ** a) * (1 + 0.002 * rng.standard_normal())
                records.append({"run": f"{name}-{c:.0e}-{seed}", "structure": name, "final": True, "flops": c,
                                "loss": loss, "seed": seed})
    out = structure_study(records, n_boot=30)
    for name, law_params in laws.items():
        assert out["structures"][name]["fit"]["params"]["alpha"] == pytest.approx(law_params[2], rel=0.2)

    def law(name: str, log_c: float) -> float:
        E, A, a = laws[name]
        return E + A / 10 ** (log_c * a)

    want = brentq(lambda log_c: law("encdec", log_c) - law("decoder", log_c), 9, 14)
    (cross,) = out["crossings"]
    assert math.log10(cross["crossing_flops"]) == pytest.approx(want, abs=0.3)
    assert cross["lower_at_small"] == "encdec" and cross["share_crossing"] > 0.5
    lo, hi = cross["ci"]
    assert lo <= cross["crossing_flops"] <= hi


def test_study_sweep_follows_the_sizing_rule():
    from tinyscale.structure import layers_at_equal_params
    from tinyscale.sweep import expand, load_sweep

    cfg = load_sweep(Path(__file__).parents[1] / "sweeps" / "structure" / "sweep.yaml")
    runs = expand(cfg)
    assert len(cfg.grid["seed"]) >= 2 and {r["structure"] for r in runs} == set(STRUCTURES)
    widths = sorted({r["d_model"] for r in runs})
    assert len(widths) >= 4 and len({r["tokens"] for r in runs}) >= 4
    for d in widths:
        at = [r for r in runs if r["d_model"] == d]
        dec = next(r for r in at if r["structure"] == "decoder")
        base = model_config(vocab_size=1024, max_seq_len=192, d_model=d, n_layers=dec["n_layers"],
                            n_heads=dec["n_heads"], family=cfg.train["family"])
        dec_params = count_structured_params(base.model_copy(update={"structure": "decoder"}), non_embedding=True)
        for r in at:
            assert r["n_layers"] == layers_at_equal_params(base, r["structure"])
            c = base.model_copy(update={"structure": r["structure"], "n_layers": r["n_layers"]})
            assert abs(count_structured_params(c, non_embedding=True) / dec_params - 1) < 0.2


def test_runs_without_a_structure_keep_their_run_json_model():
    """run.json "model" of a windows language model is what it always was (resume compares it)."""
    plain = model_config("100K", vocab_size=50, max_seq_len=16)
    assert "structure" not in plain.model_dump()
    assert model_config("100K", vocab_size=50, max_seq_len=16, structure="prefix").model_dump()["structure"] == "prefix"


# --- probes and completions of a structured run (evaluate/structured.py) --------------------------


@torch.no_grad()
def _option_logp(model, tok, eot: int, text: str, option: str, S: int, T: int) -> float:
    """Summed log-probability of `option` after `text`, laid out by data/examples.py as in training:
    the whole story is tokenized between end-of-text tokens and split at its header."""
    head = tok.encode(text, add_special_tokens=False).ids
    cont = tok.encode(" " + option, add_special_tokens=False).ids
    tokens = np.array([eot, *head, *cont, eot])
    ex = find_examples(tokens, eot, np.array(tok.encode("\nStory:", add_special_tokens=False).ids))
    w, valid, _ = batch(tokens, ex, np.array([0]), S, T, eot)
    logits = model(torch.from_numpy(w), torch.from_numpy(valid), S).float()
    logp = torch.log_softmax(logits[0], -1)
    n_target = int(valid[0, S:].sum()) - 1  # the target without its closing end-of-text token
    return float(sum(logp[j, w[0, S + j]] for j in range(n_target - len(cont), n_target)))


def test_eval_scores_probes_with_the_header_as_input(shards, tmp_path):
    from tinyscale.data.tokenize import load_tokenizer
    from tinyscale.runs import load_model

    run = tmp_path / "ed"
    assert main(["-q", "train", "--data", str(shards), "--out", str(run), "--structure", "encdec", *FLAGS]) == 0
    suite = tmp_path / "mine.jsonl"
    items = [{"id": "head", "prompt": "Words: cat, Tom\nStory: Once Tom had a", "answer": "cat", "wrong": ["kite", "Mia"],
              "kind": "thing", "style": "world"},
             {"id": "plain", "prompt": "Once Ben had a", "answer": "ball", "wrong": ["cake"], "kind": "thing",
              "style": "novel"},
             {"id": "long", "prompt": "Words: cat\nStory: Once" + " Tom had a cat." * 20, "answer": "cat",
              "wrong": ["kite"], "kind": "thing", "style": "world"}]
    suite.write_text("".join(json.dumps(i) + "\n" for i in items))
    assert main(["-q", "eval", str(run), "--suite", str(suite), "--completions", "2", "--samples", "2"]) == 0
    result = json.loads((run / "eval" / "12.json").read_text())
    mine = result["probes"]["mine"]
    # The probe longer than the 24 trained target tokens is left out and counted; the two others scored.
    assert mine["n"] == 2 and result["settings"]["probes_left_out"] == {"mine": 1}
    model, _ = load_model(run, 12, structured=True)
    model.eval()
    tok = load_tokenizer(shards / "tokenizer.json")
    want = [[_option_logp(model, tok, 0, it["prompt"], o, 12, 24) for o in (it["answer"], *it["wrong"])]
            for it in items[:2]]
    got = {item["id"]: item["logps"] for item in mine["items"]}
    for it, w in zip(items[:2], want, strict=True):
        assert got[it["id"]] == pytest.approx(w, abs=1e-4)
    assert mine["mc"]["k"] == sum(all(w[0] > x for x in w[1:]) for w in want)
    # The corpus trigram's choice beside each kept item, as for a decoder-only run
    assert result["settings"]["trigram_tokens"] > 0 and all(isinstance(i["trigram"], bool) for i in mine["items"])
    assert mine["trigram"] == pytest.approx(sum(i["trigram"] for i in mine["items"]) / 2)
    # Completions: stories sampled for validation headers, `samples` each.
    assert [len(s["completions"]) for s in result["completions"]] == [2, 2]
    assert all(s["prompt"].startswith("Words:") and s["prompt"].endswith("Story:") for s in result["completions"])


def test_report_tabulates_the_structure_study(tmp_path):
    """The report's structure tables from a hand-written analysis.json: every seed's loss, their
    mean and spread per level, each law with its intervals, each crossing with its interval."""
    from tinyscale.analysis.report import _curves_section
    from tinyscale.fileio import read_json, write_json

    def point(c, loss, seed, gap):
        return [c, loss, seed, {"tracking": loss + 0.5}, {"tracking": gap}]

    fit = {"params": {"E": 1.5, "A": 300.0, "alpha": 0.2}, "ci": {"E": [1.2, 1.8], "A": [100.0, 900.0],
                                                               "alpha": [0.15, 0.25]}, "n_points": 4, "n_boot": 50}
    levels = [{"flops": 1e11, "tokens": 100000, "width": 32, "depth": 2, "params": 61824, "seeds": [0, 1],
               "losses": [4.9061, 4.9234], "mean": 4.91475, "spread": 0.0173}]
    study = {"structures": {
        "encdec": {"points": [point(1e11, 4.9061, 0, 2.0), point(1e11, 4.9234, 1, 2.2), point(1e12, 3.9, 0, 1.0)],
                   "levels": levels, "fit": fit},
        "decoder": {"points": [point(1e11, 5.01, 0, 2.5), point(1e12, 3.8, 0, 0.8)], "levels": [],
                    "fit": {"error": "2 compute level(s): a law needs at least 3"}}},
        "crossings": [{"a": "decoder", "b": "encdec", "crossing_flops": 4.567e11, "ci": [2.346e11, 8.9e11],
                       "share_crossing": 0.62, "lower_at_small": "encdec"}]}
    write_json(tmp_path / "analysis.json", {"fits": {}, "structure_study": study})
    html = str(_curves_section([], read_json(tmp_path / "analysis.json"), tmp_path / "plots"))
    assert "<td>decoder vs encdec</td><td>4.57e+11</td><td>[2.35e+11, 8.9e+11]</td><td>62%</td><td>encdec</td>" in html
    assert "<td>4.906 / 4.923</td><td>4.915</td><td>0.017</td>" in html
    assert "<td>encdec</td><td>1.5 [1.2, 1.8]</td><td>300 [100, 900]</td><td>0.2 [0.15, 0.25]</td>" in html
    assert "not fitted: 2 compute level(s)" in html
    assert (tmp_path / "plots" / "structure_skills.png").stat().st_size > 1000
