"""Export a run's checkpoint as one GGUF file, the format of llama.cpp and the tools built on it
(Ollama, LM Studio, llama-cpp-python), written with the `gguf` package (the `gguf` extra).

What the file tells llama.cpp, and why each value is what it is:

- Architecture `llama`: only the llama family (RMSNorm, rotary positions, SwiGLU, no biases) has a
  llama.cpp architecture that computes what our model computes; a neo-family run is refused (its
  Hugging Face export serves transformers-based tools). Every llama-family shape exports: any width,
  depth, head count, tied or untied head.
- Rotary positions: we rotate the two halves of each head (as Hugging Face's Llama); llama.cpp's `llama`
  architecture rotates adjacent pairs. The query and key rows of each head are reordered (first half to
  the even rows, second half to the odd ones) so the same pairs meet the same angles; the attention
  scores, and so the model, are unchanged. `rope.freq_base` is the run's `rope_theta`, the rotary
  dimension the head size, `layer_norm_rms_epsilon` the run's `norm_eps`.
- `context_length` is the context the run was trained at (`runs.load_model`), as in the HF export.
- Tokenizer `gpt2` (byte-level BPE: our vocabulary and merges as they are) with pre-tokenizer `gpt-2`:
  llama.cpp then splits text with the regex of GPT-2, which is what our `ByteLevel(add_prefix_space=
  False)` pre-tokenizer applies (no normalizer, no prefix space), so llama.cpp's ids equal ours
  (tests/test_export_gguf.py checks 300 texts), and its token pieces spell our text. One difference
  remains, in llama.cpp's whole-text `llama_detokenize` alone (e.g. llama-server's /detokenize; not
  in generated text, which is streamed piece by piece): for every `gpt-2`-labelled vocabulary it
  "cleans up" spaces, dropping the space before ? ! . , and around some apostrophes (" ' ", " 's",
  " 'm"...), so such texts come back changed (37 of the 300 test texts). The labels `trillion` and
  `granite-docling` split text with the same regex without that clean-up, but llama.cpp builds older
  than those models (as Ollama may ship) refuse a label they do not know, while every build knows
  `gpt-2`. The end-of-text token is bos, eos and
  padding, and `add_bos_token` is true: llama.cpp prepends it to a prompt as tinyscale does (every story
  is read after one). Ids the model has beyond the tokenizer's are written as unused `[PAD<id>]` tokens.
- `--dtype`: f32 (exact), f16 or q8_0 for the matrices (llama.cpp's own choices); the norm weights
  stay f32 as llama.cpp requires. q8_0 quantizes rows in blocks of 32; a matrix whose rows are not a
  multiple of 32 long is written f16 instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from tinyscale import runs
from tinyscale.errors import UserError
from tinyscale.fileio import set_file_mode
from tinyscale.generate import eot_id_of
from tinyscale.model import Transformer
from tinyscale.validate import check_output

DTYPES = ("f32", "f16", "q8_0")
MAGIC = b"GGUF"


def check_exportable(cfg) -> None:
    """Refuse, in one line, a model that llama.cpp has no architecture for."""
    if cfg.family != "llama":
        raise UserError(f"export --format gguf: the {cfg.family} family has no llama.cpp architecture (only llama-"
                        "family runs export to GGUF; --format hf exports any run)")


def _interleave_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a query/key matrix reordered per head from rotate-halves to rotate-adjacent-pairs."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names, float32, in PyTorch's (out, in) layout."""
    cfg = model.cfg
    sd = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["norm.weight"]}
    if not cfg.tie_embeddings:
        out["output.weight"] = sd["head.weight"]
    for i in range(cfg.n_layers):
        ours, blk = f"blocks.{i}.", f"blk.{i}."
        q, k, v = np.split(sd[ours + "attn.qkv.weight"], 3)
        gate, up = np.split(sd[ours + "mlp.fc.weight"], 2)
        out |= {
            blk + "attn_norm.weight": sd[ours + "attn_norm.weight"],
            blk + "attn_q.weight": _interleave_rotary(q, cfg.n_heads),
            blk + "attn_k.weight": _interleave_rotary(k, cfg.n_heads),
            blk + "attn_v.weight": v,
            blk + "attn_output.weight": sd[ours + "attn.proj.weight"],
            blk + "ffn_norm.weight": sd[ours + "mlp_norm.weight"],
            blk + "ffn_gate.weight": gate,
            blk + "ffn_up.weight": up,
            blk + "ffn_down.weight": sd[ours + "mlp.proj.weight"],
        }
    return {name: np.ascontiguousarray(t) for name, t in out.items()}


