"""The training loop: one process, or one per device under `torchrun` (DDP).

    tinyscale train --data SHARDS --preset 3M --tokens 20M --out RUN
    torchrun --standalone --nproc_per_node 2 -m tinyscale.cli train ...   # gloo on CPU, NCCL on GPU
    tinyscale train --resume RUN                               # after a crash or kill -9

Choices that matter for reproducing a run:
- Data order is stateless: the batch of step k is `batch` random windows of seq_len + 1 tokens drawn
  from the train split by a generator seeded with (seed, k). Resuming needs no data cursor, and under
  DDP rank r takes rows [r*B/W, (r+1)*B/W) of the same global batch, so 1 and W processes see the
  same data (their losses agree up to float summation order).
- AdamW with decoupled weight decay on the matrices of linear layers only; norms, biases and
  embeddings (and so a tied output head) are not decayed. Linear warmup, then cosine to min_lr.
- Checkpoints (training/checkpoints.py): weights, then a state file with the optimizer and RNG
  states, each written atomically; a log-spaced set is kept. The run folder (training/run_folder.py)
  stays hidden until the first checkpoint, so a run's folder always holds a resumable run.
- Only rank 0 writes files. A non-finite loss or gradient stops the run before the optimizer step,
  so every checkpoint on disk holds finite weights.

The other parts live in tinyscale/training/: DDP setup, the head loss and its kernels, periodic
evaluation, provenance, checkpoints and the run folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tinyscale
from tinyscale import progress, tracking
from tinyscale.config import ModelConfig, TrainConfig
from tinyscale.errors import UserError
from tinyscale.model import Transformer, bf16_native, count_params, flops_per_token, model_config
from tinyscale.training.allocator import keep_freed_memory
from tinyscale.training.checkpoints import Retention
from tinyscale.training.distributed import Dist
from tinyscale.training.head_loss import lm_loss
from tinyscale.training.periodic_eval import evaluate, save_window_sums, validation_data
from tinyscale.training.provenance import git_commit, machine_info
from tinyscale.training.run_folder import RunFolder, check_new_out, open_run, resume_config
from tinyscale.training.structured import ExampleSource, target_loss
from tinyscale.validate import check_output, check_train, os_errors

# Options that may differ when a run is resumed: they do not change what is computed (data is
# checked by its hashes instead), except `tokens` and `max_minutes`, which extend or shorten the run on
# purpose.
RESUMABLE_CHANGES = ("tokens", "max_minutes", "device", "threads", "compile", "data", "track")


# --- data -------------------------------------------------------------------------------------------


def batch_starts(seed: int, step: int, n_tokens: int, seq_len: int, batch: int, grad_accum: int) -> np.ndarray:
    """Start offsets [grad_accum, batch] of the windows of global step `step`: a function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - seq_len, size=(grad_accum, batch), dtype=np.int64)


def windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int, device: torch.device):
    """Inputs and next-token targets [len(starts), seq_len] for windows starting at `starts`."""
    idx = starts[:, None] + np.arange(seq_len + 1)
    w = torch.from_numpy(tokens[idx].astype(np.int64))
    if device.type == "cuda":
        w = w.pin_memory().to(device, non_blocking=True)
    else:
        w = w.to(device)
    return w[:, :-1], w[:, 1:]


def micro_batches(cfg: TrainConfig, tokens: np.ndarray, step: int, device: torch.device,
                  rows: slice = slice(None)) -> list:
    """The (inputs, targets) of each micro-batch of optimizer step `step`; `rows`: this rank's share."""
    starts = batch_starts(cfg.seed, step, len(tokens), cfg.seq_len, cfg.batch, cfg.grad_accum)
    return [windows(tokens, starts[j, rows], cfg.seq_len, device) for j in range(cfg.grad_accum)]


# --- schedule, optimizer, precision --------------------------------------------------------------------


def lr_at(cfg: TrainConfig, step: int, steps: int) -> float:
    """Learning rate of update `step` (0-based): linear warmup, then cosine from lr to min_lr."""
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, steps - cfg.warmup))
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * frac))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    decay = [m.weight for m in model.modules()
             if isinstance(m, torch.nn.Linear) and id(m.weight) not in embeddings]
    decay_ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in decay_ids]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    # The fused kernel is one launch per step instead of one per tensor on GPUs, and one pass over each
    # tensor instead of about ten on the CPU (docs/speed.md).
    # (CPU fused AdamW arrived in torch 2.4; the package accepts 2.3.)
    cpu_fused = device.type == "cpu" and tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 4)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda" or cpu_fused)


