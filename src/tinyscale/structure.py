"""Models for the instruct format with more or less structure (config.STRUCTURES; docs/structure.md).

An example is one story of an instruct corpus split in two: the input (the end-of-text token before
the story and its header, up to and including ``Story:``) and the target (the story and the
end-of-text token after it); data/examples.py finds the split. A batch holds examples as one tensor
``w`` [B, S + T]: the input left-padded to S tokens, then the target right-padded to T tokens, with
``valid`` marking the real tokens. Every structure predicts the same T tokens ``w[:, S:]`` from the
same information, so their losses compare:

- ``decoder``: one causal stack over [input; target] (the decoder-only control).
- ``prefix``: the same stack, attention over the input bidirectional (prefix-LM).
- ``encdec-shared-layerwise``: an encoder pass over the input (bidirectional) and a decoder pass over
  the target (causal), both through the same blocks; decoder layer i cross-attends to encoder layer i.
- ``encdec-shared``: as above, but every decoder layer cross-attends to the final encoder layer.
- ``encdec``: separate encoder and decoder blocks; cross-attention to the final encoder layer.

The decoder's first input is the input's last token (the ``:`` of ``Story:``), which plays the part
of a start token, so the decoder reads the target shifted by one exactly as the one-stack models do.
The token embedding, position table (or rotary tables), final norm and head are shared by encoder
and decoder (as in T5 and BART). Positions: the input counts from 0 at its first real token; the
one-stack models continue counting into the target, the decoder counts from 0 at its start token.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinyscale.config import STRUCTURES, ModelConfig
from tinyscale.model import Block, Transformer, _norm, attention, count_params, init_weights


class CrossAttention(nn.Module):
    """Queries from the decoder stream, keys and values from encoder states; no positions (as T5)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.arch.bias)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        B, T, C = x.shape
        S = memory.shape[1]
        q = self.q(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(memory).view(B, S, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, mask, False)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class CrossLayer(nn.Module):
    """x + cross(norm(x), memory): what a decoder layer adds between its self-attention and MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = _norm(cfg)
        self.attn = CrossAttention(cfg)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        return x + self.attn(self.norm(x), memory, mask)


def input_positions(valid: Tensor) -> Tensor:
    """Position ids [B, L] counting real tokens from 0 (a left pad sits at 0 and is never attended)."""
    return (valid.long().cumsum(1) - 1).clamp(min=0)


def one_stack_mask(valid: Tensor, n_input: int, bidirectional: bool) -> Tensor:
    """[B, 1, L, L] boolean mask (True: may attend) of the one-stack models over L = valid.shape[1]
    positions: causal, plus the whole input for every query when `bidirectional`; padded keys never,
    and each query its own position (so a padded query's row is not empty)."""
    L = valid.shape[1]
    i = torch.arange(L, device=valid.device)
    allowed = i[None, :] <= i[:, None]
    if bidirectional:
        allowed = allowed | (i[None, :] < n_input)
    allowed = allowed[None] & valid[:, None, :]
    return (allowed | torch.eye(L, dtype=torch.bool, device=valid.device))[:, None]


class StructuredLM(nn.Module):
    """One of config.STRUCTURES over `cfg` (its n_layers: layers per stack). ``forward(w, valid,
    n_input)`` gives the logits (or final states) [B, T, ...] that predict ``w[:, n_input:]``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.structure is None:
            raise ValueError("StructuredLM needs cfg.structure")
        self.cfg = cfg
        self.st = STRUCTURES[cfg.structure]
        self.lm = Transformer(cfg)  # embeddings, the (decoder or only) blocks, final norm, head
        self.enc_blocks = (nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
                           if self.st.cross != "none" and self.st.separate else None)
        self.enc_norm = _norm(cfg) if self.st.cross != "none" else None
        self.cross = (nn.ModuleList(CrossLayer(cfg) for _ in range(cfg.n_layers))
                      if self.st.cross != "none" else None)
        self._init_extra()

    def _init_extra(self) -> None:
        # As the Transformer's own weights; the wrapped `lm` is initialised already.
        init_weights(((n, p) for n, p in self.named_parameters() if not n.startswith("lm.")), self.cfg.n_layers)

    @property
    def head(self) -> nn.Linear:
        return self.lm.head

    @property
    def blocks(self) -> nn.ModuleList:
        return self.lm.blocks

    def encode(self, src: Tensor, src_valid: Tensor) -> list[Tensor]:
        """The encoder's normalised states after every layer (layerwise) or the last only: what the
        decoder cross-attends to, computed once per input (sampling reuses it)."""
        x, rope = self.lm.embed(src, input_positions(src_valid))
        mask = one_stack_mask(src_valid, src.shape[1], bidirectional=True)
        states = []
        for layer, block in enumerate(self.enc_blocks if self.enc_blocks is not None else self.lm.blocks):
            x = block(x, rope, None, layer, mask, False)
            if self.st.cross == "layerwise":
                states.append(self.enc_norm(x))
        return states if states else [self.enc_norm(x)]

    def decode(self, memory: list[Tensor], src_valid: Tensor, tgt: Tensor, hidden: bool = False) -> Tensor:
        """Causal decoder over `tgt` (its first token: the input's last), cross-attending to `memory`."""
        T = tgt.shape[1]
        x, rope = self.lm.embed(tgt, self.lm.positions[:T])
        cross_mask = src_valid[:, None, None, :]
        for layer, block in enumerate(self.lm.blocks):
            x = x + block.attn(block.attn_norm(x), rope, None, layer, None, T > 1)
            x = self.cross[layer](x, memory[layer if len(memory) > 1 else 0], cross_mask)
            x = x + block.mlp(block.mlp_norm(x))
        x = self.lm.norm(x)
        return x if hidden else self.lm.head(x)

    def forward(self, w: Tensor, valid: Tensor, n_input: int, hidden: bool = False) -> Tensor:
        if self.st.cross != "none":
            memory = self.encode(w[:, :n_input], valid[:, :n_input])
            return self.decode(memory, valid[:, :n_input], w[:, n_input - 1:-1], hidden)
        x, v = w[:, :-1], valid[:, :-1]
        mask = one_stack_mask(v, n_input, self.st.bidirectional)
        out = self.lm(x, positions=input_positions(v), attn_mask=mask, hidden=hidden)
        return out[:, n_input - 1:]


def count_structured_params(cfg: ModelConfig, non_embedding: bool = False) -> int:
    """Exact parameter count of ``StructuredLM(cfg)``: the one-stack model's, plus per extra part
    a separate encoder's n_layers blocks, each decoder layer's cross-attention (norm, q, k/v, output
    projection and its bias) and the encoder's final norm."""
    base = count_params(cfg, non_embedding)
    st = STRUCTURES[cfg.structure]
    if st.cross == "none":
        return base
    d, arch = cfg.d_model, cfg.arch
    norm = d if arch.norm == "rmsnorm" else 2 * d
    block = (count_params(cfg, non_embedding=True) - norm) // cfg.n_layers
    cross = norm + 4 * d * d + (d if arch.bias else 0)
    return base + cfg.n_layers * cross + norm + (cfg.n_layers * block if st.separate else 0)


def structured_flops(cfg: ModelConfig, n_input: int, n_target: int) -> tuple[int, int]:
    """(matmul, attention) training FLOPs (forward + backward) of one example at the padded shapes
    [S input, T target], in the convention of model.flops_per_token: 6 x every matmul weight per
    position it is applied at (the head at the T target positions only), and 6 * ctx * d_model per
    layer and query for attention (ctx: the keys the query's attention spans at full length)."""
    d, S, T = cfg.d_model, n_input, n_target
    mats = 3 if cfg.arch.mlp == "swiglu" else 2
    layer = 4 * d * d + mats * d * cfg.ffn_dim
    head = T * cfg.vocab_size * d
    if STRUCTURES[cfg.structure].cross == "none":
        L = S + T - 1  # the one stack reads [input; target] shifted by one
        return 6 * (cfg.n_layers * layer * L + head), 6 * cfg.n_layers * L * L * d
    # Encoder over S, decoder over T; cross-attention: q and output projections per target position,
    # k/v per input position (each decoder layer projects its memory with its own weights, also when
    # all of them read the final encoder layer).
    matmul = cfg.n_layers * (layer * (S + T) + 2 * d * d * (S + T)) + head
    attn = cfg.n_layers * (S * S + T * T + T * S) * d
    return 6 * matmul, 6 * attn


def structured_flops_per_token(cfg: ModelConfig, n_input: int, n_target: int) -> float:
    """Training FLOPs per target token (the loss tokens): `structured_flops` / T."""
    return float(sum(structured_flops(cfg, n_input, n_target))) / n_target


@torch.no_grad()
def sample(model: StructuredLM, inputs: Tensor, max_new_tokens: int, eot_id: int, temperature: float = 1.0,
           top_k: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Targets [n, <= max_new_tokens] sampled for `inputs` [n, S] (real tokens, no pads; each row ends
    with the input's last token, the ``:`` of ``Story:``). An encoder reads the input once and the
    decoder is run over the target so far at each step; the one-stack models re-read [input; target]
    (no cache: these models are small). Rows stop at `eot_id` (kept) and are padded with it."""
    n, S = inputs.shape
    valid_in = torch.ones_like(inputs, dtype=torch.bool)
    memory = model.encode(inputs, valid_in) if model.st.cross != "none" else None
    out = inputs.new_empty(n, 0)
    done = torch.zeros(n, dtype=torch.bool, device=inputs.device)
    for _ in range(max_new_tokens):
        if memory is not None:
            logits = model.decode(memory, valid_in, torch.cat([inputs[:, -1:], out], 1))[:, -1]
        else:
            w = torch.cat([inputs, out, inputs[:, :1]], 1)  # the last column is never read
            logits = model(w, torch.ones_like(w, dtype=torch.bool), S)[:, -1]
        logits = logits.float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            logits = logits / temperature
            if top_k:
                kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, eot_id), nxt)
        out = torch.cat([out, nxt[:, None]], 1)
        done |= nxt == eot_id
        if bool(done.all()):
            break
    return out


def layers_at_equal_params(cfg: ModelConfig, structure: str, max_layers: int = 1024) -> int:
    """The sizing rule of the structure study (docs/structure.md): at the width, heads and family of
    `cfg` (a decoder of cfg.n_layers layers), the layers per stack that bring `structure`'s
    non-embedding parameter count closest to the decoder's (ties: fewer layers). Embedding tables
    are the same for every structure, so equal non-embedding counts mean equal totals too."""
    target = count_params(cfg.model_copy(update={"structure": None}), non_embedding=True)

    def gap(n: int) -> tuple[int, int]:
        c = cfg.model_copy(update={"structure": structure, "n_layers": n})
        return abs(count_structured_params(c, non_embedding=True) - target), n

    return min(range(1, max_layers + 1), key=gap) if STRUCTURES[structure].cross != "none" else cfg.n_layers
