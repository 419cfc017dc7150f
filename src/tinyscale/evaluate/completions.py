"""Story completions: cut validation stories at a sentence boundary in the middle and let the model
finish them, K samples each, so a reader (or an LLM judge) can compare them with the real ending.

The stories are picked and cut once per evaluation (`pick_stories`) and reused for every checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

# The end of a sentence: . ! or ? (possibly inside a closing quote) followed by white space.
_SENTENCE_END = re.compile(r"[.!?][\"”’']?(?=\s)")


@dataclass(frozen=True)
class StoryCut:
    id: str
    prompt: str  # the story up to and including the sentence that ends nearest the middle
    ending: str  # the rest of the original story (starts with white space)
    prompt_ids: list[int]
    ending_tokens: int


def cut_middle(text: str) -> tuple[str, str] | None:
    """Split a story after the sentence end nearest its middle; None when it has one sentence."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if text[m.end():].strip()]
    if not ends:
        return None
    cut = min(ends, key=lambda e: (abs(e - len(text) / 2), e))
    return text[:cut], text[cut:]


def story_bounds(tokens: np.ndarray, eot_id: int) -> list[tuple[int, int]]:
    """(start, end) token offsets of the stories between end-of-text tokens."""
    eots = np.flatnonzero(np.asarray(tokens) == eot_id)
    return [(int(a) + 1, int(b)) for a, b in zip(eots[:-1], eots[1:], strict=True) if b - a > 1]


def pick_stories(split: str, tokens: np.ndarray, eot_id: int, tokenizer, m: int, seed: int,
                 max_prompt_tokens: int) -> list[StoryCut]:
    """Pick `m` stories of a split at random (seeded) that can be cut in the middle."""
    bounds = story_bounds(tokens, eot_id)
    order = np.random.default_rng(seed).permutation(len(bounds))
    cuts: list[StoryCut] = []
    for i in order:
        if len(cuts) == m:
            break
        start, end = bounds[i]
        text = tokenizer.decode(np.asarray(tokens[start:end], dtype=np.int64).tolist())
        halves = cut_middle(text)
        if halves is None:
            continue
        prompt_ids = [eot_id] + tokenizer.encode(halves[0], add_special_tokens=False).ids
        if len(prompt_ids) > max_prompt_tokens:
            continue
        ending_tokens = len(tokenizer.encode(halves[1], add_special_tokens=False).ids)
        cuts.append(StoryCut(f"{split}:{start}", halves[0], halves[1], prompt_ids, ending_tokens))
    return cuts


def complete_stories(model: torch.nn.Module, cuts: list[StoryCut], tokenizer, *, samples: int,
                     temperature: float, seed: int, eot_id: int, max_seq_len: int,
                     max_new_tokens: int | None = None) -> list[dict]:
    """Generate `samples` completions per story in one batch (KV cache); stop at end-of-text.

    By default a completion may run to 5/4 of the longest original ending (plus a little), within the
    model's context.
    """
    from tinyscale.generate import generate

    if not cuts:
        return []
    longest_prompt = max(len(c.prompt_ids) for c in cuts)
    wanted = max_new_tokens or max(5 * c.ending_tokens // 4 + 16 for c in cuts)
    budget = max(1, min(wanted, max_seq_len - longest_prompt))
    prompts = [c.prompt_ids for c in cuts for _ in range(samples)]
    outs = generate(model, prompts, budget, temperature=temperature, seed=seed, eot_id=eot_id)
    results = []
    for j, cut in enumerate(cuts):
        texts = []
        for ids in outs[j * samples: (j + 1) * samples]:
            ids = ids[: ids.index(eot_id)] if eot_id in ids else ids
            texts.append(tokenizer.decode(ids))
        results.append({"id": cut.id, "prompt": cut.prompt, "ending": cut.ending, "completions": texts})
    return results
