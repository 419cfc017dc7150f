"""tinyscale interpret: streamed top-k, selectivity and its controls, head metrics, page."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from tinyscale.errors import UserError
from tinyscale.interpret import activations, interpret, readability
from tinyscale.interpret.heads import HeadStats, head_class
from tinyscale.interpret.neurons import (
    StreamingTopK,
    TagCounts,
    benjamini_hochberg,
    label_neurons,
    selectivity,
)
from tinyscale.interpret.one_model import Options
from tinyscale.interpret.tags import BIT, TAGS, tag_names, token_tags
from tinyscale.interpret.wordclass import classify_text
from tinyscale.model import Transformer, model_config

# --- neurons ------------------------------------------------------------------------------------


def test_streamed_top_k_equals_the_exact_top_k():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(1000, 7, generator=g)  # 1000 tokens, 7 neurons: distinct values, no ties
    top = StreamingTopK(7, k=9)
    for start in range(0, 1000, 64):  # batches of tokens, as stories arrive
        keys = torch.arange(start, min(start + 64, 1000))
        top.update(acts[start:start + 64], keys, keys * 10, keys + 5)
    exact_values, exact_index = acts.T.topk(9, dim=1)
    assert torch.equal(top.values, exact_values)
    assert torch.equal(top.keys, exact_index)
    assert torch.equal(top.tags, exact_index * 10) and torch.equal(top.ids, exact_index + 5)
    assert top.values.shape == (7, 9)  # bounded: never more than k kept per neuron


def _constructed(seed=0, tokens=20_000, k=20):
    """Tokens with known tags and three neurons: one fires exactly on quote openings (2% of tokens),
    one on punctuation but noisily, one at random."""
    rng = np.random.default_rng(seed)
    quote = rng.random(tokens) < 0.02
    punct = ~quote & (rng.random(tokens) < 0.2)
    tags = np.where(punct, BIT["class:punctuation"], BIT["class:function"]).astype(np.int64)
    tags[quote] = BIT["class:punctuation"] | BIT["role:quote_open"]
    acts = np.stack([quote * 5.0 + rng.random(tokens), punct * 1.0 + rng.random(tokens) * 1.5,
                     rng.random(tokens)], axis=1)
    top, counts = StreamingTopK(3, k), TagCounts(reservoir=5000, seed=seed)
    for s in range(0, tokens, 1000):
        t = torch.from_numpy(tags[s:s + 1000])
        top.update(torch.from_numpy(acts[s:s + 1000]).float(), torch.arange(s, s + len(t)), t)
        counts.add(tags[s:s + 1000])
    return top, counts, tags


def test_selectivity_labels_neurons_and_the_shuffled_control_rejects_noise():
    top, counts, tags = _constructed()
    assert counts.total == len(tags) and len(counts.sample) == 5000
    base = counts.base()
    assert abs(base[TAGS.index("role:quote_open")] - 0.02) < 0.005
    labels = label_neurons(top, counts, draws=2000)
    # The quote neuron: all its top-k are quote openings, 2% of tokens: selectivity 1.
    assert labels.label[0] == "role:quote_open"
    assert labels.selectivity[0] == pytest.approx(1.0) and labels.share[0] == 1.0
    assert labels.p_value[0] < 0.001 and labels.significant[0]
    # The punctuation neuron is labelled by the tag its top-k over-represent.
    assert labels.label[1] == "class:punctuation" and labels.selectivity[1] > 0.3
    # The random neuron: no better than k tokens drawn at random.
    assert labels.p_value[2] > 0.01 and not labels.significant[2]
    assert labels.selectivity[2] < np.percentile(labels.null, 99.9)


def test_selectivity_formula_and_catch_all_tags():
    base = np.zeros(len(TAGS))
    base[TAGS.index("class:verb")] = 0.2
    base[TAGS.index("class:other")] = 0.5
    top = np.array([[BIT["class:verb"]] * 3 + [BIT["class:other"]]])  # 3 of 4 verbs, one 'other'
    sel = selectivity(top, base)[0]
    assert sel[TAGS.index("class:verb")] == pytest.approx((0.75 - 0.2) / 0.8)
    assert sel[TAGS.index("class:other")] == -np.inf  # a catch-all never labels
    assert sel[TAGS.index("class:noun")] == -np.inf  # a tag never seen cannot label


def test_benjamini_hochberg():
    p = np.array([0.001, 0.2, 0.012, 0.04, 0.9])
    assert benjamini_hochberg(p, 0.05).tolist() == [True, False, True, False, False]
    assert benjamini_hochberg(np.array([0.5, 0.6])).tolist() == [False, False]


# --- tags ----------------------------------------------------------------------------------------


def test_word_classes_and_token_tags():
    text = 'Lily saw 3 red dogs. "I like them," she said.'
    classes = {text[s:e]: c for s, e, c in classify_text(text)}
    assert classes == {"Lily": "name", "saw": "verb", "3": "number", "red": "adjective", "dogs": "noun",
                       ".": "punctuation", '"': "punctuation", "I": "pronoun", "like": "function",
                       "them": "pronoun", ",": "punctuation", "she": "pronoun", "said": "verb"}
    offsets = [(0, 4), (4, 8), (8, 10), (10, 14), (14, 19), (19, 20), (20, 22), (22, 23)]  # "Lily| saw| 3|..."
    spans = [[0, 4, "free", -2.0, -2.0], [15, 19, "tracking", 0.0]]  # with or without a no-skill baseline
    roles = [[0, 4, "first_mention"], [0, 4, "main_character"], [21, 23, "quote_open"]]
    tags, entity = token_tags(text, offsets, spans, roles)
    assert tag_names(int(tags[0])) == ["class:name", "skill:free", "role:first_mention", "role:main_character",
                                       "role:first_mention_main"]
    assert tag_names(int(tags[1])) == ["class:verb", "skill:other"]
    assert tag_names(int(tags[4])) == ["class:noun", "skill:tracking"]
    assert tag_names(int(tags[6])) == ["class:punctuation", "skill:other", "role:quote_open"]  # ' "'
    assert entity.tolist() == [True, False, False, False, True, False, False, False]  # a name, a tracked noun
    plain, _ = token_tags(text, offsets)  # no spans or roles: word classes only
    assert tag_names(int(plain[0])) == ["class:name"]


# --- heads ---------------------------------------------------------------------------------------


def _stats(pattern, entity):
    st = HeadStats.zeros(pattern.shape[0])
    st.add(pattern, torch.tensor(entity), pattern.shape[-1])
    return st.result()


def test_head_metrics_on_constructed_patterns():
    T = 30
    entity = [False] * T
    entity[2] = entity[3] = True  # two entity tokens early in the story
    prev = torch.zeros(T, T)  # attends to the token before (itself at 0)
    prev[0, 0] = 1
    for i in range(1, T):
        prev[i, i - 1] = 1
    ent = torch.zeros(T, T)  # attends to the entities once they exist, else to itself
    for i in range(T):
        if i >= 3:
            ent[i, 2] = ent[i, 3] = 0.5
        elif i == 2:
            ent[i, 2] = 1
        else:
            ent[i, i] = 1
    uniform = torch.tril(torch.ones(T, T))
    uniform = uniform / uniform.sum(1, keepdim=True)
    local, semantic, diffuse = _stats(torch.stack([prev, ent, uniform]), entity)
    assert local["distance"] == pytest.approx(1.0) and local["entropy"] == pytest.approx(0.0, abs=1e-9)
    assert local["local_share"] == pytest.approx(1.0) and local["class"] == "local"
    # Entity keys exist for queries 2..29; the first of them looks at itself (an entity).
    assert semantic["entity_share"] == pytest.approx(1.0) and semantic["entity_lift"] > 2
    assert semantic["entropy"] == pytest.approx(27 * np.log(2) / 29)
    assert semantic["local_share"] == pytest.approx(5.5 / 29)
    assert semantic["class"] == "semantic"
    assert diffuse["entity_lift"] == pytest.approx(1.0) and diffuse["class"] == "diffuse"
    assert diffuse["distance"] == pytest.approx(np.mean([i / 2 for i in range(1, T)]))
    assert head_class(0.9, 3.0) == "mixed"


# --- hooks against the exported model ------------------------------------------------------------


def _tokenizer(texts):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _run(root, tok, family="llama", n_layers=2, seed=1, data_dir=None, d_model=32):
    run = root / f"run-{family}-{n_layers}-{d_model}"
    (run / "checkpoints").mkdir(parents=True)
    tok.save(str(run / "tokenizer.json"))
    cfg = model_config(vocab_size=tok.get_vocab_size(), max_seq_len=128, family=family, d_model=d_model,
                       n_layers=n_layers, n_heads=2)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():  # non-trivial norms and larger weights: activations of order 1, not 0.01
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
            else:
                p.mul_(5)
    params = {"total": sum(p.numel() for p in model.parameters()), "non_embedding": 1000 * d_model * n_layers}
    info = {"model": cfg.model_dump(), "params": params, "data": {"dir": str(data_dir)} if data_dir else {}}
    (run / "run.json").write_text(json.dumps(info))
    save_model(model, str(run / "checkpoints" / "step_00000010.safetensors"))
    torch.save({}, run / "checkpoints" / "step_00000010.state.pt")
    return run, model.eval()


TEXTS = ["Once upon a time there was a little dog named Tom.", "Lily liked to play in the park with her ball."]


@pytest.mark.parametrize("family", ["llama", "neo"])
def test_hooks_equal_the_exported_models_hidden_states(tmp_path, family):
    transformers = pytest.importorskip("transformers")
    from tinyscale.export import export_hf

    tok = _tokenizer(TEXTS * 20)
    run, model = _run(tmp_path, tok, family)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(export_hf(run, tmp_path / "hf")), dtype=torch.float32,
                                                           attn_implementation="eager").eval()
    names = ["embed", "blocks.0", "blocks.1.mlp.act", "blocks.0.attn.pattern", "blocks.1.attn.pattern", "norm"]
    ours = activations(run, TEXTS, names)  # a run folder and strings: the notebook API
    layers = hf.model.layers if family == "llama" else hf.transformer.h
    mlp_in = {}
    down = layers[1].mlp.down_proj if family == "llama" else layers[1].mlp.c_proj
    down.register_forward_pre_hook(lambda m, args: mlp_in.__setitem__("act", args[0]))
    for j, text in enumerate(TEXTS):
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True, output_attentions=True)
        assert ours["embed"][j].shape == (ids.shape[1], 32)
        torch.testing.assert_close(ours["embed"][j], out.hidden_states[0][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours["blocks.0"][j], out.hidden_states[1][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours["norm"][j], out.hidden_states[2][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours["blocks.1.mlp.act"][j], mlp_in["act"][0], atol=1e-5, rtol=1e-4)
        for layer in (0, 1):
            torch.testing.assert_close(ours[f"blocks.{layer}.attn.pattern"][j], out.attentions[layer][0],
                                       atol=1e-5, rtol=1e-4)
    assert ours["blocks.1.mlp.act"][0].std() > 0.1  # non-trivial activations were compared
    # The model's own output is unchanged by the hooks.
    ids = torch.tensor([tok.encode(TEXTS[0]).ids])
    torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_activations_reject_unknown_names(tmp_path):
    tok = _tokenizer(TEXTS * 20)
    run, _ = _run(tmp_path, tok)
    with pytest.raises(UserError, match="blocks.7.mlp.act"):
        activations(run, TEXTS, ["blocks.7.mlp.act"])
    with pytest.raises(UserError, match="activation name"):
        activations(run, TEXTS, ["blocks.0.mlp"])


# --- the page ------------------------------------------------------------------------------------


class _Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.classes = [], 0, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.ids.append(a.get("id"))
        if tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.imgs += 1
        if a.get("class"):
            self.classes.append(a["class"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small story-world corpus with its shards (role tags and skill spans included)."""
    from tinyscale.data.tokenize import load_tokenizer, tokenize_corpus
    from tinyscale.data.world import write_world_corpus

    root = tmp_path_factory.mktemp("world")
    write_world_corpus(root / "corpus", stories=60, seed=2, val_fraction=0.25)
    tokenize_corpus(root / "corpus", root / "shards", vocab_size=300, workers=1)
    return root, load_tokenizer(root / "shards" / "tokenizer.json")


