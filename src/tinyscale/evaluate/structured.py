"""Loss per skill on the target tokens of instruct examples, for models with a structure
(structure.py): the same statistics as evaluate/loss.py (`window_sums`, `summarize_sums`), with a
validation example in the place of a window. Input tokens and pads are never scored (their loss is
NaN, which `window_sums` leaves out); the post-stratification shares are the skills' shares among
all target tokens of the split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tinyscale.data.corpus import SKILLS
from tinyscale.data.examples import Examples, batch
from tinyscale.evaluate.loss import LossData


@dataclass(frozen=True)
class ExampleData(LossData):
    """Validation examples: `x` holds the rows w [N, S + T], `valid` their real tokens; y, skill,
    floor and base describe the T target positions."""

    valid: torch.Tensor = None  # type: ignore[assignment]  # [N, S + T] bool
    n_input: int = 0


def target_shares(skills: np.ndarray, ex: Examples) -> np.ndarray:
    """Share of each skill id among the target tokens of every example of the split."""
    edges = np.zeros(len(skills) + 1, dtype=np.int64)
    np.add.at(edges, ex.split, 1)
    np.add.at(edges, ex.end + 1, -1)
    in_target = np.cumsum(edges[:-1]) > 0
    counts = np.bincount(np.asarray(skills)[in_target], minlength=len(SKILLS)).astype(np.float64)
    return counts / max(1.0, counts.sum())


def example_loss_data(split: str, tokens: np.ndarray, skills: np.ndarray, floor: np.ndarray, base: np.ndarray,
                      ex: Examples, n_input: int, n_target: int, max_tokens: int, pad_id: int) -> ExampleData:
    """Evenly spaced examples of the split, as many as hold about `max_tokens` target tokens."""
    per_example = np.minimum(ex.end + 1 - ex.split, n_target).mean()
    keep = max(1, min(len(ex), math.ceil(max_tokens / max(1.0, per_example))))
    rows = np.unique(np.linspace(0, len(ex) - 1, keep).round().astype(np.int64))
    w, valid, index = batch(tokens, ex, rows, n_input, n_target, pad_id)
    t_idx, t_ok = index[:, n_input:], valid[:, n_input:]
    at = np.maximum(t_idx, 0)

    def labels(a: np.ndarray, fill: float) -> torch.Tensor:
        return torch.from_numpy(np.where(t_ok, np.asarray(a, np.float64)[at], fill))

    return ExampleData(split=split, x=torch.from_numpy(w), y=torch.from_numpy(w[:, n_input:].copy()),
                       skill=torch.from_numpy(np.where(t_ok, np.asarray(skills)[at], 0).astype(np.int64)),
                       floor=labels(floor, math.nan), base=labels(base, math.nan),
                       shares=target_shares(skills, ex), valid=torch.from_numpy(valid), n_input=n_input)


@torch.no_grad()
def example_token_losses(model: torch.nn.Module, data: ExampleData, device: torch.device | str = "cpu",
                         batch_size: int = 8, rows: np.ndarray | None = None) -> torch.Tensor:
    """Cross-entropy (nats, float32 logits) of every target token [N, T]; NaN at pads and unscored rows."""
    out = torch.full(data.y.shape, math.nan, dtype=torch.float64)
    rows = np.arange(len(data.x)) if rows is None else np.asarray(rows)
    for i in range(0, len(rows), batch_size):
        r = torch.from_numpy(rows[i: i + batch_size])
        w, valid, y = data.x[r].to(device), data.valid[r].to(device), data.y[r].to(device)
        logits = model(w, valid, data.n_input).float()
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view(y.shape)
        out[r] = ce.masked_fill(~valid[:, data.n_input:], math.nan).double().cpu()
    return out



# --- probes and completions: the header is the input, the story so far and the option the target ---


def split_at_marker(ids: list[int], marker: list[int]) -> int:
    """Index of the first token after the first `marker` in `ids` (0 when there is none: a prompt
    without a header is all target, as a plain story is in training; data/examples.py)."""
    m = len(marker)
    for i in range(len(ids) - m + 1):
        if ids[i:i + m] == marker:
            return i + m
    return 0


def _probe_rows(probe, codec, marker: list[int], n_input: int, n_target: int) -> list[tuple] | None:
    """(input ids, target ids, option tokens) for every option of `probe`, or None when one does not
    fit: the target (story so far + option) and the position after it must lie within the T target
    positions the model was trained at. The input keeps its last n_input tokens, as in training."""
    ids = codec.encode(probe.prompt)
    at = split_at_marker(ids, marker)
    inp, prefix = ([codec.bos_id] + ids[:at])[-n_input:], ids[at:]
    rows = []
    for option in probe.options:
        cont = codec.encode(" " + option)
        if not cont or len(prefix) + len(cont) >= n_target:
            return None
        rows.append((inp, prefix + cont, len(cont)))
    return rows


@torch.no_grad()
def _score_rows(model: torch.nn.Module, rows: list[tuple], n_input: int, pad_id: int, device, batch_size: int
                ) -> list[tuple[float, bool, int]]:
    """Per row: (summed log-probability of its option tokens, all of them the argmax, the argmax
    after them), from one forward pass per batch of rows laid out as in training: the input
    left-padded to n_input, the target right-padded (one extra column: the position after it)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))
    out: list[tuple[float, bool, int]] = [(0.0, False, 0)] * len(rows)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(rows[i][1]) for i in idx) + 1
        w = torch.full((len(idx), n_input + width), pad_id, dtype=torch.long)
        valid = torch.zeros(w.shape, dtype=torch.bool)
        for r, i in enumerate(idx):
            inp, tgt, _ = rows[i]
            w[r, n_input - len(inp):n_input], valid[r, n_input - len(inp):n_input] = torch.tensor(inp), True
            w[r, n_input:n_input + len(tgt)], valid[r, n_input:n_input + len(tgt)] = torch.tensor(tgt), True
        logp = torch.log_softmax(model(w.to(device), valid.to(device), n_input).float(), -1).cpu()
        for r, i in enumerate(idx):
            _, tgt, n = rows[i]
            at = torch.arange(len(tgt) - n, len(tgt))  # logits[:, j] predict target token j
            lp = logp[r, at, torch.tensor(tgt[-n:])]
            greedy = bool((logp[r, at].argmax(-1) == torch.tensor(tgt[-n:])).all())
            out[i] = (float(lp.sum()), greedy, int(logp[r, len(tgt)].argmax()))
    return out


