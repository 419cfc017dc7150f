import json

import pytest
import torch
from safetensors.torch import save_model

from tinyscale.errors import UserError
from tinyscale.export import export_hf
from tinyscale.model import Transformer, model_config

transformers = pytest.importorskip("transformers")

TEXT = ["Once upon a time there was a little dog named Tom.", "Lily liked to play in the park with her ball.",
        "The sun was warm and the birds sang."] * 20


def make_run(root, family: str, tie: bool, seed: int = 0):
    """A run folder as the trainer writes it: run.json, tokenizer.json, one complete checkpoint."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    run = root / f"run-{family}-{tie}"
    (run / "checkpoints").mkdir(parents=True)
    tok.save(str(run / "tokenizer.json"))
    cfg = model_config(vocab_size=tok.get_vocab_size(), max_seq_len=64, family=family, d_model=32, n_layers=2,
                       n_heads=2, tie_embeddings=tie)
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping cannot hide behind init values
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    (run / "run.json").write_text(json.dumps({"model": cfg.model_dump()}))
    save_model(model, str(run / "checkpoints" / "step_00000000.safetensors"))
    torch.save({}, run / "checkpoints" / "step_00000000.state.pt")
    return run, model.eval(), tok


@pytest.mark.parametrize("family,arch", [("llama", "LlamaForCausalLM"), ("neo", "GPTNeoForCausalLM")])
@pytest.mark.parametrize("tie", [True, False])
def test_exported_model_gives_the_same_logits(tmp_path, family, arch, tie):
    run, model, tok = make_run(tmp_path, family, tie)
    out = export_hf(run, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    ids = torch.tensor([tok.encode(TEXT[0]).ids + tok.encode(TEXT[1]).ids])
    assert ids.shape[1] > 20
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4
    assert ours.std() > 0.1  # the comparison is between non-trivial logits

    hf_tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf_tok(TEXT[2])["input_ids"] == tok.encode(TEXT[2]).ids
    assert hf_tok.eos_token == "<|endoftext|>"


def test_export_refuses_bad_input(tmp_path):
    run, _, _ = make_run(tmp_path, "llama", True)
    with pytest.raises(UserError, match="no checkpoint at step 7"):
        export_hf(run, tmp_path / "hf", step=7)
    with pytest.raises(UserError, match="run folder not found"):
        export_hf(tmp_path / "missing", tmp_path / "hf")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="not empty"):
        export_hf(run, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"


def test_cli_sample_and_export(tmp_path, capsys):
    from tinyscale.cli import main

    run, _, _ = make_run(tmp_path, "neo", True)
    argv = ["-q", "sample", str(run), "--prompt", "Once upon a time", "-n", "3", "--max-new-tokens", "8"]
    assert main(argv) == 0
    out = capsys.readouterr()
    printed = out.out  # the stories; the header rules go to stderr
    assert printed.count("Once upon a time") == 3 and "sample 3/3" in out.err and "sample" not in printed
    assert main(argv) == 0 and capsys.readouterr().out == printed  # same seed, same stories
    assert main(["-q", "sample", str(run), "--checkpoint", "9"]) == 2
    assert "no checkpoint at step 9" in capsys.readouterr().err
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "config.json").is_file()
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "hf")]) == 2
