"""`tinyscale export --format gguf`: the file read back by the gguf package, and run by llama.cpp
(llama-cpp-python) with the same tokens and logits as tinyscale's own model."""

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from tinyscale.config import ModelConfig
from tinyscale.errors import UserError
from tinyscale.export_gguf import export_gguf
from tinyscale.generate import generate
from tinyscale.model import Transformer

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (the gguf extra)")

STORIES = ["Once upon a time there was a little dog named Tom.", "Lily liked to play in the park with her ball.",
           "\"Look!\" said Ben. \"It's a big red kite.\" They didn't know what to do.",
           "Mom said, 'We'll go at 3 o'clock.' It was 12:45 and 2024 was almost over.",
           "Zoë ate a crêpe in the café. Наташа читала книгу. 小猫在睡觉。 🙂🎈"]


def probe_texts(n: int = 300, seed: int = 0) -> list[str]:
    """Texts that stress a pre-tokenizer: quotes, apostrophes and contractions, digit runs, letters of
    several scripts and combining marks, emoji, runs of spaces and tabs, newlines (also \\r\\n), punctuation
    runs; fixed ones plus random mixtures of these pieces."""
    pieces = ["Tom", "tom's", "it's", "IT'S", "don't", "they'll", "I'm", "we've", "she'd", "you're", "O'Neil",
              "'quoted'", "\"said\"", "“curly”", "‘single’", "''", "\"", "'", "1", "12", "123", "1234567",
              "3.14", "1,000", "2024-11-29", "x2", "42nd", "café", "naïve", "Zürich", "e\u0301", "日本語",
              "Ελληνικά", "Москва", "مرحبا", "हिन्दी", "🙂", "👍🏽", "…", "—", "!!!", "...", "?!", "--", "(a)",
              "[b]", "{c}", "#1", "$5", "50%", "a+b=c", "<tag>", "@me", "_x_", "\\", "~", "`code`", " ", "  ",
              "   ", "\t", " \t ", "\n", "\n\n", "\r\n", " \n ", "\n  ", "\u00a0", "\u3000", "<|endoftext|>"]
    fixed = STORIES + ["", " ", "  leading", "trailing  ", "a  b", "a   b", "a\tb", "a\n\nb", "line\n  indented",
                       "end.\n", "Hello, world!", "The year 1999.", "don't stop", "'tis", "x'y'z", "l'été"]
    rng = random.Random(seed)
    seps = ["", " ", "  ", "\n", "\t", ", "]
    mixed = ["".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(1, 8)))
             for _ in range(n - len(fixed))]
    return fixed + mixed


def make_run(root, *, tie: bool = True, extra_vocab: int = 0, seed: int = 0):
    """A llama-family run folder with tinyscale's own tokenizer (trained by `train_tokenizer` on stories and
    the probe texts), non-default rope theta and norm eps, a model room of 128 positions trained at 64."""
    from tinyscale.data.tokenize import train_tokenizer

    run = root / f"run-{tie}-{extra_vocab}"
    (run / "checkpoints").mkdir(parents=True)
    corpus = root / f"corpus-{tie}-{extra_vocab}.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for text in STORIES * 20 + probe_texts(200, seed=1):
            f.write(json.dumps({"id": "x", "text": text, "meta": {}, "spans": []}) + "\n")
    tok = train_tokenizer(corpus, vocab_size=700)
    tok.save(str(run / "tokenizer.json"))
    cfg = ModelConfig(family="llama", vocab_size=tok.get_vocab_size() + extra_vocab, d_model=64, n_layers=2,
                      n_heads=4, max_seq_len=128, tie_embeddings=tie, rope_theta=500.0, norm_eps=1e-6)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():  # non-trivial norms and larger weights, so that logits differ clearly between tokens
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))
    (run / "run.json").write_text(json.dumps({"model": cfg.model_dump(), "context": 64}))
    save_model(model, str(run / "checkpoints" / "step_00000005.safetensors"))
    torch.save({}, run / "checkpoints" / "step_00000005.state.pt")
    model.cfg = cfg.model_copy(update={"max_seq_len": 64})
    return run, model.eval(), tok


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("gguf"))


