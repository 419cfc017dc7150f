"""A model is used only within the context it was trained at: run.json records it, loading exposes it,
and sample, generate, probes, export and eval completions stay within it; completion quality figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _tiny_shards import make_shards
from tinyscale.cli import main
from tinyscale.config import TrainConfig
from tinyscale.errors import UserError
from tinyscale.evaluate.completions import (
    StoryCut,
    completion_budget,
    corpus_vocabulary,
    quality,
    repeated_word_rate,
    vocab_share,
)
from tinyscale.runs import load_model, load_tokenizer, trained_context

TINY = dict(d_model=32, n_layers=2, n_heads=2, batch=8, lr=3e-3, warmup=5, threads=1, dtype="fp32",
            eval_every=0, checkpoint_every=1000, device="cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"), stories=200)


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory) -> dict[str, Path]:
    """Two tiny runs trained at 32 tokens: a llama with the default positions, and a neo model whose
    learned position table has 64 rows (more room than it was trained for)."""
    from tinyscale.train import train

    root = tmp_path_factory.mktemp("runs")
    train(TrainConfig(data=str(shards), preset=None, seq_len=32, tokens=20 * 8 * 32, **TINY), root / "llama")
    train(TrainConfig(data=str(shards), preset=None, family="neo", seq_len=32, max_seq_len=64, tokens=10 * 8 * 32,
                      **TINY), root / "neo")
    return {"llama": root / "llama", "neo": root / "neo"}


def test_run_records_its_context_and_loading_exposes_it(runs):
    llama = json.loads((runs["llama"] / "run.json").read_text())
    assert llama["context"] == 32 and llama["model"]["max_seq_len"] == 32  # default: the model's context is seq_len
    neo = json.loads((runs["neo"] / "run.json").read_text())
    assert neo["context"] == 32 and neo["model"]["max_seq_len"] == 64
    model, _ = load_model(runs["neo"])
    assert model.cfg.max_seq_len == 32 and model.pos_emb.weight.shape[0] == 64  # the weights keep their shape
    with pytest.raises(ValueError, match="context of 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    # An older run without "context": its training config's seq_len; without that, the model's positions.
    assert trained_context({"model": {"max_seq_len": 512}, "config": {"seq_len": 128}}) == 128
    assert trained_context({"model": {"max_seq_len": 512}}) == 512
    with pytest.raises(UserError, match="context must be a positive integer"):
        trained_context({"model": {"max_seq_len": 512}, "context": "long"})


def test_sample_refuses_a_prompt_or_budget_beyond_the_trained_context(runs, capsys):
    run = str(runs["neo"])
    tok = load_tokenizer(run)
    prompt = "Once upon a time, Lily"
    n = len(tok.encode(prompt).ids)
    assert 4 < n < 24
    base = ["-q", "sample", run, "--device", "cpu", "--temperature", "0"]
    for argv in ([*base, "--prompt", " ".join([prompt] * 4)],  # longer than the context alone
                 [*base, "--prompt", prompt, "--max-new-tokens", str(32 - n + 1)]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "trained context of 32" in err, err
    # Exactly filling the context works, and the default budget shrinks to fit.
    assert main([*base, "--prompt", prompt, "--max-new-tokens", str(32 - n)]) == 0
    assert main([*base, "--prompt", prompt]) == 0


def test_export_writes_the_trained_context(runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tinyscale.export import export_hf

    out = export_hf(runs["neo"], tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["max_position_embeddings"] == 32
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert hf.transformer.wpe.weight.shape[0] == 32
    ours, _ = load_model(runs["neo"])
    ids = torch.arange(1, 33)[None] % ours.cfg.vocab_size
    with torch.no_grad():
        assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_probes_longer_than_the_context_are_refused(runs, tmp_path, capsys):
    suite = tmp_path / "long.jsonl"
    long_prompt = ("Once upon a time, Lily had a red ball and a big kite and a small cat and a happy dog. " * 3).strip()
    suite.write_text(json.dumps({"id": "long-1", "prompt": long_prompt, "answer": "ball", "wrong": ["kite", "cat"],
                                 "kind": "thing", "style": "novel"}) + "\n")
    code = main(["-q", "eval", str(runs["llama"]), "--device", "cpu", "--suite", str(suite), "--completions", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "probe long-1" in err and "trained context of 32" in err


def test_builtin_probes_longer_than_the_context_are_left_out_and_counted(runs):
    """A model with a short context is still probed on the built-in items it can read; the rest are
    counted, never cut (a user's own file is refused instead: the test above)."""
    from tinyscale.evaluate import evaluate_run
    from tinyscale.evaluate.probes import load_suite

    total = len(load_suite("facts")[1])
    r = evaluate_run(runs["llama"], suites=["facts"], device="cpu", max_tokens=64, completions=0, write=False)
    (res,) = r.values()
    left = res["settings"]["probes_left_out"].get("facts", 0)
    assert left > 0
    kept = res["probes"]["facts"]["n"] if "facts" in res["probes"] else 0
    assert kept + left == total and res["probes"].get("facts", {}).get("cut", 0) == 0


def test_eval_completions_fit_the_context_and_record_quality(runs):
    from tinyscale.evaluate import evaluate_run

    run = runs["llama"]
    result = evaluate_run(run, suites=[], device="cpu", max_tokens=256, completions=3, samples=2,
                          temperature=0.7, write=False)
    (step, r), = result.items()
    stories = r["completions"]
    assert len(stories) == 3
    q = r["completion_quality"]
    for s in stories:
        assert s["prompt_cut_tokens"] > 0  # a tiny story's first half + its ending do not fit 32 tokens
        for n, ended in zip(s["completion_tokens"], s["ended"], strict=True):
            assert s["prompt_tokens"] + n + ended <= 32  # the end-of-text token took a position too
            assert ended == (n < q["max_new_tokens"])
    assert q["temperature"] == 0.7 and q["context"] == 32 and q["completions"] == 6
    assert q["max_new_tokens"] + max(s["prompt_tokens"] for s in stories) <= 32
    assert 0 <= q["vocab_share"] <= 1 and 0 <= q["repeat_rate"] <= 1 and 0 <= q["eot_share"] <= 1
    ref = q["corpus"]
    assert ref["vocab_share"] == 1.0  # every validation word of the tiny corpus is a training word
    assert 0 < ref["repeat_rate"] < 0.2 and ref["stories"] == 20


def test_completion_budget_cuts_prompts_only_when_needed():
    cut = lambda n, ending: StoryCut("s", "p", "e", list(range(n)), ending)  # noqa: E731
    assert completion_budget([cut(100, 80)], 512) == (116, 396)  # everything fits: no cut
    assert completion_budget([cut(180, 150)], 128) == (64, 64)  # half the context each
    assert completion_budget([cut(40, 150)], 128) == (88, 40)  # a short prompt leaves the rest to write
    with pytest.raises(UserError):
        completion_budget([cut(4, 4)], 1)


def test_quality_figures_on_hand_made_text(shards):
    vocab = {"the", "dog", "ran", "to", "park", "lily's", "ball"}
    share, n = vocab_share(["The dog ran to the park.", "Lily's ball zorp."], vocab)
    assert n == 9 and share == pytest.approx(8 / 9)
    # "saw saw" repeats at distance 1, "the ... the" at distance 2; "boy" at distance 4 is outside the window.
    assert repeated_word_rate(["He saw saw the big the boy"]) == pytest.approx(2 / 7)
    assert repeated_word_rate(["boy a b c boy"], window=3) == 0.0
    assert repeated_word_rate(["boy a b c boy"], window=4) == pytest.approx(1 / 5)
    assert repeated_word_rate(["one", "one"]) == 0.0  # texts are separate
    assert repeated_word_rate([""]) is None
    stories = [{"completions": ["the dog ran", "zorp zorp"], "ended": [True, False]},
               {"completions": ["the park"], "ended": [True]}]
    q = quality(stories, vocab)
    assert q["completions"] == 3 and q["eot_share"] == pytest.approx(2 / 3)
    assert q["vocab_share"] == pytest.approx(5 / 7) and q["repeat_rate"] == pytest.approx(1 / 7)
    # 1 repeat in 7 words: a wide interval that holds the rate (too few words to compare with a corpus)
    assert 0 < q["repeat_rate_lo"] < 1 / 7 < q["repeat_rate_hi"] < 1 and q["repeat_rate_hi"] > 0.4
    from tinyscale.data.shards import ShardSet

    s = ShardSet.open(shards)
    words = corpus_vocabulary(s.tokens("train"), s.eot_id, s.tokenizer())
    assert {"once", "upon", "lily", "kite", "happy"} <= words and "zorp" not in words


def test_old_run_without_context_uses_its_seq_len(runs, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(runs["neo"], run)
    info = json.loads((run / "run.json").read_text())
    del info["context"]
    (run / "run.json").write_text(json.dumps(info))
    assert load_model(run)[0].cfg.max_seq_len == 32


def test_report_shows_quality_figures_beside_the_completions(tmp_path):
    from tinyscale.analysis.report import _completions_section

    corpus = {"stories": 1000, "vocab_share": 1.0, "repeat_rate": 0.061, "eot_share": 1.0}
    for name, share, rate in (("small", 0.8123, 0.25), ("large", 0.9876, 0.05)):
        (tmp_path / "runs" / name / "eval").mkdir(parents=True)
        (tmp_path / "runs" / name / "run.json").write_text("{}")
        (tmp_path / "runs" / name / "eval" / "40.json").write_text(json.dumps({
            "step": 40, "completions": [{"id": "val:9", "prompt": "Tom ran.", "ending": " He fell.",
                                         "completions": [f" {name} text"], "prompt_cut_tokens": 7}],
            "completion_quality": {"context": 320, "temperature": 0.8, "completions": 1, "vocab_share": share,
                                   "repeat_rate": rate, "eot_share": 0.5, "repeat_window": 3, "corpus": corpus}}))
    html = _completions_section(tmp_path, [{"run": "small", "params": 10}, {"run": "large", "params": 99}], 3)
    table = html[:html.index("<h3>")]
    assert table.index("small") < table.index("large") < table.index("corpus (validation stories)")
    for figure in ("0.812", "0.988", "0.25", "0.05", "0.061", "320", "0.8", ">40<"):
        assert figure in table, figure
    assert "without its first 7 tokens" in html and "large text" in html