def score_structured_probes(model: torch.nn.Module, probes: list, codec, marker: list[int], n_input: int,
                            n_target: int, device, batch_size: int = 32) -> tuple[list, list, int]:
    """(the probes scored, their evaluate.probes.ProbeScore, how many were left out because they do
    not fit the trained target length). Scores are those of evaluate.probes.score_probes: multiple
    choice by summed log-probability of each option, greedy exact match, the answer's probability."""
    from tinyscale.evaluate.probes import ProbeScore

    kept, rows = [], []
    for probe in probes:
        r = _probe_rows(probe, codec, marker, n_input, n_target)
        if r is not None:
            kept.append(probe)
            rows += r
    flat = _score_rows(model, rows, n_input, codec.bos_id or 0, device, batch_size)
    scores, i = [], 0
    for probe in kept:
        got = flat[i:i + len(probe.options)]
        i += len(probe.options)
        _, greedy, after = got[0]
        scores.append(ProbeScore(probe.id, probe.kind, probe.style, tuple(g[0] for g in got),
                                 exact=greedy and not codec.continues_word(after),
                                 tokens=tuple(n for _, _, n in rows[i - len(probe.options):i])))
    return kept, scores, len(probes) - len(kept)


def complete_headers(model: torch.nn.Module, tokens: np.ndarray, ex: Examples, tokenizer, *, stories: int,
                     samples: int, temperature: float, seed: int, n_input: int, n_target: int, eot_id: int,
                     device) -> list[dict]:
    """`stories` validation examples picked at random (seeded): their header is the input, `samples`
    stories are sampled for it (structure.sample, up to n_target tokens). Entries in the format of
    evaluate/completions.py (prompt = the header, ending = the original story's first T tokens)."""
    from tinyscale.structure import sample

    tokens = np.asarray(tokens)
    picks = np.random.default_rng(seed).permutation(len(ex))[:stories]
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for k in picks:
        header = tokens[ex.start[k]:ex.split[k]].astype(np.int64)
        inp = header[-n_input:]  # cut from the left to the trained input length, as in training
        ending = tokens[ex.split[k]:ex.end[k]][:n_target].astype(np.int64).tolist()
        rows = sample(model, torch.tensor(np.tile(inp, (samples, 1)), device=device), n_target, eot_id,
                      temperature, None, gen).cpu()
        texts = [[t for t in row.tolist() if t != eot_id] for row in rows]
        out.append({"id": f"val:{int(ex.start[k])}", "prompt": tokenizer.decode(inp.tolist()),
                    "ending": tokenizer.decode(ending), "completions": [tokenizer.decode(t) for t in texts],
                    "prompt_tokens": len(inp), "prompt_cut_tokens": len(header) - len(inp),
                    "completion_tokens": [len(t) for t in texts],
                    "ended": [bool((row == eot_id).any()) for row in rows]})
    return out
