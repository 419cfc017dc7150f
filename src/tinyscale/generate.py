"""Batched sampling with the key/value cache.

Prompts of different lengths share one batch: they are left-padded to a common length, each row
gets its own position ids (counting from its first real token) and a mask that hides its padding,
so every row computes exactly what it would alone. The cache is preallocated for prompt plus new
tokens, and each step feeds one token per row.

Speed: the prompt goes through ``Transformer.forward`` once, and so does every later step, one
token per row, unless the batch is a single sequence on the CPU: then each step is one call into
the C++ kernel of ``decoding.NativeDecoder`` (``kernels/decode_one.cpp``), because at one row a step
costs more in per-op dispatch than in arithmetic (with ``dtype="int8"`` its weights are int8 with
per-row scales); a single row without the kernel decodes on one thread (``decoding.decode_threads``).
Batched fp32 and int8 steps are one kernel call each too (``decoding.BatchDecoder``: the products in
PyTorch, the small ops between them and the sampling in C++); bf16 batches go through the forward
pass and attend over the cache in the kernel (``decoding.KernelKVCache``). ``dtype="bf16"``
runs the weight matrix multiplies in bfloat16 under autocast, which pays off on CPUs with native
bf16 once the batch is large enough; the cache and attention stay float32 on CPU, where PyTorch
attends over a bf16 cache 2-5x more slowly (see model.py). ``dtype="int8"`` (CPU) at larger batches
runs every linear layer with int8 weights and activations (``decoding.quantize_int8``) and keeps the
cache in float16 (half the memory traffic, which at 32 rows outweighs the int8 weights').
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path

import torch
from torch import Tensor

from tinyscale.decoding import BatchDecoder, NativeDecoder, decode_threads, new_cache, quantize_int8
from tinyscale.devices import bf16_native, pick_device  # noqa: F401  (pick_device's former home: still importable)
from tinyscale.errors import UserError
from tinyscale.model import KVCache, Transformer

# Names an end-of-text token goes by in the tokenizers we meet; the first one present wins.
EOT_NAMES = ("<|endoftext|>", "<|eot|>", "</s>", "<eos>", "[EOS]")


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
        # A model is used only within the context it was trained at (runs.load_model sets max_seq_len to it).
        raise UserError(f"generate: prompt of {longest} tokens + {max_new_tokens} new tokens exceeds "
                        f"the model's trained context of {max_seq_len}")


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row from logits [B, V]; temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    greedy = logits.argmax(dim=-1)
    logits = logits.float()
    if temperature != 1:
        logits = logits / temperature
    # A temperature so small that the largest logit overflows float32 (5e-324, say) is the limit it
    # tends to, greedy; without this the softmax is NaN and the draw lands past the vocabulary.
    overflow = torch.isposinf(logits).any(dim=-1)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p: drop a token once the mass before it does.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[:, 0] = False  # the most likely token always stays (a top_p that rounds to 0 in float32 is greedy)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # Inverse-CDF sampling: a uniform draw u in [0, total) picks the first token whose cumulative mass
    # exceeds u. Same distribution as torch.multinomial at a fraction of its cost on CPU (which draws
    # one exponential variate per vocabulary entry). `right=True` never picks a zero-mass token, and
    # u < total exactly because rand() < 1 and rounding x * (1 - 2**-24) never reaches x.
    cdf = logits.softmax(dim=-1).cumsum_(dim=-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.where(overflow, greedy, torch.searchsorted(cdf, u, right=True).squeeze(-1))


# Batch from which `dtype="auto"` picks bfloat16 on a CPU with native bf16 (AVX-512 BF16 or AMX).
# Measured at width 288 x 6 layers, 1 thread, tokens/s fp32 vs bf16: on Sapphire Rapids (AMX), batch 1:
# 171 vs 166, batch 4: 499 vs 674, batch 32: ~1150 vs ~1740; on Zen 5 (AVX-512 BF16), batch 1: 672 vs
# 643. At batch 1 a step is a chain of matrix-vector products bound by memory and per-op overhead, where
# oneDNN's bf16 path is no faster, so float32 (exact) stays; from a few rows on, bf16 products win.
AUTO_BF16_MIN_BATCH = 4


def resolve_dtype(name: str, device: torch.device, batch_size: int) -> torch.dtype:
    """`fp32`, `bf16`, or `auto`: bfloat16 where it is native and measured faster (see above).
    `int8` computes in float32 around its int8 products, so it resolves to float32."""
    if name in ("fp32", "int8"):
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name == "auto":
        if bf16_native(device) and (device.type != "cpu" or batch_size >= AUTO_BF16_MIN_BATCH):
            return torch.bfloat16
        return torch.float32
    raise UserError(f"--dtype: must be auto, fp32, bf16 or int8, got '{name}'")


_int8_models: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def int8_model(model: Transformer) -> Transformer:
    """`quantize_int8(model)`, kept while the model's weights are unchanged (each in-place update
    bumps a tensor's version counter), so repeated calls quantize once."""
    versions = tuple(p._version for p in model.parameters())
    cached = _int8_models.get(model)
    if cached is None or cached[0] != versions:
        cached = _int8_models[model] = (versions, quantize_int8(model))
    return cached[1]