def _field(reader, key):
    field = reader.fields[key]
    return field.contents()


# --- the file, read back by the gguf package -------------------------------------------------


def test_metadata_says_what_llama_cpp_needs(tied, tmp_path):
    run, model, tok = tied
    reader = gguf.GGUFReader(export_gguf(run, tmp_path / "m.gguf"))
    eot = tok.token_to_id("<|endoftext|>")
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.context_length") == 64  # the trained context, not the model's room of 128
    assert _field(reader, "llama.embedding_length") == 64
    assert _field(reader, "llama.block_count") == 2
    assert _field(reader, "llama.attention.head_count") == _field(reader, "llama.attention.head_count_kv") == 4
    assert _field(reader, "llama.feed_forward_length") == model.cfg.ffn_dim
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(500.0)
    assert _field(reader, "llama.rope.dimension_count") == 16
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert _field(reader, "tokenizer.ggml.bos_token_id") == _field(reader, "tokenizer.ggml.eos_token_id") == eot
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == tok.get_vocab_size() and tokens[eot] == "<|endoftext|>"
    assert all(tokens[i] == piece for piece, i in tok.get_vocab().items())
    assert _field(reader, "tokenizer.ggml.token_type")[eot] == gguf.TokenType.CONTROL
    merges = json.loads(tok.to_str())["model"]["merges"]
    assert _field(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]


def _rotate_halves_back(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of the export's per-head row order: even rows first, then odd rows."""
    per = w.reshape(heads, -1, w.shape[1])
    return np.concatenate([per[:, 0::2], per[:, 1::2]], axis=1).reshape(w.shape)


@pytest.mark.parametrize("dtype,tol", [("f32", 0.0), ("f16", 2**-11), ("q8_0", (0.5 + 127 * 2**-11) / 127)])
def test_tensors_read_back_within_the_format_precision(tied, tmp_path, dtype, tol):
    """Every weight comes back; f32 exactly, f16 within half a unit of its 11-bit mantissa, q8_0 within
    half a step of its block's scale (max |w| / 127) plus the f16 rounding of that scale times 127; both
    bounds relative to the row's largest weight (which bounds the value and its block's maximum)."""
    run, model, _ = tied
    reader = gguf.GGUFReader(export_gguf(run, tmp_path / "m.gguf", dtype=dtype))
    got = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
           for t in reader.tensors}
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    want = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["norm.weight"]}
    for i in range(2):
        q, k, v = np.split(sd[f"blocks.{i}.attn.qkv.weight"], 3)
        gate, up = np.split(sd[f"blocks.{i}.mlp.fc.weight"], 2)
        got[f"blk.{i}.attn_q.weight"] = _rotate_halves_back(got[f"blk.{i}.attn_q.weight"], 4)
        got[f"blk.{i}.attn_k.weight"] = _rotate_halves_back(got[f"blk.{i}.attn_k.weight"], 4)
        want |= {f"blk.{i}.attn_q.weight": q, f"blk.{i}.attn_k.weight": k, f"blk.{i}.attn_v.weight": v,
                 f"blk.{i}.attn_output.weight": sd[f"blocks.{i}.attn.proj.weight"],
                 f"blk.{i}.ffn_gate.weight": gate, f"blk.{i}.ffn_up.weight": up,
                 f"blk.{i}.ffn_down.weight": sd[f"blocks.{i}.mlp.proj.weight"],
                 f"blk.{i}.attn_norm.weight": sd[f"blocks.{i}.attn_norm.weight"],
                 f"blk.{i}.ffn_norm.weight": sd[f"blocks.{i}.mlp_norm.weight"]}
    assert set(got) == set(want)  # tied: no output.weight, llama.cpp reuses the embedding
    for name, w in want.items():
        scale = np.abs(w).max(axis=-1, keepdims=True) if w.ndim > 1 else 0.0
        assert got[name].shape == w.shape
        assert (np.abs(got[name] - w) <= tol * scale + 1e-7 * (tol > 0)).all(), name
        if w.ndim == 1:
            assert reader.tensors[[t.name for t in reader.tensors].index(name)].tensor_type == \
                gguf.GGMLQuantizationType.F32  # norms stay float32 whatever --dtype says


