"""The request's own changes to the next-token logits, before temperature and top-k/top-p.

Semantics follow the servers users come from, so that a request means what it meant there:
- `logit_bias` (OpenAI): added to the token's logit.
- `repetition_penalty` (vLLM; `repeat_penalty` in llama.cpp, over its last `repeat_last_n` tokens): a
  positive logit of a token seen in the prompt or the generated text is divided by it, a negative one
  multiplied, so > 1 discourages repeats whatever the sign.
- `presence_penalty` / `frequency_penalty` (OpenAI): subtracted once from every token already
  generated / once per time it was generated (the prompt does not count).
- `min_tokens` (vLLM): the end-of-text token is masked until that many tokens are out.
- `min_p` (vLLM, llama.cpp): tokens whose probability after temperature is below min_p times the most
  likely one's are dropped. p_i / p_max = exp((l_i - l_max) / T), so on raw logits the cut is
  l_i < l_max + T ln(min_p), and the temperature itself stays in `sample_next`.
Reported log-probabilities stay the model's own (vLLM's default), so `echo` and `logprobs` answer the
same whatever the sampling settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Penalties:
    logit_bias: dict[int, float] | None = None
    repetition: float = 1.0
    window: int = -1  # tokens of prompt + text the repetition penalty looks at (-1: all)
    presence: float = 0.0
    frequency: float = 0.0
    min_tokens: int = 0
    min_p: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.logit_bias) or self.repetition != 1 or self.presence != 0 or self.frequency != 0 \
            or self.min_tokens > 0 or self.min_p > 0


def adjust(logits: Tensor, p: Penalties, prompt: list[int], generated: list[int], temperature: float,
           stop_id: int | None) -> Tensor:
    """A copy of one row's logits [1, V] with the request's changes applied."""
    logits = logits.clone()
    row = logits[0]
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), device=row.device)
        row.index_add_(0, ids, torch.tensor(list(p.logit_bias.values()), device=row.device, dtype=row.dtype))
    if p.repetition != 1 and p.window != 0:
        context = prompt + generated
        seen = torch.tensor(sorted(set(context if p.window < 0 else context[-p.window:])), device=row.device)
        values = row[seen]
        row[seen] = torch.where(values > 0, values / p.repetition, values * p.repetition)
    if generated and (p.presence or p.frequency):
        ids, counts = torch.tensor(generated, device=row.device).unique(return_counts=True)
        row.index_add_(0, ids, -(p.frequency * counts.to(row.dtype) + p.presence))
    if stop_id is not None and len(generated) < p.min_tokens:
        row[stop_id] = float("-inf")
    if p.min_p > 0 and temperature > 0:
        row.masked_fill_(row < row.max() + temperature * math.log(p.min_p), float("-inf"))
    return logits