@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             eot_id: int | None = None, dtype: str = "fp32") -> list[list[int]]:
    """Continue each prompt; return the new tokens only, one list per prompt.

    A row stops at `eot_id` (the end-of-text token itself is not returned). Sampling is
    deterministic given `seed` and the batch's composition. `dtype`: `fp32` (exact), `bf16`
    (bfloat16 matrix multiplies and cache), `auto` (bf16 where it is native and faster) or `int8`
    (int8 weights, CPU only).
    """
    cfg = model.cfg
    _check_options(prompts, max_new_tokens, temperature, top_k, top_p, cfg.max_seq_len)
    device = model.tok_emb.weight.device
    B, P = len(prompts), max(len(p) for p in prompts)
    dt = resolve_dtype(dtype, device, B)
    native = dtype in ("fp32", "int8", "auto") and NativeDecoder.available(model, B, dt)
    if dtype == "int8" and not native:
        model = int8_model(model)
    total = P + max_new_tokens
    pad = torch.tensor([P - len(p) for p in prompts], device=device)
    idx = torch.zeros(B, P, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        idx[row, P - len(p):] = torch.tensor(p, dtype=torch.long)

    cache = new_cache(model, B, total, dt, compact=dtype == "int8" and not native)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(B, max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=dt) if dt != torch.float32 else contextlib.nullcontext()

    positions = key_ok = None
    if bool(pad.any()):
        # Row b's real tokens start at column pad[b]: positions count from there, and keys before it
        # are hidden. A padding query sees only itself, so no softmax row is empty (no NaN).
        cols = torch.arange(total, device=device)
        key_ok = cols[None, :] >= pad[:, None]  # [B, total]
        causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=device)
        mask = (causal & key_ok[:, None, :P]) | eye  # [B, P, P]
        with autocast:
            logits = model(idx, cache, (cols[None, :P] - pad[:, None]).clamp(min=0), mask[:, None])[:, -1]
        positions, key_ok = P - pad, key_ok[:, None, None, :]  # next position of each row
    else:
        with autocast:
            logits = model(idx, cache)[:, -1]
    step, sample = _stepper(model, cache, native, dtype == "int8", autocast, temperature, top_k, top_p, gen)
    # The kernel splits its products over the caller's threads; see decode_threads for the rest.
    with contextlib.nullcontext() if native else decode_threads(B):
        for t in range(max_new_tokens):
            out[:, t] = tok = sample(logits)
            if _finished(tok, done, eot_id) or t == max_new_tokens - 1:
                break
            logits = step(tok, None if positions is None else positions + t, key_ok)
    return _cut(out[:, : t + 1].tolist(), eot_id)


def _stepper(model: Transformer, cache: KVCache, native: bool, int8: bool, autocast, temperature: float,
             top_k: int | None, top_p: float | None, gen: torch.Generator):
    """The decoding step and the sampler for generate: one row in ``NativeDecoder``, batches in
    ``BatchDecoder`` where it applies (no autocast), else through ``Transformer.forward``."""
    def sample(logits: Tensor) -> Tensor:
        return sample_next(logits, temperature, top_k, top_p, gen)

    if native:
        return NativeDecoder(model, cache, int8=int8).step, sample
    if isinstance(autocast, contextlib.nullcontext) and BatchDecoder.available(model, cache):
        decoder = BatchDecoder(model, cache)
        if top_k is None and top_p is None:
            return decoder.step, lambda logits: decoder.sample(logits, temperature, gen)
        return decoder.step, sample
    return _forward_step(model, cache, autocast), sample


def _forward_step(model: Transformer, cache: KVCache, autocast):
    """One token per row through ``Transformer.forward``: logits [B, vocab] for tokens [B] at
    ``cache.pos``, with per-row positions [B] and key mask [B, 1, 1, >= pos + 1] for padded rows."""
    def step(tok: Tensor, positions: Tensor | None, key_ok: Tensor | None) -> Tensor:
        mask = None if key_ok is None else key_ok[..., : cache.pos + 1]
        with autocast:
            return model(tok[:, None], cache, None if positions is None else positions[:, None], mask)[:, -1]
    return step


