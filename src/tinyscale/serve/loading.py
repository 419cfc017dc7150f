"""Open what `tinyscale serve` is pointed at: a run folder or a Hugging Face folder from `tinyscale export`.

A run folder is read with the run loaders (`runs.load_model`, `runs.load_tokenizer`). An exported
folder holds the weights under Hugging Face names; `tinyscale.json` (written by export) gives our
ModelConfig, and the weights are mapped back by inverting `export.hf_state_dict`, so the served model
is the same `Transformer` whichever folder it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tinyscale import runs
from tinyscale.errors import UserError
from tinyscale.fileio import read_json
from tinyscale.model import Transformer


@dataclass
class Served:
    """One model the server answers for."""

    name: str
    model: Transformer
    tokenizer: object  # tokenizers.Tokenizer
    source: str  # "run dir @ step N" or "HF folder"


def _from_llama(sd: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    out = {"tok_emb.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    for i in range(n_layers):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        a, m = hf + "self_attn.", hf + "mlp."
        out |= {
            ours + "attn_norm.weight": sd[hf + "input_layernorm.weight"],
            ours + "attn.qkv.weight": torch.cat([sd[a + p + "_proj.weight"] for p in "qkv"]),
            ours + "attn.proj.weight": sd[a + "o_proj.weight"],
            ours + "mlp_norm.weight": sd[hf + "post_attention_layernorm.weight"],
            ours + "mlp.fc.weight": torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]]),
            ours + "mlp.proj.weight": sd[m + "down_proj.weight"],
        }
    return out


def _from_neo(sd: dict[str, Tensor], n_layers: int, head_dim: int) -> dict[str, Tensor]:
    out = {"tok_emb.weight": sd["transformer.wte.weight"], "pos_emb.weight": sd["transformer.wpe.weight"],
           "norm.weight": sd["transformer.ln_f.weight"], "norm.bias": sd["transformer.ln_f.bias"]}
    for i in range(n_layers):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        a = hf + "attn.attention."
        # Export folded 1/sqrt(head_dim) into the queries (GPT-Neo does not scale scores): undo it.
        q = sd[a + "q_proj.weight"] * math.sqrt(head_dim)
        out |= {
            ours + "attn_norm.weight": sd[hf + "ln_1.weight"], ours + "attn_norm.bias": sd[hf + "ln_1.bias"],
            ours + "attn.qkv.weight": torch.cat([q, sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]]),
            ours + "attn.proj.weight": sd[a + "out_proj.weight"], ours + "attn.proj.bias": sd[a + "out_proj.bias"],
            ours + "mlp_norm.weight": sd[hf + "ln_2.weight"], ours + "mlp_norm.bias": sd[hf + "ln_2.bias"],
            ours + "mlp.fc.weight": sd[hf + "mlp.c_fc.weight"], ours + "mlp.fc.bias": sd[hf + "mlp.c_fc.bias"],
            ours + "mlp.proj.weight": sd[hf + "mlp.c_proj.weight"], ours + "mlp.proj.bias": sd[hf + "mlp.c_proj.bias"],
        }
    return out


def load_hf_folder(folder: Path, device: str) -> tuple[Transformer, object]:
    """(model in eval mode, tokenizer) from a folder written by `tinyscale export`."""
    from safetensors.torch import load_file

    from tinyscale.config import ModelConfig

    meta_path = folder / "tinyscale.json"
    if not meta_path.is_file():
        raise UserError(f"{folder}: not a run folder (no run.json) nor a `tinyscale export` folder (no tinyscale.json)")
    meta = read_json(meta_path)
    try:
        cfg = ModelConfig(**meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{meta_path}: invalid model entry ({str(e).splitlines()[0]})") from None
    weights = folder / "model.safetensors"
    try:
        sd = load_file(str(weights))
        ours = _from_llama(sd, cfg.n_layers) if cfg.family == "llama" else _from_neo(sd, cfg.n_layers, cfg.head_dim)
        if not cfg.tie_embeddings:
            ours["head.weight"] = sd["lm_head.weight"]
        model = Transformer(cfg)
        missing, unexpected = model.load_state_dict(ours, strict=False)
    except Exception as e:  # safetensors and torch raise assorted types on bad files
        raise UserError(f"{weights}: cannot load weights ({e})") from None
    # The tied head shares the embedding's storage, so only that name may be "missing".
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "head.weight")]
    if missing or unexpected:
        raise UserError(f"{weights}: weights do not match {folder / 'tinyscale.json'} "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval(), runs.load_tokenizer(folder)


def load_served(path: str, name: str | None, step: int | None, device: torch.device) -> Served:
    """A run folder (checkpoint `step`, default the last) or an exported Hugging Face folder."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{path}: folder not found")
    name = name or folder.resolve().name
    if (folder / "run.json").is_file():
        model, step = runs.load_model(folder, step, device=str(device))
        return Served(name, model, runs.load_tokenizer(folder), f"{folder} @ step {step}")
    if step is not None:
        raise UserError(f"--checkpoint: {path} is an exported folder with a single checkpoint")
    model, tokenizer = load_hf_folder(folder, str(device))
    return Served(name, model, tokenizer, f"{folder} (exported)")
