"""Dynamic batching on one model: requests join and leave a running batch that shares one KV cache.

Why a scheduler of our own: `generate.generate` decodes a fixed batch from start to finish, while a
server receives requests at any moment. Here one thread owns the model and loops: admit waiting
requests, then advance every running sequence by one token with a single `Transformer.forward` call.

Cache layout. The cache has one row per running sequence (rows 0..n-1, packed) and one column
pointer `col` shared by all rows, because `Transformer.forward` appends keys at one column for the
whole batch. Every row's tokens end at `col`: row r occupies columns [col - length_r, col), and a
mask hides the columns before its start; its position ids count from its own first token, so each
row computes what it would alone. A newcomer's prompt is run on its own (its "prefill", which also
gives the prompt's log-probabilities for `echo`) and its keys/values are copied into a free row so
that they end at the shared column. When the column must move (a prompt longer than every running
row, or to reclaim columns that finished rows no longer need) the filled block is shifted as a
whole. A request is admitted only when every row still fits the context after the move, so the
memory is fixed at start-up: `max_batch` rows of the model's context.

A lone request. While one row runs alone (on the CPU, in float32, the case `generate` also sends to
the kernel), each step is one call into the single-sequence C++ kernel (`decoding.NativeDecoder`),
about 2.6x faster than the forward pass at one row, where per-op dispatch costs more than arithmetic.
The kernel decodes a row that starts at column 0 of a one-row cache, with the column as its position,
so the row's keys/values are copied there when it becomes lone (from columns [col - length, col) of
the batch cache, whose positions also count from the row's first token) and copied back to columns
[0, length) when another request joins; each is one copy of the row, once per change. The lone cache
is one more row of the model's context.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tinyscale.decoding import NativeDecoder, new_cache
from tinyscale.generate import sample_next
from tinyscale.model import Transformer
from tinyscale.serve.penalties import Penalties, adjust

log = logging.getLogger("tinyscale.serve")


class QueueFull(Exception):
    """More requests are waiting than `max_queue` allows."""


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    logprobs: int | None = None  # alternatives per token to report (None: no log-probabilities)
    echo: bool = False  # report the prompt's log-probabilities
    stop_id: int | None = None  # the end-of-text token (None: generate max_tokens regardless)
    penalties: Penalties = field(default_factory=Penalties)


@dataclass
class Token:
    """One token of a choice, as the engine reports it."""

    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclass
class Job:
    """One prompt with `n` choices. `emit` is called from the engine thread with events:
    ("prompt", [Token]) once when echo is asked, ("token", choice, Token), ("done", choice, reason),
    ("error", message)."""

    prompt: list[int]
    n: int
    sampling: Sampling
    emit: Callable[[tuple], None]
    cancelled: bool = False  # the whole job (client gone)
    stopped: set[int] = field(default_factory=set)  # choices the client no longer needs (stop string hit)


@dataclass
class _Row:
    job: Job
    choice: int
    length: int  # tokens in the cache
    next_token: int  # sampled, not yet fed
    produced: int  # tokens sampled so far
    generator: torch.Generator | None
    generated: list[int] = field(default_factory=list)  # kept only when a penalty needs it

    @property
    def feeds_left(self) -> int:
        return self.job.sampling.max_tokens - self.produced

    @property
    def gone(self) -> bool:
        return self.job.cancelled or self.choice in self.job.stopped


class Engine:
    def __init__(self, model: Transformer, max_batch: int, max_queue: int, dtype: torch.dtype = torch.float32):
        self.model, self.max_batch, self.max_queue, self.dtype = model, max_batch, max_queue, dtype
        self.context = model.cfg.max_seq_len
        self.device = model.tok_emb.weight.device
        # The batched forward keeps PyTorch's default products (MKL): routed through the library
        # choice (kernels/products.py) the 3M model's server peaked 80 MB higher and served 1 client at
        # half the rate on a Zen 5, as oneDNN builds a kernel for every new row count (docs/speed.md).
        # Memory is taken where rows are written (decoding.zeros_on_write), not for max_batch x context.
        self.cache = new_cache(model, max_batch, self.context, lazy=True)
        self.col = 0
        self.native: NativeDecoder | None = None  # the kernel for a lone row, and its one-row cache
        if NativeDecoder.available(model, 1, dtype):
            self.native = NativeDecoder(model, new_cache(model, 1, self.context, lazy=True))
        self.lone = False  # the one running row's keys/values are in the kernel's cache, not self.cache
        self.rows: list[_Row] = []
        self.waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self.finished = self.cancelled = 0  # sequences so far, for /health
        self.steps = 0  # decoding steps so far (one forward call or kernel call each, whatever the batch)
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="tinyscale-engine", daemon=True)
        self._thread.start()

    # --- the request side (any thread) -------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(job)
            self._cond.notify()

    def stats(self) -> dict[str, int]:
        return {"running": len(self.rows), "waiting": len(self.waiting), "finished": self.finished,
                "cancelled": self.cancelled, "steps": self.steps, "max_batch": self.max_batch,
                "max_queue": self.max_queue}

    def cache_bytes(self) -> tuple[int, int]:
        """(bytes of keys and values a running sequence holds per token, the most the cache can hold:
        max_batch x context tokens). The cache takes memory only where rows are written, so a server
        holds about the first figure x the tokens of its running sequences (docs/serve.md)."""
        k = self.cache.k  # [layers, rows, heads, positions, head_dim]
        per_token = 2 * k.element_size() * k.shape[0] * k.shape[2] * k.shape[4]
        return per_token, per_token * self.max_batch * self.context

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # --- the engine thread ---------------------------------------------------------------------------

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _loop(self) -> None:
        with torch.inference_mode(), self._autocast():
            while True:
                with self._cond:
                    while not self._closing and not self.waiting and not self.rows:
                        self._cond.wait()
                    if self._closing:
                        break
                try:
                    self._drop_gone()
                    self._admit()
                    if self.rows:
                        self._step()
                except Exception as e:  # a bug must not take the server down: fail the requests involved
                    log.exception("engine step failed")
                    for job in {id(r.job): r.job for r in self.rows}.values():
                        job.emit(("error", f"internal error: {type(e).__name__}"))
                    self.rows.clear()

    def _next_waiting(self) -> Job | None:
        with self._cond:
            while self.waiting and self.waiting[0].cancelled:
                self.waiting.popleft()
            return self.waiting[0] if self.waiting else None

    def _admit(self) -> None:
        while (job := self._next_waiting()) is not None:
            if len(self.rows) + job.n > self.max_batch:
                return
            # After admission every row must end at the new column and still have room for its tokens.
            new_col = max([len(job.prompt)] + [r.length for r in self.rows])
            need = max([job.sampling.max_tokens - 1] + [r.feeds_left for r in self.rows])
            if new_col + need > self.context:
                return
            with self._cond:
                self.waiting.popleft()
            try:
                self._start(job, new_col)
            except Exception:  # fail this request only; the running ones go on
                log.exception("prefill failed")
                job.emit(("error", "internal error while reading the prompt"))
                job.cancelled = True  # any of its rows already placed leave at the next step

    def _shift(self, new_col: int) -> None:
        """Move the filled block so that every row ends at `new_col` instead of `self.col`."""
        self._leave_lone()
        if self.rows and new_col != self.col:
            n, width = len(self.rows), max(r.length for r in self.rows)
            for t in (self.cache.k, self.cache.v):
                for layer in t:  # a layer at a time: the copy's scratch is one layer's block, not the cache's
                    layer[:n, :, new_col - width:new_col] = layer[:n, :, self.col - width:self.col].clone()
        self.col = new_col

    def _start(self, job: Job, new_col: int) -> None:
        """Prefill the prompt, report its echo and first tokens, and give each unfinished choice a row."""
        s, L = job.sampling, len(job.prompt)
        tmp = new_cache(self.model, 1, L)
        h = self.model(torch.tensor([job.prompt], device=self.device), tmp, hidden=True)
        if s.echo:
            logits = self.model.head(h[0, :-1]) if L > 1 else h.new_zeros(0, self.model.cfg.vocab_size)
            job.emit(("prompt", self._prompt_tokens(job.prompt, logits, s.logprobs)))
        if s.max_tokens == 0:
            for c in range(job.n):
                job.emit(("done", c, "length"))
            return
        last = self.model.head(h[:, -1]).float()
        self._shift(new_col)
        for c in range(job.n):
            gen = None
            if s.temperature > 0:
                seed = s.seed + c if s.seed is not None else int(torch.randint(2**62, ()).item())
                gen = torch.Generator(device=self.device).manual_seed(seed)
            row = _Row(job, c, L, 0, 0, gen)
            if not self._sample([row], last)[0]:
                self.finished += 1
                continue
            r = len(self.rows)
            for src, dst in ((tmp.k, self.cache.k), (tmp.v, self.cache.v)):
                dst[:, r, :, new_col - L:new_col] = src[:, 0]
            self.rows.append(row)

    def _prompt_tokens(self, prompt: list[int], logits: Tensor, top: int | None) -> list[Token]:
        """Echoed prompt tokens: the first has no log-probability (nothing precedes it)."""
        out = [Token(prompt[0])]
        if top is None or len(prompt) == 1:
            return out + [Token(t) for t in prompt[1:]]
        logp = torch.log_softmax(logits.float(), dim=-1)
        chosen = logp.gather(1, torch.tensor(prompt[1:], device=logp.device)[:, None])[:, 0].tolist()
        tops = _top(logp, top)
        return out + [Token(t, lp, tp) for t, lp, tp in zip(prompt[1:], chosen, tops, strict=True)]

    def _sample(self, rows: list[_Row], logits: Tensor) -> list[bool]:
        """Pick each row's next token from logits [n, V]; report it; return which rows go on."""
        logp = torch.log_softmax(logits, dim=-1) if any(r.job.sampling.logprobs is not None for r in rows) else None
        greedy = logits.argmax(dim=-1).tolist()
        alive = []
        for i, row in enumerate(rows):
            s = row.job.sampling
            tok = greedy[i] if s.temperature == 0 and not s.penalties.active else self._pick(row, logits[i:i + 1])
            row.next_token, row.produced = tok, row.produced + 1
            if s.penalties.active:
                row.generated.append(tok)
            if s.stop_id is not None and tok == s.stop_id:  # the end-of-text token ends the text unseen
                row.job.emit(("done", row.choice, "stop"))
                alive.append(False)
                continue
            token = Token(tok)
            if logp is not None and s.logprobs is not None:
                token = Token(tok, float(logp[i, tok]), _top(logp[i:i + 1], s.logprobs)[0])
            row.job.emit(("token", row.choice, token))
            if row.produced >= s.max_tokens:
                row.job.emit(("done", row.choice, "length"))
                alive.append(False)
            else:
                alive.append(True)
        return alive

    @staticmethod
    def _pick(row: _Row, logits: Tensor) -> int:
        s = row.job.sampling
        if s.penalties.active:
            logits = adjust(logits, s.penalties, row.job.prompt, row.generated, s.temperature, s.stop_id)
        return int(sample_next(logits, s.temperature, s.top_k, s.top_p, row.generator)[0])

    def _enter_lone(self) -> None:
        """Copy the one running row into the kernel's cache, at columns [0, length)."""
        length, cache = self.rows[0].length, self.native.cache
        for src, dst in ((self.cache.k, cache.k), (self.cache.v, cache.v)):
            dst[:, 0, :, :length] = src[:, 0, :, self.col - length:self.col]
        cache.pos, self.lone = length, True

    def _leave_lone(self) -> None:
        """Copy the lone row back into the batch cache, at columns [0, length), before others join."""
        if not self.lone:
            return
        length, cache = self.rows[0].length, self.native.cache
        for src, dst in ((cache.k, self.cache.k), (cache.v, self.cache.v)):
            dst[:, 0, :, :length] = src[:, 0, :, :length]
        self.col, self.lone = length, False

    def _step(self) -> None:
        """Feed every row its pending token (one forward call for the batch, or one kernel call for a
        lone row) and sample the next."""
        self.steps += 1
        if len(self.rows) == 1 and self.native is not None:
            if not self.lone:
                self._enter_lone()
            row = self.rows[0]
            logits = self.native.step(torch.tensor([row.next_token])).float()
            row.length += 1
            self._finish_step(self._sample(self.rows, logits))
            return
        n, col = len(self.rows), self.col
        lengths = torch.tensor([r.length for r in self.rows], device=self.device)
        tokens = torch.tensor([[r.next_token] for r in self.rows], device=self.device)
        view = copy.copy(self.cache)  # the first n rows, sharing storage with the full cache
        view.k, view.v, view.pos = self.cache.k[:, :n], self.cache.v[:, :n], col
        keys = torch.arange(col + 1, device=self.device)
        mask = (keys[None, :] >= (col - lengths)[:, None])[:, None, None, :]
        logits = self.model(tokens, view, lengths[:, None], mask)[:, -1].float()
        self.col = col + 1
        for r in self.rows:
            r.length += 1
        self._finish_step(self._sample(self.rows, logits))

    def _finish_step(self, alive: list[bool]) -> None:
        done = [i for i, ok in enumerate(alive) if not ok]
        self.finished += len(done)
        self._remove(done)

    def _drop_gone(self) -> None:
        gone = [i for i, r in enumerate(self.rows) if r.gone]
        self.cancelled += len(gone)
        self._remove(gone)

    def _remove(self, indices: list[int]) -> None:
        """Free rows, keeping the rest packed at the front: the last row moves into each hole."""
        for i in sorted(indices, reverse=True):
            last = len(self.rows) - 1
            if i != last:
                width = self.rows[last].length
                for t in (self.cache.k, self.cache.v):
                    t[:, i, :, self.col - width:self.col] = t[:, last, :, self.col - width:self.col]
                self.rows[i] = self.rows[last]
            self.rows.pop()
        if not self.rows:
            self.col, self.lone = 0, False


def _top(logp: Tensor, k: int) -> list[list[tuple[int, float]]]:
    if k == 0:
        return [[] for _ in range(logp.shape[0])]
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
