"""Typed configurations. YAML or CLI flags in, a resolved JSON (in run.json) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class Family:
    """What sets one model family apart; model.py builds every family from the same skeleton."""

    norm: Literal["rmsnorm", "layernorm"]
    mlp: Literal["swiglu", "gelu"]  # swiglu: silu(gate) * up, three matrices; gelu: two
    positions: Literal["rotary", "learned"]  # rotary queries/keys, or a learned table added to the embedding
    bias: bool  # on the attention output and both MLP projections; q/k/v and the head never have one


FAMILIES: dict[str, Family] = {
    # Llama and llama2.c
    "llama": Family(norm="rmsnorm", mlp="swiglu", positions="rotary", bias=False),
    # GPT-Neo, the architecture of the TinyStories models
    "neo": Family(norm="layernorm", mlp="gelu", positions="learned", bias=True),
}


def _known_family(name: str) -> str:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r} (known: {', '.join(FAMILIES)})")
    return name


FamilyName = Annotated[str, AfterValidator(_known_family)]

# Names follow the TinyStories grid (and llama2.c's 15M); the exact counts depend on the vocabulary.
# Heads are chosen so head_dim stays within 16..64.
PRESETS: dict[str, dict] = {
    "100K": {"d_model": 32, "n_layers": 2, "n_heads": 2},
    "300K": {"d_model": 64, "n_layers": 4, "n_heads": 4},
    "1M": {"d_model": 64, "n_layers": 8, "n_heads": 4},
    "3M": {"d_model": 128, "n_layers": 8, "n_heads": 4},
    "8M": {"d_model": 256, "n_layers": 8, "n_heads": 8},
    "15M": {"d_model": 288, "n_layers": 6, "n_heads": 6},
    "28M": {"d_model": 512, "n_layers": 8, "n_heads": 8},
    "33M": {"d_model": 768, "n_layers": 4, "n_heads": 12},
    "21M-1L": {"d_model": 1024, "n_layers": 1, "n_heads": 16},
}


class ModelConfig(BaseModel):
    """Shape of a decoder-only transformer (its family is a key of FAMILIES)."""

    model_config = ConfigDict(extra="forbid")

    family: FamilyName = "llama"
    vocab_size: int = Field(4096, ge=2)
    d_model: int = Field(128, ge=8)
    n_layers: int = Field(8, ge=1)
    n_heads: int = Field(4, ge=1)
    # Hidden width of the MLP; None picks the default of the family's MLP (gelu: 4*d, swiglu: ~8/3*d rounded).
    d_ff: int | None = None
    max_seq_len: int = Field(512, ge=1)
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.arch.positions == "rotary" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"{self.family} family needs an even head dimension for rotary positions")
        return self

    @property
    def arch(self) -> Family:
        """The parts this model's family is built from."""
        return FAMILIES[self.family]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        if self.arch.mlp == "swiglu":
            # SwiGLU has three matrices; 8/3*d keeps its parameter count equal to a 4*d GELU MLP.
            return 32 * ((8 * self.d_model // 3 + 31) // 32)
        return 4 * self.d_model


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes; stored resolved in run.json "config".

    Field names are the `tinyscale train` flags in snake_case (`--grad-accum` is `grad_accum`).
    """

    model_config = ConfigDict(extra="forbid")

    data: str  # shards folder (made absolute when the run starts)
    # Model shape: a preset from PRESETS, each dimension overridable.
    preset: str | None = "3M"
    family: FamilyName = "llama"
    d_model: int | None = Field(None, ge=8)
    n_layers: int | None = Field(None, ge=1)
    n_heads: int | None = Field(None, ge=1)
    tie_embeddings: bool = True
    max_seq_len: int | None = Field(None, ge=1)  # None: seq_len (the context the model is trained at)
    # Budget and batch. `batch` is the global number of sequences per micro-step (split over DDP
    # ranks), so one step sees batch * seq_len * grad_accum tokens whatever the number of processes.
    tokens: int = Field(20_000_000, ge=1)
    batch: int = Field(32, ge=1)
    seq_len: int = Field(256, ge=1)
    grad_accum: int = Field(1, ge=1)
    # AdamW with linear warmup then cosine decay to min_lr.
    lr: float = Field(1e-3, gt=0)
    min_lr: float | None = Field(None, ge=0)  # None: lr / 10
    warmup: int = Field(100, ge=0)  # steps
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)  # 0 turns clipping off
    seed: int = 0
    # Bookkeeping, in optimizer steps.
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(250, ge=0)  # 0: evaluate only at the end
    eval_tokens: int = Field(65_536, ge=1)
    # Validation windows are added until every labeled skill has this many tokens (evaluate/loss.py).
    eval_min_skill_tokens: int = Field(2000, ge=0)
    checkpoint_every: int = Field(500, ge=1)
    dense_checkpoints: int = Field(0, ge=0)  # also keep steps 1, 2, 4, ... up to this one
    # Execution: these may change when a run is resumed.
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast where the hardware has it
    compile: bool = False
    device: str = "auto"
    threads: int | None = Field(None, ge=1)  # None: all cores (split between local DDP ranks)

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len * self.grad_accum

    @property
    def steps(self) -> int:
        return -(-self.tokens // self.tokens_per_step)
