"""Typed configurations. YAML or CLI flags in, a resolved JSON (in run.json) out."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ModelConfig(BaseModel):
    """Shape of a decoder-only transformer (see model.py for the two families)."""

    model_config = ConfigDict(extra="forbid")

    family: Literal["llama", "neo"] = "llama"
    vocab_size: int = Field(4096, ge=2)
    d_model: int = Field(128, ge=8)
    n_layers: int = Field(8, ge=1)
    n_heads: int = Field(4, ge=1)
    # Hidden width of the MLP; None picks the family default (neo: 4*d, llama: ~8/3*d rounded).
    d_ff: int | None = None
    max_seq_len: int = Field(512, ge=1)
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.family == "llama" and (self.d_model // self.n_heads) % 2:
            raise ValueError("llama family needs an even head dimension for rotary positions")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.family == "neo":
            return 4 * self.d_model
        # SwiGLU has three matrices; 8/3*d keeps its parameter count equal to a 4*d GELU MLP.
        return 32 * ((8 * self.d_model // 3 + 31) // 32)