def autocast(cfg: TrainConfig, device: torch.device):
    if cfg.dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def forward_backward(net: torch.nn.Module, head: torch.nn.Linear, micro_batches: list, cfg: TrainConfig,
                     device: torch.device, ddp: Any = None) -> torch.Tensor:
    """Accumulate the gradients of one optimizer step; return the mean loss over micro-batches."""
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        # Under DDP, gradients are averaged across ranks only on the last micro-batch.
        sync = ddp is None or i == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with autocast(cfg, device):  # with a structure, (x, y) are an example batch's (w, valid)
                loss = target_loss(net, head, x, y, cfg) if cfg.structure else lm_loss(net, head, x, y, cfg)
            (loss / len(micro_batches)).backward()
        loss_sum += loss.detach()
    return loss_sum / len(micro_batches)


def clip_gradients(params: list[torch.Tensor], cfg: TrainConfig) -> torch.Tensor:
    """Clip to `grad_clip` (0: no clipping); return the norm before clipping."""
    return torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))


def build_model(mcfg: ModelConfig, cfg: TrainConfig, device: torch.device) -> Transformer:
    """The model to train. On the CPU its causal attention (with the rotary positions) runs in the C++
    kernel (kernels/causal.py, kernels/fused.py; docs/speed.md), and in eager mode its RMSNorms and
    SwiGLU activations too; elsewhere, and with TINYSCALE_NO_KERNELS=1, PyTorch's operators."""
    if mcfg.structure is not None:
        from tinyscale.structure import StructuredLM

        model = StructuredLM(mcfg).to(device)
    else:
        model = Transformer(mcfg).to(device)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults for each step's activations (training/allocator.py)
        from tinyscale.kernels.causal import use_kernel_attention

        use_kernel_attention(model)  # masked attention (a structure's) falls back to PyTorch's
        from tinyscale.kernels.fused import use_fused_kernels

        use_fused_kernels(model, compiled=cfg.compile)  # rotary + attention, norms, SwiGLU: one pass each
        if cfg.compile:
            from tinyscale.kernels import tag_compile_caches

            tag_compile_caches()  # a graph compiled with another version's operators is not reused
    return model


def timing_step(cfg: TrainConfig, mcfg: ModelConfig, device: torch.device):
    """A function `step(k)` doing the trainer's optimizer step k on random tokens: what
    bench/train_speed.py times, and what the demo measures to plan its budget. Needs no corpus;
    `cfg.dtype` must be resolved (fp32 or bf16)."""
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg, cfg, device)
    opt = make_optimizer(model, cfg, device)
    net = torch.compile(model) if cfg.compile else model
    tokens = np.random.default_rng(cfg.seed).integers(0, mcfg.vocab_size, 1 << 20).astype(np.int32)
    params = list(model.parameters())

    def step(k: int) -> None:
        forward_backward(net, model.head, micro_batches(cfg, tokens, k, device), cfg, device)
        clip_gradients(params, cfg)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# --- config resolution and checks ----------------------------------------------------------------------