def test_untied_head_and_padded_vocabulary(tmp_path):
    run, model, tok = make_run(tmp_path, tie=False, extra_vocab=5)
    reader = gguf.GGUFReader(export_gguf(run, tmp_path / "m.gguf"))
    names = {t.name: t for t in reader.tensors}
    head = names["output.weight"].data.reshape(model.cfg.vocab_size, 64)
    assert np.array_equal(head, model.head.weight.detach().numpy())
    tokens, types = _field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == model.cfg.vocab_size == _field(reader, "llama.vocab_size")
    assert tokens[-1] == f"[PAD{model.cfg.vocab_size - 1}]" and types[-1] == gguf.TokenType.UNUSED


def test_refusals(tied, tmp_path):
    run, _, _ = tied
    neo = tmp_path / "neo"
    neo.mkdir()
    (neo / "checkpoints").symlink_to(run / "checkpoints")
    (neo / "tokenizer.json").write_bytes((run / "tokenizer.json").read_bytes())
    info = json.loads((run / "run.json").read_text())
    info["model"]["family"] = "neo"
    (neo / "run.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="neo family has no llama.cpp architecture"):
        export_gguf(neo, tmp_path / "neo.gguf")
    with pytest.raises(UserError, match="--dtype q4"):
        export_gguf(run, tmp_path / "m.gguf", dtype="q4")
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not a GGUF file"):
        export_gguf(run, tmp_path / "notes.txt", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "precious"
    export_gguf(run, tmp_path / "m.gguf")
    with pytest.raises(UserError, match="--overwrite"):
        export_gguf(run, tmp_path / "m.gguf")
    export_gguf(run, tmp_path / "m.gguf", dtype="f16", overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_cli_export_gguf(tied, tmp_path, capsys):
    from tinyscale.cli import main

    run, _, _ = tied
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "m.gguf"), "--format", "gguf",
                 "--dtype", "q8_0"]) == 0
    assert "llama" in capsys.readouterr().out
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "hf"), "--dtype", "f16"]) == 2


# --- the file, run by llama.cpp ---------------------------------------------------------------