def _add_tensor(writer, name: str, w: np.ndarray, dtype: str) -> None:
    import gguf

    if w.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, w)
    elif dtype == "q8_0" and w.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(w, q8), raw_dtype=q8)
    else:
        writer.add_tensor(name, w.astype(np.float16))


def _add_hparams(writer, cfg) -> None:
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.ffn_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_heads)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)


def _merges(spec: dict) -> list[str]:
    merges = spec["model"].get("merges", [])
    # tokenizers writes a merge as "a b" (older versions) or ["a", "b"] (newer ones).
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _add_tokenizer(writer, tokenizer, vocab_size: int, eot_id: int | None) -> None:
    import gguf

    spec = json.loads(tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if (spec["model"].get("type") != "BPE" or spec.get("normalizer") is not None or pre.get("type") != "ByteLevel"
            or pre.get("add_prefix_space") or not pre.get("use_regex", True)):
        raise UserError("export --format gguf: the run's tokenizer is not tinyscale's byte-level BPE (no normalizer, "
                        "ByteLevel pre-tokenizer without prefix space); llama.cpp could not tokenize as it does")
    by_id = {i: piece for piece, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    special = set(tokenizer.get_added_tokens_decoder())
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_merges(spec))
    if eot_id is None:  # nothing to start a prompt with, as in tinyscale
        writer.add_add_bos_token(False)
        return
    writer.add_bos_token_id(eot_id)
    writer.add_eos_token_id(eot_id)
    writer.add_pad_token_id(eot_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def _is_gguf(path: Path) -> bool:
    with contextlib.suppress(OSError), open(path, "rb") as f:
        return f.read(4) == MAGIC
    return False


def export_gguf(run_dir: str | Path, out: str | Path, step: int | None = None, dtype: str = "f32",
                overwrite: bool = False) -> Path:
    """Write one GGUF file for a run's checkpoint (the last one by default); return `out`."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: GGUF export writes one of {', '.join(DTYPES)}")
    check_output(out, {"run folder": run_dir}, file=True, overwrite=overwrite, ours=_is_gguf, what="a GGUF file")
    try:
        import gguf
    except ImportError:
        raise UserError("export --format gguf: needs the gguf package (pip install 'tinyscale[gguf]')") from None

    run_dir, out = Path(run_dir), Path(out)
    check_exportable(runs.model_config(run_dir, runs.read_run(run_dir)))  # before loading any weights
    model, step = runs.load_model(run_dir, step)
    tokenizer = runs.load_tokenizer(run_dir)
    if tokenizer.get_vocab_size() > model.cfg.vocab_size:
        raise UserError(f"{run_dir / 'tokenizer.json'}: {tokenizer.get_vocab_size()} tokens but the model "
                        f"has a vocabulary of {model.cfg.vocab_size}")
    eot_id = eot_id_of(tokenizer)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        writer.add_name(run_dir.resolve().name)
        writer.add_description(f"tinyscale run {run_dir.resolve().name}, checkpoint step {step}")
        writer.add_file_type(ftype)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(writer, model.cfg)
        _add_tokenizer(writer, tokenizer, model.cfg.vocab_size, eot_id)
        for name, w in gguf_tensors(model).items():
            _add_tensor(writer, name, w, dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        set_file_mode(tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:  # after a failure: no half-written file left behind
        writer.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out
