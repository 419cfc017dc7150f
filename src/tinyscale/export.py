"""Export a run's checkpoint as a Hugging Face folder.

`transformers.AutoModelForCausalLM.from_pretrained(out)` then loads it as `LlamaForCausalLM` (llama
family) or `GPTNeoForCausalLM` (neo) and computes the same logits as our model, so tools built on
transformers (lm-evaluation-harness, TransformerLens, vLLM) can use it. `transformers` is an optional
dependency (the `hf` extra), imported only here.

The exported model's context (`max_position_embeddings`, the tokenizer's `model_max_length`) is the
context the run was trained at, not the room its position tables may have: `runs.load_model` gives
the model that context, and a learned position table is written with the trained rows only.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from tinyscale import runs
from tinyscale.config import ModelConfig
from tinyscale.errors import UserError
from tinyscale.fileio import read_json, set_file_mode, staged_dir, write_json
from tinyscale.generate import eot_id_of
from tinyscale.model import Transformer
from tinyscale.model_card import write_model_card
from tinyscale.validate import check_output


def _llama_weights(model: Transformer) -> dict[str, Tensor]:
    cfg, sd = model.cfg, model.state_dict()
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm.weight"]}
    for i in range(cfg.n_layers):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.qkv.weight"].chunk(3, dim=0)
        gate, up = sd[ours + "mlp.fc.weight"].chunk(2, dim=0)
        out |= {
            hf + "input_layernorm.weight": sd[ours + "attn_norm.weight"],
            hf + "self_attn.q_proj.weight": q,
            hf + "self_attn.k_proj.weight": k,
            hf + "self_attn.v_proj.weight": v,
            hf + "self_attn.o_proj.weight": sd[ours + "attn.proj.weight"],
            hf + "post_attention_layernorm.weight": sd[ours + "mlp_norm.weight"],
            hf + "mlp.gate_proj.weight": gate,
            hf + "mlp.up_proj.weight": up,
            hf + "mlp.down_proj.weight": sd[ours + "mlp.proj.weight"],
        }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return out


def _neo_weights(model: Transformer) -> dict[str, Tensor]:
    cfg, sd = model.cfg, model.state_dict()
    out = {
        "transformer.wte.weight": sd["tok_emb.weight"],
        # Only the trained positions: max_position_embeddings is the trained context (runs.load_model).
        "transformer.wpe.weight": sd["pos_emb.weight"][: cfg.max_seq_len],
        "transformer.ln_f.weight": sd["norm.weight"],
        "transformer.ln_f.bias": sd["norm.bias"],
    }
    for i in range(cfg.n_layers):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        q, k, v = sd[ours + "attn.qkv.weight"].chunk(3, dim=0)
        out |= {
            hf + "ln_1.weight": sd[ours + "attn_norm.weight"],
            hf + "ln_1.bias": sd[ours + "attn_norm.bias"],
            # GPT-Neo does not scale attention scores by 1/sqrt(head_dim); scaling the queries gives
            # exactly the scores our attention computes.
            hf + "attn.attention.q_proj.weight": q / math.sqrt(cfg.head_dim),
            hf + "attn.attention.k_proj.weight": k,
            hf + "attn.attention.v_proj.weight": v,
            hf + "attn.attention.out_proj.weight": sd[ours + "attn.proj.weight"],
            hf + "attn.attention.out_proj.bias": sd[ours + "attn.proj.bias"],
            hf + "ln_2.weight": sd[ours + "mlp_norm.weight"],
            hf + "ln_2.bias": sd[ours + "mlp_norm.bias"],
            hf + "mlp.c_fc.weight": sd[ours + "mlp.fc.weight"],
            hf + "mlp.c_fc.bias": sd[ours + "mlp.fc.bias"],
            hf + "mlp.c_proj.weight": sd[ours + "mlp.proj.weight"],
            hf + "mlp.c_proj.bias": sd[ours + "mlp.proj.bias"],
        }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return out


def hf_state_dict(model: Transformer) -> dict[str, Tensor]:
    """Our weights under Hugging Face names (float32, contiguous, no shared storage)."""
    weights = _llama_weights(model) if model.cfg.family == "llama" else _neo_weights(model)
    return {name: t.detach().to("cpu", torch.float32).contiguous().clone() for name, t in weights.items()}


def hf_config(cfg: ModelConfig, eot_id: int | None = None):
    """The transformers config object (LlamaConfig or GPTNeoConfig) describing our model."""
    from transformers import GPTNeoConfig, LlamaConfig

    common = dict(vocab_size=cfg.vocab_size, max_position_embeddings=cfg.max_seq_len,
                  intermediate_size=cfg.ffn_dim, tie_word_embeddings=cfg.tie_embeddings,
                  bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id)
    if cfg.family == "llama":
        return LlamaConfig(**common, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                           num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
                           head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
                           hidden_act="silu", attention_bias=False, mlp_bias=False,
                           architectures=["LlamaForCausalLM"])
    # Every layer global: GPT-Neo's default alternates global and local (windowed) attention.
    return GPTNeoConfig(**common, hidden_size=cfg.d_model, num_layers=cfg.n_layers, num_heads=cfg.n_heads,
                        attention_types=[[["global"], cfg.n_layers]], activation_function="gelu_new",
                        layer_norm_epsilon=cfg.norm_eps, embed_dropout=0.0, attention_dropout=0.0,
                        resid_dropout=0.0, architectures=["GPTNeoForCausalLM"])


def _write_tokenizer(run_dir: Path, stage: Path, eot: str | None, max_len: int) -> None:
    from transformers import PreTrainedTokenizerFast

    special = {"bos_token": eot, "eos_token": eot, "pad_token": eot} if eot else {}
    tok = PreTrainedTokenizerFast(tokenizer_file=str(run_dir / "tokenizer.json"), model_max_length=max_len,
                                  **special)
    tok.save_pretrained(str(stage))


def export_hf(run_dir: str | Path, out: str | Path, step: int | None = None, overwrite: bool = False) -> Path:
    """Write a Hugging Face folder for a run's checkpoint (the last one by default); return `out`."""
    check_output(out, {"run folder": run_dir})  # before the slow import: a wrong --out fails at once
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise UserError("export: needs transformers (pip install 'tinyscale[hf]')") from None
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    run_dir = Path(run_dir)
    model, step = runs.load_model(run_dir, step)
    tokenizer = runs.load_tokenizer(run_dir)
    if tokenizer.get_vocab_size() > model.cfg.vocab_size:
        raise UserError(f"{run_dir / 'tokenizer.json'}: {tokenizer.get_vocab_size()} tokens but the model "
                        f"has a vocabulary of {model.cfg.vocab_size}")
    eot_id = eot_id_of(tokenizer)
    eot = tokenizer.id_to_token(eot_id) if eot_id is not None else None
    config = hf_config(model.cfg, eot_id)
    with staged_dir(out, overwrite=overwrite) as stage:
        config.save_pretrained(str(stage))
        if model.cfg.arch.positions == "rotary":
            # Older transformers read rope_theta at the top level; newer ones read rope_parameters.
            cfg_json = read_json(stage / "config.json")
            cfg_json.setdefault("rope_theta", model.cfg.rope_theta)
            write_json(stage / "config.json", cfg_json)
        try:
            save_file(hf_state_dict(model), str(stage / "model.safetensors"), metadata={"format": "pt"})
        except Exception as e:  # safetensors reports a full disk with its own error type
            raise UserError(f"{out}: cannot write model.safetensors ({e})") from None
        set_file_mode(stage / "model.safetensors")
        _write_tokenizer(run_dir, stage, eot, model.cfg.max_seq_len)
        GenerationConfig(bos_token_id=eot_id, eos_token_id=eot_id, pad_token_id=eot_id).save_pretrained(str(stage))
        write_json(stage / "tinyscale.json", {"run": str(run_dir.resolve()), "step": step,
                                              "model": model.cfg.model_dump()})
        write_model_card(run_dir, stage, step, shown_as=out)
    return Path(out)