@pytest.fixture
def llama(monkeypatch):
    """llama.cpp on one thread with a float32 KV cache (its default is f16, which would blur the f32
    comparison) and without its extra buffer types (weights repacked for AMX and the like): the AMX q8_0
    matrix product crashes on CPUs that have AMX (llama.cpp issues #19184, #20824), and the repacked
    layouts are a speed matter, not the file's."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding (llama-cpp-python, dev extra)")
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = defaults()
        params.use_extra_bufts = False
        return params

    monkeypatch.setattr(llama_cpp.llama_cpp, "llama_model_default_params", without_extra_buffers)
    f32 = llama_cpp.GGML_TYPE_F32

    def load(path, **kwargs):
        return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_ubatch=64, n_threads=1,
                               n_threads_batch=1, type_k=f32, type_v=f32, verbose=False, **kwargs)
    return load


def test_llama_cpp_tokenizes_as_we_do(tied, tmp_path, llama):
    """Several hundred texts: llama.cpp's ids equal our tokenizer's as tinyscale serve uses it
    (`encode(text, add_special_tokens=False)`, the end-of-text token spelled out is that token), and with
    add_bos llama.cpp prepends the end-of-text token, as tinyscale does before every prompt; token pieces
    decode to our text."""
    run, _, tok = tied
    llm = llama(export_gguf(run, tmp_path / "m.gguf"), vocab_only=True)
    eot = tok.token_to_id("<|endoftext|>")
    texts = probe_texts()
    assert len(texts) == 300 and len({t for t in texts}) > 290
    ours = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    theirs = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
    differ = [(t, a, b) for t, a, b in zip(texts, ours, theirs, strict=True) if a != b]
    assert not differ, f"{len(differ)} of {len(texts)} texts tokenize differently, e.g. {differ[:3]}"
    assert sum(len(ids) for ids in ours) > 3000  # the texts are not trivially short
    assert llm.tokenize(texts[0].encode(), add_bos=True, special=True) == [eot, *ours[0]]
    # Back to text token by token, as generated text is streamed: the same bytes as our decoder's.
    decoded = [llm.detokenize(ids, special=True) for ids in ours]
    assert decoded == [tok.decode(ids, skip_special_tokens=False).encode() for ids in ours]
    llm.close()


def _llama_greedy(llm, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """llama.cpp's own greedy continuation of `prompt`, one token at a time through its cache, and the
    logits at every position."""
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out, np.array(llm.scores[: llm.n_tokens])


# Largest |logit difference| allowed, as a share of the largest |logit|. f32: the same float32 arithmetic
# in another order (sums of 64-192 terms through two layers; measured 3e-7). f16: the matrices rounded to
# 11-bit mantissas, and ggml rounds the activations to f16 as well before its f16 products (relative
# error ~2^-11 per term, compounding through two layers; measured 6e-4). q8_0: weights, and activations
# before each product, as 8-bit integers per block of 32 (up to half a step of max/127 each; measured
# 1.4e-2). Each bound is several times the measured error (2026-12-06, llama-cpp-python 0.3.36).
TOLERANCE = {"f32": 1e-5, "f16": 5e-3, "q8_0": 5e-2}


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_llama_cpp_continues_as_we_do(tied, tmp_path, llama, dtype):
    """Greedy tokens and logits: llama.cpp on the exported file against tinyscale's own model. f32: the
    same greedy continuation, token for token, and logits within float32 rounding. f16 and q8_0: logits
    within the format's precision (TOLERANCE), and the same next token wherever ours leads the runner-up
    by more than twice that (elsewhere rounding may legitimately pick the other)."""
    run, model, tok = tied
    llm = llama(export_gguf(run, tmp_path / "m.gguf", dtype=dtype), logits_all=True)
    prompt = llm.tokenize(STORIES[2].encode(), add_bos=True)
    assert prompt[0] == tok.token_to_id("<|endoftext|>") and len(prompt) > 15
    new = 64 - len(prompt)
    ours = generate(model, [prompt], new, temperature=0.0)[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ours]))[0, :-1].numpy()
    theirs, their_logits = _llama_greedy(llm, prompt, new)
    tol = TOLERANCE[dtype] * np.abs(logits).max()
    assert logits.std() > 0.3  # logits that tell tokens apart
    if dtype == "f32":
        assert theirs == ours
    their_logits = their_logits[: len(logits)]  # the last token's logits are llama.cpp's alone
    err = np.abs(their_logits - logits).max() if theirs == ours else None
    if err is None:  # diverged: compare on our sequence instead (teacher forcing)
        llm.reset()
        llm.eval(prompt + ours[:-1])
        err = np.abs(np.array(llm.scores[: llm.n_tokens]) - logits).max()
        their_logits = np.array(llm.scores[: llm.n_tokens])
    assert err <= tol, f"{dtype}: logits differ by {err:.3g} (allowed {tol:.3g})"
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tol
    assert clear.sum() > len(logits) // 2
    assert (their_logits[clear].argmax(1) == logits[clear].argmax(1)).all()
    llm.close()