def test_page_renders_every_section(world, tmp_path):
    root, tok = world
    run, model = _run(tmp_path, tok, data_dir=root / "shards")
    out = interpret(run, tmp_path / "page.html", opts=Options(stories=10, top_k=4, head_stories=2), show=5)
    html = out.read_text()
    parsed = _Sections()
    parsed.feed(html)
    assert parsed.ids == ["summary", "neurons", "all-neurons", "heads", "ablation", "patching", "sizes", "head-scores"]
    assert parsed.imgs == 2  # one heatmap image per layer
    assert parsed.classes.count("neuron") == 5 and parsed.classes.count("ctx") == 5 * 4
    assert "One model only" in html and "role:first_mention" in html
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["stories"] == 10 and data["layers"] == [0] and data["tags"] == {"skills": True, "roles": True}
    assert len(data["model"]["neurons"]) == model.cfg.ffn_dim and len(data["model"]["heads"]) == 4
    assert data["control"]["summary"]["neurons"] == data["model"]["summary"]["neurons"]
    n = data["model"]["neurons"][0]
    acts = [t[2] for t in n["top"]]
    assert len(acts) == 4 and acts == sorted(acts, reverse=True)
    assert "<script" not in html.lower()  # story text is escaped, nothing executable
    # Head ablations of the trained model and its twin, per skill with intervals, in JSON and page.
    for name in ("model", "control"):
        abl = data[name]["ablation"]
        assert abl["stories"] == 10 and len(abl["heads"]) == 4 and abl["tokens"]["all"] > 0
        mean, lo, hi = abl["heads"][0]["delta"]["all"]
        assert lo <= mean <= hi
    assert "Every head, Δ per skill" in html and "random-init twin: same" in html
    assert data["control"]["summary"]["significant"] is None and "significant_perm" in data["model"]["summary"]