def resolve(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """Fill in the defaults that depend on other options or on the machine; run.json stores the result."""
    updates: dict[str, Any] = {"data": str(Path(cfg.data).resolve())}
    if cfg.max_seq_len is None:
        # The model's context is what it trains at: positions past seq_len would never be trained.
        updates["max_seq_len"] = cfg.seq_len + (cfg.input_len if cfg.structure else 0)
    if cfg.min_lr is None:
        updates["min_lr"] = cfg.lr / 10
    if cfg.dtype == "auto":
        updates["dtype"] = "bf16" if bf16_native(device) else "fp32"
    elif cfg.dtype == "bf16" and not bf16_native(device):
        # Honoured (the user asked), but said: emulated bf16 ran the training-speed shapes 12-21x
        # slower than fp32 under the AVX2 emulation (docs/speed.md), and it is less exact.
        progress.log.warning("--dtype bf16 on a %s without native bf16: emulated, much slower than fp32 here "
                             "(docs/speed.md)", device.type.upper())
    return cfg.model_copy(update=updates)


def build_model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    try:
        return model_config(cfg.preset, vocab_size=vocab_size, max_seq_len=cfg.max_seq_len, family=cfg.family,
                            d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                            tie_embeddings=cfg.tie_embeddings, structure=cfg.structure)
    except ValueError as e:  # pydantic's ValidationError is a ValueError: a shape that cannot be built
        raise UserError(f"model shape: {str(e).splitlines()[-1].strip()}") from None


def check_fits(cfg: TrainConfig, shards: Any, world: int) -> None:
    need = cfg.seq_len + (cfg.input_len if cfg.structure else 0)
    if need > cfg.max_seq_len:
        raise UserError(f"--seq-len {cfg.seq_len}{' + --input-len ' + str(cfg.input_len) if cfg.structure else ''}: "
                        f"longer than the model's --max-seq-len {cfg.max_seq_len}")
    if cfg.batch % world:
        raise UserError(f"--batch {cfg.batch}: not divisible by the {world} processes")
    for split in ("train", "val"):
        n = len(shards.tokens(split))
        if n < cfg.seq_len + 1:
            raise UserError(f"{cfg.data}: the {split} split has {n} tokens, fewer than one window "
                            f"of --seq-len {cfg.seq_len} + 1")


def _check_same_data(stored: dict, data_info: dict, mcfg: ModelConfig, run_dir: Path) -> None:
    old = stored.get("data", {})
    for key in ("tokenizer_sha256", "corpus_sha256"):
        if old.get(key) != data_info[key]:
            raise UserError(f"{data_info['dir']}: {key} differs from the one {run_dir} was trained on")
    if stored.get("model") != mcfg.model_dump():
        raise UserError(f"--resume {run_dir}: the model shape differs from run.json")


# --- the run --------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, out: str | Path) -> dict[str, Any]:
    """Start a new run in `out` (which must not exist or be empty); return the last metrics line."""
    out = Path(out)
    check_new_out(out)
    check_output(out, {"shards folder": cfg.data})
    check_train(cfg.model_dump())
    return _run(cfg, out, resuming=False)


def resume(run_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Continue a run from its newest checkpoint; `overrides` may only change RESUMABLE_CHANGES."""
    run_dir = Path(run_dir)
    cfg, info = resume_config(run_dir, overrides, RESUMABLE_CHANGES, TrainConfig)
    check_train(cfg.model_dump())
    return _run(cfg, run_dir, resuming=True, stored=info)


def _open_data(cfg: TrainConfig):
    from tinyscale.data.shards import ShardSet

    shards = ShardSet.open(cfg.data)
    shards.verify()  # an id >= vocab_size would otherwise fail deep inside the embedding
    return shards


def _run_info(cfg: TrainConfig, mcfg: ModelConfig, shards: Any, device: torch.device) -> dict[str, Any]:
    """run.json: the resolved config, the model, the data and what the run was trained with."""
    return {
        "config": cfg.model_dump(),
        "model": mcfg.model_dump(),
        **_counts(cfg, mcfg),
        # The context the model was trained at, and so the one it is used within (runs.load_model).
        "context": cfg.seq_len,
        "data": {"dir": cfg.data, "tokenizer_sha256": shards.meta.get("tokenizer_sha256"),
                 "corpus_sha256": shards.meta.get("corpus_sha256"), "vocab_size": shards.vocab_size,
                 "eot_id": shards.eot_id},
        "code": {"tinyscale": tinyscale.__version__, "torch": torch.__version__, "git": git_commit()},
        "machine": machine_info(device),
    }


def _counts(cfg: TrainConfig, mcfg: ModelConfig) -> dict[str, Any]:
    """Parameter counts and training FLOPs per token (with a structure: per target token; structure.py)."""
    if mcfg.structure is None:
        return {"params": {"total": count_params(mcfg), "non_embedding": count_params(mcfg, non_embedding=True)},
                "flops_per_token": flops_per_token(mcfg, cfg.seq_len)}
    from tinyscale.structure import count_structured_params, structured_flops_per_token

    return {"params": {"total": count_structured_params(mcfg),
                       "non_embedding": count_structured_params(mcfg, non_embedding=True)},
            "flops_per_token": structured_flops_per_token(mcfg, cfg.input_len, cfg.seq_len)}


def _run(cfg: TrainConfig, run_dir: Path, resuming: bool, stored: dict | None = None) -> dict[str, Any]:
    d = Dist(cfg.device)
    try:
        local = max(1, d.local_world)
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local))
        cfg = resolve(cfg, d.device)
        tracking.require(cfg.track)
        shards = _open_data(cfg)
        mcfg = build_model_config(cfg, shards.vocab_size)
        check_fits(cfg, shards, d.world)
        info = _run_info(cfg, mcfg, shards, d.device)
        if stored is not None:
            _check_same_data(stored, info["data"], mcfg, run_dir)
        d.barrier()  # every rank has checked the input before rank 0 writes anything
        retention = Retention(cfg.checkpoint_every, cfg.dense_checkpoints)
        with open_run(run_dir, not resuming, retention, d.main) as run, os_errors(run_dir):
            last = _train_locked(cfg, mcfg, shards, run, d, info, stored)
        # Rank 0 hosts the rendezvous store: were it to exit while another rank is still finishing,
        # that rank would abort ("terminate called without an active exception"). So all finish first.
        d.barrier()
        return last if d.main else {}  # one summary per run, not one per rank
    finally:
        d.close()


def _train_locked(cfg: TrainConfig, mcfg: ModelConfig, shards: Any, run: RunFolder, d: Dist, info: dict,
                  stored: dict | None) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg, cfg, d.device)
    opt = make_optimizer(model, cfg, d.device)
    start_step, state = (0, {}) if stored is None else run.load_newest(model, opt, d.device)
    elapsed = float(state.get("elapsed_s", 0.0))
    if stored is not None and start_step >= cfg.steps:
        if cfg.tokens != stored["config"].get("tokens"):
            raise UserError(f"--tokens {cfg.tokens}: {run.out} is already trained to step {start_step} "
                            f"({start_step * cfg.tokens_per_step:,} tokens); give more tokens to extend it")
        progress.info(f"{run.out}: already trained to step {start_step} of {cfg.steps}; nothing to do")
        return {}
    if stored is not None and _out_of_time(cfg, elapsed):
        # Stopped by its deadline: a complete run with fewer tokens, as a run at its token target is.
        progress.info(f"{run.out}: stopped at step {start_step} of {cfg.steps} by its deadline (--max-minutes "
                      f"{cfg.max_minutes:g}); nothing to do (give a larger --max-minutes to train on)")
        if "end" not in stored:  # killed between its last checkpoint and writing its end
            run.finish(stored, _end(cfg, start_step, elapsed))
        return {}
    run.begin(info, Path(cfg.data) / "tokenizer.json", start_step)
    return _loop(cfg, model, opt, shards, run, d, info, start_step, elapsed)


def _out_of_time(cfg: TrainConfig, elapsed: float) -> bool:
    return cfg.max_minutes is not None and elapsed >= cfg.max_minutes * 60


def _end(cfg: TrainConfig, step: int, elapsed: float) -> dict[str, Any]:
    """run.json "end": why the run stopped, and what it trained against what it was given."""
    return {"reason": "tokens" if step >= cfg.steps else "deadline", "step": step, "planned_steps": cfg.steps,
            "tokens": step * cfg.tokens_per_step, "planned_tokens": cfg.tokens, "minutes": round(elapsed / 60, 4),
            "max_minutes": cfg.max_minutes}


# --- the loop -------------------------------------------------------------------------------------------


class _Clock:
    """The run's wall time (`elapsed`, carried across resumes) and its tokens/s since the last log
    line, which leaves evaluation and checkpoint saving out."""

    def __init__(self, elapsed: float) -> None:
        self.elapsed = elapsed
        self.t0 = self.t_log = time.perf_counter()
        self.tokens = 0

    def tick(self) -> float:
        now = time.perf_counter()
        self.elapsed += now - self.t0
        self.t0 = now
        return now

    def rate(self) -> float:
        """Tokens/s since the last call (or `restart`), ticking the clock."""
        now = self.tick()
        rate = self.tokens / max(now - self.t_log, 1e-9)
        self.tokens, self.t_log = 0, now
        return rate

    def restart(self) -> None:
        self.t_log, self.tokens = time.perf_counter(), 0


class _Steps:
    """One run's model, optimizer and data on this rank, and what one step, one evaluation and one
    checkpoint do with them."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, shards: Any,
                 run: RunFolder, d: Dist, info: dict) -> None:
        self.cfg, self.model, self.opt, self.run, self.d = cfg, model, opt, run, d
        self.fpt = info["flops_per_token"]
        self.tokens = shards.tokens("train")
        self.examples = ExampleSource(shards, "train", cfg) if cfg.structure else None
        self.rows = slice(d.rank * cfg.batch // d.world, (d.rank + 1) * cfg.batch // d.world)
        self.ddp = None
        if d.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        net: torch.nn.Module = self.ddp or model
        self.net = torch.compile(net) if cfg.compile else net
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.val_data = validation_data(shards, cfg)
        self.last: dict[str, Any] = {}  # the newest value of every metric, returned at the end

    def log(self, row: dict[str, Any]) -> None:
        self.last.update(row)
        self.run.log(row)

    def counts(self, step: int) -> dict[str, Any]:
        per_step = self.cfg.tokens_per_step
        return {"step": step, "tokens": step * per_step, "flops": float(self.fpt) * step * per_step}

    def optimizer_step(self, step: int) -> tuple[float, float]:
        """Update `step` (0-based); return (mean loss over all ranks, learning rate)."""
        lr = lr_at(self.cfg, step, self.cfg.steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        micro = (self.examples.micro_batches(step, self.d.device, self.rows) if self.examples is not None
                 else micro_batches(self.cfg, self.tokens, step, self.d.device, self.rows))
        loss = forward_backward(self.net, self.model.head, micro, self.cfg, self.d.device, self.ddp)
        norm = clip_gradients(self.params, self.cfg)
        loss_val = self.d.mean(loss).item()
        if not (math.isfinite(loss_val) and math.isfinite(norm.item())):
            kept = self.run.checkpoints()
            raise UserError(f"training diverged at step {step + 1}: loss {loss_val:.4g}, gradient norm "
                            f"{norm.item():.4g}; last good checkpoint: "
                            f"{f'step {kept[-1]}' if kept else 'none'} (try a lower --lr)")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss_val, lr

    def run_eval(self, step: int, elapsed: float) -> None:
        result = evaluate(self.model, self.val_data, self.cfg, self.d)
        sums = result.pop("_window_sums")
        if self.d.main:
            save_window_sums(self.run.path, step, sums, self.val_data.shares)
        self.log({**self.counts(step), **result, "elapsed_s": round(elapsed, 3)})

    def checkpoint(self, step: int, elapsed: float) -> None:
        self.run.save(step, self.model, self.opt, self.d.device, step * self.cfg.tokens_per_step, elapsed)


def _loop(cfg: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, shards: Any, run: RunFolder,
          d: Dist, info: dict, start_step: int, elapsed: float) -> dict[str, Any]:
    steps = cfg.steps
    s = _Steps(cfg, model, opt, shards, run, d, info)
    retention = run.retention
    if start_step == 0 and cfg.eval_every:
        s.run_eval(0, elapsed)
    model.train()
    clock = _Clock(elapsed)
    done = start_step
    with progress.bar(steps, "train", completed=start_step) as bar:
        for step in range(start_step, steps):
            loss, lr = s.optimizer_step(step)
            done = step + 1
            clock.tokens += cfg.tokens_per_step
            bar.update(1, loss=loss)
            clock.tick()
            # Every rank takes the same decision (any rank's clock past the deadline stops them all).
            out_of_time = done < steps and cfg.max_minutes is not None and bool(
                d.mean(torch.tensor(float(_out_of_time(cfg, clock.elapsed)), device=d.device)).item() > 0)
            last = done == steps or out_of_time
            if done % cfg.log_every == 0 or last or done == 1:
                rate = clock.rate()
                s.log({**s.counts(done), "lr": lr, "loss": loss, "tokens_per_s": round(rate, 1),
                       "elapsed_s": round(clock.elapsed, 3)})
                bar.update(0, loss=loss, tok_s=f"{rate:,.0f}")
            evaluating = bool(cfg.eval_every and done % cfg.eval_every == 0) or last
            if evaluating:
                s.run_eval(done, clock.elapsed)
            saving = retention.due(done, last)
            if saving:
                clock.tick()
                s.checkpoint(done, clock.elapsed)
            if (cfg.eval_every and done % cfg.eval_every == 0) or saving:
                clock.restart()  # keep eval and saving out of tokens/s
            if out_of_time:
                progress.info(f"{run.out}: deadline (--max-minutes {cfg.max_minutes:g}) reached at step {done} of "
                              f"{steps}: {done * cfg.tokens_per_step:,} of {cfg.tokens:,} tokens")
                break
    clock.tick()
    run.finish(info, _end(cfg, done, clock.elapsed))
    return s.last
