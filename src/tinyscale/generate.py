"""Batched sampling with the key/value cache.

Prompts of different lengths share one batch: they are left-padded to a common length, each row
gets its own position ids (counting from its first real token) and a mask that hides its padding,
so every row computes exactly what it would alone. The cache is preallocated for prompt plus new
tokens, and each step feeds one token per row.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tinyscale.errors import UserError

# Names an end-of-text token goes by in the tokenizers we meet; the first one present wins.
EOT_NAMES = ("<|endoftext|>", "<|eot|>", "</s>", "<eos>", "[EOS]")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device: unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device: '{name}' requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device: '{name}' requested but MPS is not available")
    return device


def eot_id_of(tokenizer) -> int | None:
    """The end-of-text token id of a `tokenizers.Tokenizer`, or None if it has none."""
    for name in EOT_NAMES:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return None


def _check_options(prompts: list[list[int]], max_new_tokens: int, temperature: float, top_k: int | None,
                   top_p: float | None, max_seq_len: int) -> None:
    if not prompts:
        raise UserError("generate: no prompts given")
    if any(len(p) == 0 for p in prompts):
        raise UserError("generate: a prompt is empty (start it with the end-of-text token)")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens: must be positive, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"--temperature: must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k: must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p: must be in (0, 1], got {top_p}")
    longest = max(len(p) for p in prompts)
    if longest + max_new_tokens > max_seq_len:
        raise UserError(f"generate: prompt of {longest} tokens + {max_new_tokens} new tokens exceeds "
                        f"the model's context of {max_seq_len}")


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row from logits [B, V]; temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it does.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eot_id: int | None = None) -> list[list[int]]:
    """Continue each prompt; return the new tokens only, one list per prompt.

    A row stops at `eot_id` (the end-of-text token itself is not returned). Sampling is
    deterministic given `seed` and the batch's composition.
    """
    cfg = model.cfg
    _check_options(prompts, max_new_tokens, temperature, top_k, top_p, cfg.max_seq_len)
    device = model.tok_emb.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    total = P + max_new_tokens
    pad = torch.tensor([P - len(p) for p in prompts], device=device)
    idx = torch.zeros(B, P, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        idx[row, P - len(p):] = torch.tensor(p, dtype=torch.long)

    cache = model.new_cache(B, total)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)

    if bool(pad.any()):
        # Row b's real tokens start at column pad[b]: positions count from there, and keys before it
        # are hidden. A padding query sees only itself, so no softmax row is empty (no NaN).
        cols = torch.arange(total, device=device)
        key_ok = cols[None, :] >= pad[:, None]  # [B, total]
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=device)
        mask = (causal & key_ok[:, None, :P]) | eye  # [B, P, P]
        positions = (cols[None, :P] - pad[:, None]).clamp(min=0)
        logits = model(idx, cache, positions, mask[:, None])[:, -1]
        step_pos = (P - pad)[:, None]  # position of the next token of each row
        for t in range(max_new_tokens):
            out[:, t] = tok = sample_next(logits, temperature, top_k, top_p, gen)
            if _finished(tok, done, eot_id) or t == max_new_tokens - 1:
                break
            logits = model(tok[:, None], cache, step_pos + t, key_ok[:, None, None, :P + t + 1])[:, -1]
    else:
        logits = model(idx, cache)[:, -1]
        for t in range(max_new_tokens):
            out[:, t] = tok = sample_next(logits, temperature, top_k, top_p, gen)
            if _finished(tok, done, eot_id) or t == max_new_tokens - 1:
                break
            logits = model(tok[:, None], cache)[:, -1]
    return _cut(out[:, : t + 1].tolist(), eot_id)


def _finished(tok: Tensor, done: Tensor, eot_id: int | None) -> bool:
    if eot_id is None:
        return False
    done |= tok == eot_id
    return bool(done.all())


def _cut(rows: list[list[int]], eot_id: int | None) -> list[list[int]]:
    if eot_id is None:
        return rows
    return [row[: row.index(eot_id)] if eot_id in row else row for row in rows]


def complete(model, tokenizer, prompt: str, n: int = 1, max_new_tokens: int = 200, **kwargs) -> list[str]:
    """Sample `n` continuations of a text prompt; return the full texts (prompt + continuation).

    An empty prompt starts from the end-of-text token, i.e. a story from scratch.
    """
    eot = eot_id_of(tokenizer)
    ids = tokenizer.encode(prompt).ids if prompt else []
    if not ids:
        if eot is None:
            raise UserError("--prompt: empty, and the tokenizer has no end-of-text token to start from")
        ids = [eot]
    new = generate(model, [ids] * n, max_new_tokens, eot_id=eot, **kwargs)
    return [tokenizer.decode(ids + row, skip_special_tokens=True) for row in new]