def test_page_without_world_tags_says_so(world, tmp_path):
    root, tok = world
    corpus = tmp_path / "plain"
    corpus.mkdir()
    with open(root / "corpus" / "val.jsonl") as f, open(corpus / "val.jsonl", "w") as g:
        for line in f:
            rec = json.loads(line)
            g.write(json.dumps({"id": rec["id"], "text": rec["text"]}) + "\n")
    run, _ = _run(tmp_path, tok)
    out = interpret(run, tmp_path / "p.html", opts=Options(stories=6, top_k=3, head_stories=1, control=False),
                    corpus=corpus, show=2)
    html = out.read_text()
    assert "carries no role tags" in html and "no skill spans" in html
    data = json.loads(out.with_suffix(".json").read_text())
    assert all(r["label"].startswith("class:") for r in data["model"]["neurons"] if r["label"])


def test_sweep_compares_sizes_with_the_control(world, tmp_path):
    root, tok = world
    sweep = tmp_path / "sweep"
    for d_model, n_layers in ((16, 1), (32, 2)):
        _run(sweep / "runs", tok, n_layers=n_layers, d_model=d_model, data_dir=root / "shards")
    out = interpret(sweep, opts=Options(stories=6, top_k=3, head_stories=1), show=2)
    parsed = _Sections()
    parsed.feed(out.read_text())
    assert parsed.imgs == 2 + 1  # the largest model's two layers of heatmaps, the sizes figure
    sizes = json.loads((sweep / "interpret_sizes.json").read_text())["runs"]
    assert [r["n_layers"] for r in sorted(sizes, key=lambda r: r["non_embedding_params"])] == [1, 2]
    assert all(r["control_mean_selectivity"] is not None for r in sizes)
    png, header, rows = readability(sweep)
    assert png.startswith(b"\x89PNG") and len(rows) == 2 and "control (random init)" in header
    assert readability(tmp_path) is None
    from tinyscale.analysis.report import build_report

    report = build_report(sweep).read_text()  # the sweep's report shows the same figure and table
    assert 'alt="selectivity vs size"' in report and "control (random init)" in report


def test_cli_interpret_and_bad_input(world, tmp_path, capsys):
    from tinyscale.cli import main

    root, tok = world
    run, _ = _run(tmp_path, tok, data_dir=root / "shards")
    assert main(["-q", "interpret", str(run), "--stories", "4", "--top-k", "3", "--out", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.json").is_file()
    assert main(["-q", "interpret", str(run), "--out", str(tmp_path / "x.txt")]) == 2
    assert main(["-q", "interpret", str(run), "--layers", "5"]) == 2
    assert main(["-q", "interpret", str(run), "--ablate-stories", "-1"]) == 2
    assert main(["-q", "interpret", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"must end in \.html", err) and "not a layer" in err
    gone, _ = _run(tmp_path / "gone", tok, data_dir=tmp_path / "nowhere")  # shards deleted since training
    assert main(["-q", "interpret", str(gone)]) == 2
    assert "give --corpus" in capsys.readouterr().err