def _finished(tok: Tensor, done: Tensor, eot_id: int | None) -> bool:
    if eot_id is None:
        return False
    done |= tok == eot_id
    return bool(done.all())


def _cut(rows: list[list[int]], eot_id: int | None) -> list[list[int]]:
    if eot_id is None:
        return rows
    return [row[: row.index(eot_id)] if eot_id in row else row for row in rows]


def complete(model, tokenizer, prompt: str, n: int = 1, max_new_tokens: int = 200, *, dtype: str = "fp32",
             **kwargs) -> list[str]:
    """Sample `n` continuations of a text prompt; return the full texts (prompt + continuation).

    An empty prompt starts from the end-of-text token, i.e. a story from scratch. `dtype` and the
    other keyword arguments (temperature, top_k, top_p, seed) are those of `generate`.
    """
    eot = eot_id_of(tokenizer)
    ids = tokenizer.encode(prompt).ids if prompt else []
    if not ids:
        if eot is None:
            raise UserError("--prompt: empty, and the tokenizer has no end-of-text token to start from")
        ids = [eot]
    new = generate(model, [ids] * n, max_new_tokens, eot_id=eot, dtype=dtype, **kwargs)
    return [tokenizer.decode(ids + row, skip_special_tokens=True) for row in new]


def complete_structured(model, tokenizer, prompt: str, n: int = 1, max_new_tokens: int = 200, *,
                        temperature: float = 1.0, top_k: int | None = None, seed: int = 0) -> list[str]:
    """`complete` for a model with a structure (structure.py): `prompt` is the input (an instruct
    header; ``Story:`` is added when it does not end with it), the texts are the prompt and the
    sampled story. The input is cut from the left to the run's --input-len."""
    from tinyscale.data.examples import MARKER
    from tinyscale.structure import sample

    eot = eot_id_of(tokenizer)
    if eot is None:
        raise UserError("a structured model needs a tokenizer with an end-of-text token")
    head = prompt.rstrip()
    if not head.endswith(MARKER.strip()):
        head = head + MARKER
    # The model's cfg holds the trained target context (runs.load_model); its built positions are S + T.
    n_input = max(1, model.lm.cfg.max_seq_len - model.cfg.max_seq_len)
    ids = [eot, *tokenizer.encode(head).ids][-n_input:]
    p = next(model.parameters())
    inputs = torch.tensor([ids] * n, device=p.device)
    gen = torch.Generator(device=p.device).manual_seed(seed)
    out = sample(model, inputs, max_new_tokens, eot, temperature, top_k, gen)
    return [head + tokenizer.decode([t for t in row.tolist() if t != eot]) for row in out]


def sample_budget(prompt_tokens: int, context: int, max_new_tokens: int | None) -> int:
    """New tokens for `sample`: a model is used only within its trained context, so a prompt or an
    explicit `max_new_tokens` beyond it is refused; the default (None) is 200 or what fits."""
    room = context - prompt_tokens
    if room < 1:
        raise UserError(f"--prompt: {prompt_tokens} tokens leave no room in the model's trained context of "
                        f"{context} tokens")
    if max_new_tokens is None:
        return min(200, room)
    if max_new_tokens > room:
        raise UserError(f"--max-new-tokens {max_new_tokens}: the prompt's {prompt_tokens} tokens + "
                        f"{max_new_tokens} exceed the model's trained context of {context} (at most {room})")
    return max_new_tokens


def sample(run_dir: str | Path, prompt: str = "", n: int = 1, *, max_new_tokens: int | None = None, temperature: float = 0.8,
           top_k: int | None = None, top_p: float | None = None, seed: int = 0, checkpoint: int | None = None,
           device: str = "auto", dtype: str = "fp32") -> list[str]:
    """The `sample` verb for Python: `n` completions (prompt included) of `prompt` from a run's
    checkpoint (the last by default), with the CLI's defaults; `complete` does the same for a model
    already loaded. An empty prompt writes a story from scratch.

        sample("runs/3m", "Once upon a time", n=2, temperature=0.8, seed=1)
    """
    from tinyscale import runs

    model, _ = runs.load_model(run_dir, checkpoint, device=str(pick_device(device)))
    tokenizer = runs.load_tokenizer(run_dir)
    budget = sample_budget(max(1, len(tokenizer.encode(prompt).ids)), model.cfg.max_seq_len, max_new_tokens)
    return complete(model, tokenizer, prompt, n=n, max_new_tokens=budget, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=seed, dtype=dtype)
