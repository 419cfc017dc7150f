"""Story completions: cut validation stories at a sentence boundary in the middle and let the model
finish them, K samples each, so a reader (or an LLM judge) can compare them with the real ending.

The stories are picked and cut once per evaluation (`pick_stories`) and reused for every checkpoint.
Prompt + completion always fit the context the model was trained at (`completion_budget`): a prompt
too long for it loses its first tokens, and what was cut is recorded.

Beside the texts, simple quality figures a reader can check (`quality`), with the same figures for
the corpus's own stories as the reference (`corpus_reference`):

- vocabulary share: completion words found in the corpus vocabulary, i.e. the words of the training
  split (its first VOCAB_TOKENS tokens: in the demo's corpus those hold all but ~1e-4 of the
  validation words). A word is a run of letters with an optional 's-style suffix, lowercased.
- repeated-word rate: the share of words equal to one of the REPEAT_WINDOW words before them in the
  same text ("saw saw", "the boy the boy"). Real stories repeat too ("Tom and the dog. Tom..."),
  which is why the corpus's rate, computed the same way on validation stories, is the reference.
- end-of-text share: completions that ended with the end-of-text token within their budget.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from tinyscale.errors import UserError
from tinyscale.evaluate.probes import wilson

# The end of a sentence: . ! or ? (possibly inside a closing quote) followed by white space.
_SENTENCE_END = re.compile(r"[.!?][\"”’']?(?=\s)")
_WORD = re.compile(r"[a-z]+(?:['’][a-z]+)?")
REPEAT_WINDOW = 3
VOCAB_TOKENS = 4_000_000  # training tokens read for the corpus vocabulary (~1 s on one core)
REFERENCE_STORIES = 1000  # validation stories behind the corpus's reference figures


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


def pick_stories(split: str, tokens: np.ndarray, eot_id: int, tokenizer, m: int, seed: int) -> list[StoryCut]:
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
        ending_tokens = len(tokenizer.encode(halves[1], add_special_tokens=False).ids)
        cuts.append(StoryCut(f"{split}:{start}", halves[0], halves[1], prompt_ids, ending_tokens))
    return cuts


def completion_budget(cuts: list[StoryCut], context: int, max_new_tokens: int | None = None) -> tuple[int, int]:
    """(new tokens per completion, prompt tokens kept) so that prompt + completion fit `context`.

    A completion may run to 5/4 of the longest original ending (plus a little). Prompts are cut from
    the left only when they and that budget do not fit; the completion then gets at least half the
    context (or what it wants, if less), the prompt the rest."""
    if context < 2:
        raise UserError(f"completions: a trained context of {context} token leaves no room to write")
    longest = max(len(c.prompt_ids) for c in cuts)
    wanted = max_new_tokens or max(5 * c.ending_tokens // 4 + 16 for c in cuts)
    budget = max(1, min(wanted, max(context - longest, context // 2)))
    return budget, context - budget


def complete_stories(model: torch.nn.Module, cuts: list[StoryCut], tokenizer, *, samples: int,
                     temperature: float, seed: int, eot_id: int, context: int,
                     max_new_tokens: int | None = None) -> tuple[list[dict], dict]:
    """Generate `samples` completions per story in one batch (KV cache); stop at end-of-text.

    Returns (one entry per story, the run of generation's settings: new-token budget and context).
    Each entry holds the prompt as the model saw it, `prompt_cut_tokens` (tokens cut from its start
    to fit the context), the completions, their token counts and whether each ended with end-of-text.
    """
    from tinyscale.generate import generate

    if not cuts:
        return [], {"context": context, "max_new_tokens": 0}
    budget, keep = completion_budget(cuts, context, max_new_tokens)
    prompts = [c.prompt_ids[-keep:] for c in cuts]
    outs = generate(model, [p for p in prompts for _ in range(samples)], budget, temperature=temperature,
                    seed=seed, eot_id=eot_id)
    results = []
    for j, cut in enumerate(cuts):
        rows = outs[j * samples: (j + 1) * samples]  # cut before the end-of-text token by generate
        dropped = len(cut.prompt_ids) - len(prompts[j])
        results.append({"id": cut.id, "prompt": tokenizer.decode(prompts[j]) if dropped else cut.prompt,
                        "ending": cut.ending, "completions": [tokenizer.decode(ids) for ids in rows],
                        "prompt_tokens": len(prompts[j]), "prompt_cut_tokens": dropped,
                        "completion_tokens": [len(ids) for ids in rows],
                        # generation stops early only at end-of-text, so a shorter row ended there
                        "ended": [len(ids) < budget for ids in rows]})
    return results, {"context": context, "max_new_tokens": budget}


# --- quality figures ---------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    """The words of a text, lowercased (letters with an optional 's-style suffix)."""
    return _WORD.findall(text.lower())


def vocab_share(texts: Iterable[str], vocabulary: set[str]) -> tuple[float | None, int]:
    """(share of the texts' words that are in `vocabulary`, number of words); None without words."""
    ws = [w for t in texts for w in words(t)]
    return (sum(w in vocabulary for w in ws) / len(ws) if ws else None), len(ws)


def repeated_word_rate(texts: Iterable[str], window: int = REPEAT_WINDOW) -> float | None:
    """Share of words equal to one of the `window` words before them in the same text (the first
    words of a text have fewer before them); None without words."""
    repeats = total = 0
    for text in texts:
        ws = words(text)
        total += len(ws)
        repeats += sum(w in ws[max(0, i - window):i] for i, w in enumerate(ws))
    return repeats / total if total else None


def quality(stories: list[dict], vocabulary: set[str]) -> dict:
    """Vocabulary share, repeated-word rate and end-of-text share of every completion of `stories`."""
    texts = [t for s in stories for t in s["completions"]]
    ended = [e for s in stories for e in s.get("ended", [])]
    share, n_words = vocab_share(texts, vocabulary)
    rate = repeated_word_rate(texts)
    # A Wilson interval over words (neighbouring words are not independent, so it is a rough one):
    # a few completions cannot tell a model's repetition from the corpus's without it.
    lo, hi = wilson(round(rate * n_words), n_words) if rate is not None and n_words else (None, None)
    return {"completions": len(texts), "words": n_words, "vocab_share": share,
            "repeat_rate": rate, "repeat_rate_lo": lo, "repeat_rate_hi": hi,
            "eot_share": sum(ended) / len(ended) if ended else None}


def _story_texts(tokens: np.ndarray, eot_id: int, tokenizer, stride: int, limit: int | None = None) -> list[str]:
    """Decoded text of the tokens, in pieces of `stride` stories cut at end-of-text tokens (at most
    `limit` pieces)."""
    eots = np.flatnonzero(np.asarray(tokens) == eot_id)
    cuts = np.unique(np.concatenate([eots[::stride], eots[-1:]]))[: None if limit is None else limit + 1]
    pieces = [np.asarray(tokens[a:b], dtype=np.int64).tolist() for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return tokenizer.decode_batch(pieces) if pieces else []


def corpus_vocabulary(tokens: np.ndarray, eot_id: int, tokenizer, max_tokens: int = VOCAB_TOKENS) -> set[str]:
    """The words of a split's first `max_tokens` tokens (see the module docstring)."""
    vocabulary: set[str] = set()
    for text in _story_texts(np.asarray(tokens)[:max_tokens], eot_id, tokenizer, 500):
        vocabulary.update(words(text))
    return vocabulary


def corpus_reference(tokens: np.ndarray, eot_id: int, tokenizer, vocabulary: set[str],
                     stories: int = REFERENCE_STORIES) -> dict:
    """The quality figures of the corpus's own stories (the first `stories` of a split): what a
    model that writes like the corpus would score. Every story ends with end-of-text."""
    texts = _story_texts(tokens, eot_id, tokenizer, 1, limit=stories)
    share, n_words = vocab_share(texts, vocabulary)
    return {"stories": len(texts), "words": n_words, "vocab_share": share, "repeat_rate": repeated_word_rate(texts),
            "eot_share": 1.0 if texts else None}
