"""Typed configurations. YAML or CLI flags in, a resolved JSON (in run.json) out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_serializer, model_validator


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

# Experiment trackers a run can also log to (tinyscale/tracking.py); metrics.jsonl stays the record.
TrackerName = Literal["tensorboard", "wandb", "mlflow"]
Trackers = list[TrackerName]  # a name given twice is one tracker
TRACK_HELP = "also log to tensorboard, wandb (offline without a key) or mlflow; files under the run folder (repeatable)"


@dataclass(frozen=True)
class Structure:
    """How a model for the instruct format reads its input (the header) and writes its target (the
    story); docs/structure.md. `cross` "none" is one stack over [input; target]; otherwise an
    encoder reads the input and the decoder cross-attends to it."""

    bidirectional: bool  # attention over the input sees the whole input (False: causal, as the target)
    cross: Literal["none", "final", "layerwise"]  # decoder layer i attends to the final / i-th encoder layer
    separate: bool  # encoder and decoder have their own blocks (False: one set of blocks, read twice)


# From the most structure to the least, each step removing one (Chung's encoder-decoder to decoder-only).
STRUCTURES: dict[str, Structure] = {
    "encdec": Structure(bidirectional=True, cross="final", separate=True),
    "encdec-shared": Structure(bidirectional=True, cross="final", separate=False),
    "encdec-shared-layerwise": Structure(bidirectional=True, cross="layerwise", separate=False),
    "prefix": Structure(bidirectional=True, cross="none", separate=False),
    "decoder": Structure(bidirectional=False, cross="none", separate=False),
}


def _known_structure(name: str | None) -> str | None:
    if name is not None and name not in STRUCTURES:
        raise ValueError(f"unknown structure {name!r} (known: {', '.join(STRUCTURES)})")
    return name


StructureName = Annotated[str | None, AfterValidator(_known_structure)]

# The largest seed any verb takes: a signed 64-bit integer.
SEED_MAX = 2**63 - 1

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
    # None: the language model over windows of the corpus; else a key of STRUCTURES (structure.py).
    structure: StructureName = None

    @model_serializer(mode="wrap")
    def _omit_no_structure(self, handler):
        # Runs without a structure keep the run.json "model" they always had (resume compares it).
        out = handler(self)
        if out.get("structure", 0) is None:
            del out["structure"]
        return out

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

    This is the one declaration of the training options: `tinyscale train` makes its flags from these
    fields (the name in kebab case, `description` as the help, the default in the help) and
    `validate.limits()["train"]` its ranges from their ge/gt/le/lt, so the command line, a `--config`
    or sweep YAML and `TrainConfig(...)` in Python accept the same values. An upper limit (`le`) keeps
    a run within memory and time; `why` in `json_schema_extra` says what it protects in the message.
    """

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="shards folder written by `tinyscale tokenize`")  # made absolute at the start
    # Model shape: a preset from PRESETS, each dimension overridable.
    preset: str | None = Field("3M", description="size preset, e.g. 1M, 3M, 8M, 28M, 33M, 21M-1L")
    family: FamilyName = Field("llama", description="architecture: norm, MLP and positions (tinyscale.config.FAMILIES)")
    structure: StructureName = Field(None, description="instruct-format structure: encdec, encdec-shared, "
                                     "encdec-shared-layerwise, prefix, decoder (default: a language model over "
                                     "windows; docs/structure.md)")
    input_len: int = Field(64, ge=1, le=2**16, description="with --structure: input (header) tokens per example; "
                           "--seq-len is then the target (story) tokens")
    d_model: int | None = Field(None, ge=8, le=2**15, description="width (default: the preset's)")
    n_layers: int | None = Field(None, ge=1, le=1024, description="layers (default: the preset's)")
    n_heads: int | None = Field(None, ge=1, le=1024, description="attention heads (default: the preset's)")
    tie_embeddings: bool = Field(True, description="share the input embedding with the output head")
    max_seq_len: int | None = Field(None, ge=1, le=2**20, description="model positions (default: --seq-len; the run "
                                    "is used within --seq-len, the context it trains at)")
    # Budget and batch. `batch` is the global number of sequences per micro-step (split over DDP
    # ranks), so one step sees batch * seq_len * grad_accum tokens whatever the number of processes.
    tokens: int = Field(20_000_000, ge=1, le=10**13, description="training tokens, e.g. 20M (steps = ceil(tokens / "
                        "(batch * seq-len * grad-accum)))")
    batch: int = Field(32, ge=1, le=2**20, description="sequences per micro-step, over all processes")
    seq_len: int = Field(256, ge=1, le=2**20, description="tokens per training sequence (the context trained at)")
    grad_accum: int = Field(1, ge=1, le=2**16, description="micro-steps per optimizer step")
    # AdamW with linear warmup then cosine decay to min_lr.
    lr: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    min_lr: float | None = Field(None, ge=0, description="end of the cosine decay (default lr/10)")
    warmup: int = Field(100, ge=0, le=10**9, description="linear warmup steps")
    weight_decay: float = Field(0.1, ge=0, le=10.0, description="AdamW weight decay")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    grad_clip: float = Field(1.0, ge=0, le=1e6, description="max gradient norm (0: off)")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the initialisation and the batch order")
    # Bookkeeping, in optimizer steps.
    log_every: int = Field(10, ge=1, le=10**9, description="steps between metrics lines")
    eval_every: int = Field(250, ge=0, le=10**9, description="steps between evaluations (0: at the end)")
    eval_tokens: int = Field(65_536, ge=1, le=2**30, description="validation tokens per evaluation (evenly spaced "
                             "windows)")
    # Validation windows are added until every labeled skill has this many tokens (evaluate/loss.py).
    eval_min_skill_tokens: int = Field(
        2000, ge=0, le=2**30, description="add windows until every labeled skill has N validation tokens",
        json_schema_extra={"metavar": "N", "why": " (validation tokens scored at every evaluation)"})
    # A deadline as well as a token target: the run stops at whichever comes first and ends as a
    # finished run does (final evaluation, checkpoint, run.json "end"), so a budget holds on a busy machine.
    max_minutes: float | None = Field(None, gt=0, le=10**6, description="stop training after this many minutes "
                                      "of the run's wall time (carried across resumes), as if its tokens were done "
                                      "(default: no deadline)")
    checkpoint_every: int = Field(500, ge=1, le=10**9, description="steps between checkpoints")
    dense_checkpoints: int = Field(0, ge=0, le=10**9, description="also keep checkpoints at steps 1, 2, 4, ... up "
                                   "to STEP", json_schema_extra={"metavar": "STEP"})
    track: Trackers = Field([], description=TRACK_HELP, json_schema_extra={"metavar": "NAME"})
    # Execution: these may change when a run is resumed.
    dtype: Literal["auto", "fp32", "bf16"] = Field(
        "fp32", description="fp32 (exact, the default); bf16: autocast; auto: bf16 where the device runs it natively")
    compile: bool = Field(False, description="torch.compile")
    device: str = Field("auto", description="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    # At most this machine's cores: validate.limits() adds that bound, which no static Field can hold.
    threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores, split between local "
                                "DDP ranks)")

    @property
    def tokens_per_step(self) -> int:
        return self.batch * self.seq_len * self.grad_accum

    @property
    def steps(self) -> int:
        return -(-self.tokens // self.tokens_per_step)
