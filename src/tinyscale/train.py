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
- Checkpoints: weights with safetensors (written first), then a state file with the optimizer, RNG
  states, step and token count (written second); each atomically, so a checkpoint with both files is
  complete. We keep the newest, the checkpoint_every-multiples nearest to each power of two (a
  log-spaced set for learning curves) and an optional dense early set (steps 1, 2, 4, ...).
- Only rank 0 writes files. A non-finite loss or gradient stops the run before the optimizer step,
  so every checkpoint on disk holds finite weights.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import tinyscale
from tinyscale import progress
from tinyscale.config import ModelConfig, TrainConfig
from tinyscale.errors import UserError
from tinyscale.fileio import atomic_open, read_json, read_lines, set_file_mode, write_json
from tinyscale.kernels import cpu_kernels
from tinyscale.model import Transformer, bf16_native, count_params, flops_per_token, model_config
from tinyscale.runs import checkpoint_dir, list_checkpoints, state_path, weights_path
from tinyscale.validate import check_output, check_train, cores, os_errors, run_lock

# Options that may differ when a run is resumed: they do not change what is computed (data is
# checked by its hashes instead), except `tokens`, which extends or shortens the run on purpose.
RESUMABLE_CHANGES = ("tokens", "device", "threads", "compile", "data")


# --- distributed setup ----------------------------------------------------------------------------


class Dist:
    """Rank, world size and device of this process (a single process is rank 0 of 1)."""

    def __init__(self, device_name: str) -> None:
        from tinyscale.devices import pick_device

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        device = pick_device(device_name)
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            t = t.clone()
            dist.all_reduce(t)
            t /= self.world
        return t

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


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
    # The fused kernel is one launch per step instead of one per tensor: it matters on GPUs.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def autocast(cfg: TrainConfig, device: torch.device):
    if cfg.dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def softmax_xent_grad(logits: torch.Tensor, targets: torch.Tensor, scale: float,
                      dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, scale * (softmax - onehot) in `dtype`) of one chunk of logits.

    Written as one function so that `torch.compile` can fuse it into two passes over the chunk
    (row max and sum of exponentials, then the gradient); eagerly it is a handful of passes.
    """
    logits = logits.float()
    top = logits.amax(dim=-1, keepdim=True)
    exp = (logits - top).exp_()
    total = exp.sum(dim=-1, keepdim=True)
    loss = (top + total.log() - logits.gather(1, targets[:, None])).sum()
    grad = exp.div_(total).scatter_add_(1, targets[:, None], exp.new_full((len(targets), 1), -1.0))
    return loss, grad.mul_(scale).to(dtype)


@functools.cache
def _compiled_xent_grad():
    return torch.compile(softmax_xent_grad, dynamic=False)


def _kernel_xent_grad(kernels, logits: torch.Tensor, targets: torch.Tensor, scale: float,
                      dtype: torch.dtype) -> tuple[float, torch.Tensor]:
    """softmax_xent_grad in one C++ pass per row (kernels/loss.cpp); overwrites the chunk's logits."""
    logits = logits.float().contiguous()
    loss = kernels.softmax_xent_grad_(logits, targets.long().contiguous(), scale)
    return loss, logits.to(dtype)


def xent_grad_fn(compile_: bool, device: torch.device | None = None):
    """The chunk kernel of HeadLoss: on the CPU the C++ one when it is built (with it the head and
    loss of a 64-wide model at vocabulary 4096 took ~90 instead of ~116 ms a step), else
    softmax_xent_grad, compiled once per process when asked (one fixed shape per run, plus the
    last, shorter chunk)."""
    if device is not None and device.type == "cpu" and (kernels := cpu_kernels()) is not None:
        return functools.partial(_kernel_xent_grad, kernels)
    return _compiled_xent_grad() if compile_ else softmax_xent_grad


class HeadLoss(torch.autograd.Function):
    """Mean cross-entropy of `h @ weight.T` against `targets`, without materialising all the logits.

    For tiny models the output head and softmax dominate the step: [tokens, vocab] logits in float32
    are far larger than anything else and every pass over them is memory-bound. Here rows go through
    in chunks small enough to stay in cache, and since the loss is the last operation, the gradients
    for h and weight are computed in the forward pass (softmax - onehot per chunk); backward only
    scales them. Matmuls run in `dtype` (bfloat16 under autocast), softmax in float32.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype,
                chunk: int, xent_grad) -> torch.Tensor:
        n = h.shape[0]
        with torch.autocast(h.device.type, enabled=False):
            hc, wc = h.detach().to(dtype), weight.detach().to(dtype)
            grad_h = torch.empty(h.shape, dtype=torch.float32, device=h.device)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device)
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            for i in range(0, n, chunk):
                hi = hc[i:i + chunk]
                loss, g = xent_grad(hi @ wc.t(), targets[i:i + chunk], 1.0 / n, dtype)
                total += loss
                grad_h[i:i + chunk] = g @ wc
                grad_w += g.t() @ hi
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (h.dtype, weight.dtype)
        return total / n

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return (grad_h * grad_out).to(ctx.dtypes[0]), (grad_w * grad_out).to(ctx.dtypes[1]), None, None, None, None


def lm_loss(net: torch.nn.Module, head: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor,
            cfg: TrainConfig) -> torch.Tensor:
    """Mean next-token loss of one micro-batch; `net` is the (wrapped) model, `head` its output layer."""
    h = net(x, hidden=True).flatten(0, 1)
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32
    chunk = max(64, (1 << 20) // head.out_features)  # ~4 MB of float32 logits per chunk
    return HeadLoss.apply(h, head.weight, y.flatten(), dtype, chunk, xent_grad_fn(cfg.compile, h.device))


def forward_backward(net: torch.nn.Module, head: torch.nn.Linear, micro_batches: list, cfg: TrainConfig,
                     device: torch.device, ddp: Any = None) -> torch.Tensor:
    """Accumulate the gradients of one optimizer step; return the mean loss over micro-batches."""
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(micro_batches):
        # Under DDP, gradients are averaged across ranks only on the last micro-batch.
        sync = ddp is None or i == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            with autocast(cfg, device):
                loss = lm_loss(net, head, x, y, cfg)
            (loss / len(micro_batches)).backward()
        loss_sum += loss.detach()
    return loss_sum / len(micro_batches)


def build_model(mcfg: ModelConfig, cfg: TrainConfig, device: torch.device) -> Transformer:
    """The model to train. On the CPU its causal attention runs in the C++ kernel (kernels/causal.py:
    ~2.5x PyTorch's flash attention at head size 16, forward + backward, on 2 AVX2 cores); elsewhere, and with
    TINYSCALE_NO_KERNELS=1, in PyTorch's scaled_dot_product_attention."""
    model = Transformer(mcfg).to(device)
    if device.type == "cpu":
        from tinyscale.kernels.causal import use_kernel_attention

        use_kernel_attention(model)
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
        starts = batch_starts(cfg.seed, k, len(tokens), cfg.seq_len, cfg.batch, cfg.grad_accum)
        micro = [windows(tokens, s, cfg.seq_len, device) for s in starts]
        forward_backward(net, model.head, micro, cfg, device)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


# --- config resolution and checks ----------------------------------------------------------------------


def resolve(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """Fill in the defaults that depend on other options or on the machine; run.json stores the result."""
    updates: dict[str, Any] = {"data": str(Path(cfg.data).resolve())}
    if cfg.max_seq_len is None:
        # The model's context is what it trains at: positions past seq_len would never be trained.
        updates["max_seq_len"] = cfg.seq_len
    if cfg.min_lr is None:
        updates["min_lr"] = cfg.lr / 10
    if cfg.dtype == "auto":
        updates["dtype"] = "bf16" if bf16_native(device) else "fp32"
    return cfg.model_copy(update=updates)


def build_model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    try:
        return model_config(cfg.preset, vocab_size=vocab_size, max_seq_len=cfg.max_seq_len, family=cfg.family,
                            d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                            tie_embeddings=cfg.tie_embeddings)
    except ValueError as e:  # pydantic's ValidationError is a ValueError: a shape that cannot be built
        raise UserError(f"model shape: {str(e).splitlines()[-1].strip()}") from None


def check_fits(cfg: TrainConfig, shards: Any, world: int) -> None:
    if cfg.seq_len > cfg.max_seq_len:
        raise UserError(f"--seq-len {cfg.seq_len}: longer than the model's --max-seq-len {cfg.max_seq_len}")
    if cfg.batch % world:
        raise UserError(f"--batch {cfg.batch}: not divisible by the {world} processes")
    for split in ("train", "val"):
        n = len(shards.tokens(split))
        if n < cfg.seq_len + 1:
            raise UserError(f"{cfg.data}: the {split} split has {n} tokens, fewer than one window "
                            f"of --seq-len {cfg.seq_len} + 1")


def check_resume(stored: dict[str, Any], overrides: dict[str, Any], run_dir: Path,
                 model: dict[str, Any] | None = None) -> None:
    for key, value in overrides.items():
        if key in RESUMABLE_CHANGES or value is None:
            continue
        if key not in stored:
            raise UserError(f"--{key.replace('_', '-')}: unknown option")
        old = stored[key]
        if old is None and model and key in model:  # the preset chose it: compare with what was built
            old = model[key]
        # Unresolved defaults ("auto", None) given again on the command line mean "as before".
        if value != old and not (key == "dtype" and value == "auto"):
            raise UserError(f"--resume {run_dir}: --{key.replace('_', '-')} {value} differs from the run's "
                            f"{old}; start a new run with --out instead")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the run's speed figures were measured on: CPU model, cores, and the GPU if one is used."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:  # not Linux
        cpu = None
    info = {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "bf16_native": bf16_native(device), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --- checkpoints --------------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, state: dict[str, Any]) -> None:
    from safetensors.torch import save_model

    path = weights_path(run_dir, step)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(model, str(tmp))  # handles the tied embedding/head tensor, which save_file refuses
        set_file_mode(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # OSError, or safetensors' own error on a full disk
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write checkpoint ({getattr(e, 'strerror', None) or e})") from None
    try:
        with atomic_open(state_path(run_dir, step), "wb") as f:
            torch.save(state, f)
    except BaseException as e:
        path.unlink(missing_ok=True)  # weights without a state file are no checkpoint: leave none
        if not isinstance(e, RuntimeError):
            raise
        # torch.save reports a failed write (a full disk) as a RuntimeError from its C++ writer
        # ("PytorchStreamWriter failed writing file", "unexpected pos"): one line naming the file.
        reason = str(e).split("] .", 1)[-1].strip().splitlines()[0] if str(e).strip() else "write failed"
        raise UserError(f"{state_path(run_dir, step)}: cannot write checkpoint ({reason}; is the disk full?)") from None


def kept_checkpoints(saved: list[int], every: int, dense: int) -> set[int]:
    """Which of the saved steps to keep: the newest, a log-spaced set and the dense early set."""
    if not saved:
        return set()
    saved = sorted(saved)
    keep = {saved[-1]}
    keep |= {s for s in saved if s <= dense and s & (s - 1) == 0}
    p = 1
    while p <= 2 * saved[-1]:
        keep.add(every * max(1, round(p / every)))
        p *= 2
    return keep & set(saved)


def prune_checkpoints(run_dir: Path, cfg: TrainConfig) -> None:
    saved = list_checkpoints(run_dir)
    for step in sorted(set(saved) - kept_checkpoints(saved, cfg.checkpoint_every, cfg.dense_checkpoints)):
        state_path(run_dir, step).unlink(missing_ok=True)  # state first: the checkpoint stops counting
        weights_path(run_dir, step).unlink(missing_ok=True)


def is_checkpoint_step(cfg: TrainConfig, step: int, steps: int) -> bool:
    dense = step <= cfg.dense_checkpoints and step & (step - 1) == 0
    return step % cfg.checkpoint_every == 0 or step == steps or dense


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after checkpoint `step`, so a resumed run reads as one clean run."""
    import json

    if not path.is_file():
        return
    keep = []
    for _, line in read_lines(path):
        line = line.rstrip("\n")
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # a line cut by a crash
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in keep))


# --- evaluation ----------------------------------------------------------------------------------------


def validation_data(shards: Any, cfg: TrainConfig) -> Any:
    """The validation windows of every periodic evaluation: the same as `tinyscale eval` takes for
    this run (evaluate/loss.py), so a learning curve has one estimate throughout."""
    from tinyscale.evaluate.loss import loss_windows

    return loss_windows("val", shards.tokens("val"), shards.skills("val"), shards.floor("val"), cfg.seq_len,
                        cfg.eval_tokens, base=shards.base("val"), min_skill_tokens=cfg.eval_min_skill_tokens)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any, cfg: TrainConfig, d: Dist) -> dict[str, Any]:
    """Validation loss over `validation_data`, overall and per skill label of the predicted token, in
    float32 (as `tinyscale eval`); the full per-skill summary (floor, baseline, intervals) too."""
    from tinyscale.evaluate.loss import summarize_sums, token_losses, window_sums

    was_training = model.training
    model.eval()
    rows = np.arange(len(data.x))[d.rank::d.world]
    loss = token_losses(model, data, d.device, batch_size=max(1, cfg.batch // d.world), rows=rows)
    model.train(was_training)
    sums = torch.from_numpy(window_sums(loss, data))
    if d.world > 1:
        sums = sums.to(d.device)
        d.sum_(sums)
        sums = sums.cpu()
    summary = summarize_sums(sums.numpy(), data.shares)
    return {
        "val_loss": summary["loss"],
        "val_loss_by_skill": {s: v["loss"] for s, v in summary["skills"].items()},
        "val_tokens_by_skill": {s: v["tokens"] for s, v in summary["skills"].items()},
        "val": summary,
        "_window_sums": sums.numpy(),  # not logged: `run_eval` keeps it in val_windows/ (paired analysis)
    }


def save_window_sums(run_dir: Path, step: int, sums: np.ndarray, shares: np.ndarray) -> None:
    """Per-window sums of one evaluation (evaluate/loss.py `window_sums`) as val_windows/<step>.npz, so
    the analysis can resample windows jointly across seeds and runs that share them (paired
    differences) instead of treating their errors as independent."""
    from tinyscale.data.corpus import SKILLS
    from tinyscale.fileio import atomic_open

    with atomic_open(run_dir / "val_windows" / f"{step}.npz", "wb") as f:
        np.savez_compressed(f, sums=sums.astype(np.float32), shares=np.asarray(shares, np.float64),
                            skills=np.array(SKILLS[:sums.shape[1]]))


# --- the run --------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, out: str | Path) -> dict[str, Any]:
    """Start a new run in `out` (which must not exist or be empty); return the last metrics line."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is a file, not a folder for a new run")
    if out.is_dir() and any(p.name != ".lock" for p in out.iterdir()):  # a lock alone is no run
        raise UserError(f"{out}: exists and is not empty (use --resume {out} to continue that run)")
    check_output(out, {"shards folder": cfg.data})
    check_train(cfg.model_dump())
    return _run(cfg, out, resuming=False)


def resume(run_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Continue a run from its newest checkpoint; `overrides` may only change RESUMABLE_CHANGES."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json") if run_dir.is_dir() else None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise UserError(f"{run_dir}: not a tinyscale run folder (no run.json with a config)")
    check_resume(info["config"], overrides, run_dir, info.get("model") if isinstance(info.get("model"), dict) else None)
    merged = {**info["config"], **{k: v for k, v in overrides.items() if v is not None}}
    if overrides.get("threads") is None and (merged.get("threads") or 0) > cores():
        merged["threads"] = None  # trained on a larger machine: use this one's cores
    try:
        cfg = TrainConfig(**merged)
    except ValueError as e:
        raise UserError(f"{run_dir / 'run.json'}: invalid config ({str(e).splitlines()[-1].strip()})") from None
    check_train(cfg.model_dump())
    return _run(cfg, run_dir, resuming=True, stored=info)


def _open_data(cfg: TrainConfig):
    from tinyscale.data.shards import ShardSet

    shards = ShardSet.open(cfg.data)
    shards.verify()  # an id >= vocab_size would otherwise fail deep inside the embedding
    return shards


def _run(cfg: TrainConfig, run_dir: Path, resuming: bool, stored: dict | None = None) -> dict[str, Any]:
    d = Dist(cfg.device)
    try:
        local = max(1, d.local_world)
        torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 1) // local))
        cfg = resolve(cfg, d.device)
        shards = _open_data(cfg)
        mcfg = build_model_config(cfg, shards.vocab_size)
        check_fits(cfg, shards, d.world)
        data_info = {"dir": cfg.data, "tokenizer_sha256": shards.meta.get("tokenizer_sha256"),
                     "corpus_sha256": shards.meta.get("corpus_sha256"), "vocab_size": shards.vocab_size,
                     "eot_id": shards.eot_id}
        if stored is not None:
            _check_same_data(stored, data_info, mcfg, run_dir)
        info = {
            "config": cfg.model_dump(),
            "model": mcfg.model_dump(),
            "params": {"total": count_params(mcfg), "non_embedding": count_params(mcfg, non_embedding=True)},
            "flops_per_token": flops_per_token(mcfg, cfg.seq_len),
            # The context the model was trained at, and so the one it is used within (runs.load_model).
            "context": cfg.seq_len,
            "data": data_info,
            "code": {"tinyscale": tinyscale.__version__, "torch": torch.__version__, "git": git_commit()},
            "machine": machine_info(d.device),
        }
        d.barrier()  # every rank has checked the input before rank 0 writes anything
        with owned_run(run_dir, resuming, d.main), os_errors(run_dir):
            last = _train_locked(cfg, mcfg, shards, run_dir, d, info, stored)
        # Rank 0 hosts the rendezvous store: were it to exit while another rank is still finishing,
        # that rank would abort ("terminate called without an active exception"). So all finish first.
        d.barrier()
        return last if d.main else {}  # one summary per run, not one per rank
    finally:
        d.close()


@contextlib.contextmanager
def owned_run(run_dir: Path, resuming: bool, main: bool = True):
    """Rank 0 holds the run's lock while it trains (train, and incentivize's runs). A new run's folder
    is created here (after every input is checked) and removed again if the run fails before its
    first checkpoint, so the same --out can be used again; a resumed run keeps its checkpoints."""
    if not main:
        yield
        return
    if not resuming:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{run_dir}: cannot create the run folder ({e.strerror})") from None
    with run_lock(run_dir):
        if not resuming and (run_dir / "run.json").exists():
            raise UserError(f"{run_dir}: another process has just started a run here")
        try:
            yield
        except BaseException:
            if not resuming and not list_checkpoints(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def _train_locked(cfg: TrainConfig, mcfg: ModelConfig, shards: Any, run_dir: Path, d: Dist, info: dict,
                  stored: dict | None) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    model = build_model(mcfg, cfg, d.device)
    opt = make_optimizer(model, cfg, d.device)
    start_step, elapsed = (0, 0.0) if stored is None else _load_newest(run_dir, model, opt, d.device, d.main)
    if stored is not None and start_step >= cfg.steps:
        if cfg.tokens != stored["config"].get("tokens"):
            raise UserError(f"--tokens {cfg.tokens}: {run_dir} is already trained to step {start_step} "
                            f"({start_step * cfg.tokens_per_step:,} tokens); give more tokens to extend it")
        progress.info(f"{run_dir}: already trained to step {start_step} of {cfg.steps}; nothing to do")
        return {}
    if d.main:
        _write_run_files(run_dir, info, Path(cfg.data), start_step)
    return _loop(cfg, model, opt, shards, run_dir, d, info, start_step, elapsed)


def _check_same_data(stored: dict, data_info: dict, mcfg: ModelConfig, run_dir: Path) -> None:
    old = stored.get("data", {})
    for key in ("tokenizer_sha256", "corpus_sha256"):
        if old.get(key) != data_info[key]:
            raise UserError(f"{data_info['dir']}: {key} differs from the one {run_dir} was trained on")
    if stored.get("model") != mcfg.model_dump():
        raise UserError(f"--resume {run_dir}: the model shape differs from run.json")


def _write_run_files(run_dir: Path, info: dict, data_dir: Path, start_step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    # Without a checkpoint the run restarts from scratch, so every old line goes. First, so that a
    # damaged metrics file stops the resume before anything is rewritten.
    truncate_metrics(run_dir / "metrics.jsonl", start_step if start_step else -1)
    write_json(run_dir / "run.json", info)
    tok = data_dir / "tokenizer.json"
    if tok.is_file():
        with atomic_open(run_dir / "tokenizer.json", "wb") as f, open(tok, "rb") as src:
            shutil.copyfileobj(src, f)
    for stale in checkpoint_dir(run_dir).glob(".*.tmp"):  # half-written files of a killed run
        stale.unlink(missing_ok=True)


def _load_newest(run_dir: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                 device: torch.device, main: bool = True) -> tuple[int, float]:
    """(step, elapsed seconds) of the newest checkpoint that loads; (0, 0.0) when there is none.

    Damaged newer checkpoints are renamed *.damaged (kept for inspection, no longer counted), as
    when a kill left a state file unwritten; if none loads, nothing is renamed and the newest's
    error is raised.
    """
    steps, damaged, first_error = list_checkpoints(run_dir), [], None
    for step in reversed(steps):
        try:
            elapsed = _load_checkpoint(run_dir, step, model, opt, device)
        except UserError as e:
            damaged.append(step)
            first_error = first_error or e
            continue
        for bad in damaged if main else ():  # only rank 0 changes files
            for path in (state_path(run_dir, bad), weights_path(run_dir, bad)):
                os.replace(path, path.with_name(path.name + ".damaged"))
        if first_error:
            progress.info(f"{first_error}; set aside as *.damaged, resuming from step {step} instead")
        return step, elapsed
    if first_error:
        raise first_error
    return 0, 0.0


def _load_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     device: torch.device) -> float:
    from safetensors.torch import load_model

    path = weights_path(run_dir, step)
    try:
        load_model(model, str(path), device=str(device))
        path = state_path(run_dir, step)
        state = torch.load(path, map_location=device, weights_only=True)
        opt.load_state_dict(state["optimizer"])
    except Exception as e:  # a damaged checkpoint: say which file, never a traceback
        raise UserError(f"{path}: cannot load checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    torch.set_rng_state(state["rng"]["torch"].cpu())
    if device.type == "cuda" and state["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    progress.info(f"resuming {run_dir} from step {step}")
    return float(state.get("elapsed_s", 0.0))


def _loop(cfg: TrainConfig, model: torch.nn.Module, opt: torch.optim.Optimizer, shards: Any, run_dir: Path,
          d: Dist, info: dict, start_step: int, elapsed: float) -> dict[str, Any]:
    from tinyscale.fileio import append_jsonl

    steps, per_step, fpt = cfg.steps, cfg.tokens_per_step, info["flops_per_token"]
    tokens = shards.tokens("train")
    rows = slice(d.rank * cfg.batch // d.world, (d.rank + 1) * cfg.batch // d.world)
    ddp = None
    if d.world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    net: torch.nn.Module = ddp or model
    if cfg.compile:
        net = torch.compile(net)
    params = [p for p in model.parameters() if p.requires_grad]
    metrics = run_dir / "metrics.jsonl"
    last: dict[str, Any] = {}  # the newest value of every metric, returned at the end

    def log(row: dict[str, Any]) -> None:
        last.update(row)
        if d.main:
            append_jsonl(metrics, row)

    val_data = validation_data(shards, cfg)

    def run_eval(step: int) -> None:
        result = evaluate(model, val_data, cfg, d)
        sums = result.pop("_window_sums")
        if d.main:
            save_window_sums(run_dir, step, sums, val_data.shares)
        log({"step": step, "tokens": step * per_step, "flops": float(fpt) * step * per_step,
             **result, "elapsed_s": round(elapsed, 3)})

    if start_step >= steps:
        progress.info(f"{run_dir}: already trained to step {start_step} of {steps}; nothing to do")
    if start_step == 0 and cfg.eval_every:
        run_eval(0)
    model.train()
    t0, t_log, tokens_since = time.perf_counter(), time.perf_counter(), 0
    with progress.bar(steps, "train", completed=start_step) as bar:
        for step in range(start_step, steps):
            lr = lr_at(cfg, step, steps)
            for group in opt.param_groups:
                group["lr"] = lr
            starts = batch_starts(cfg.seed, step, len(tokens), cfg.seq_len, cfg.batch, cfg.grad_accum)
            micro = [windows(tokens, starts[j, rows], cfg.seq_len, d.device) for j in range(cfg.grad_accum)]
            loss = forward_backward(net, model.head, micro, cfg, d.device, ddp)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            loss_val = d.mean(loss).item()
            if not (math.isfinite(loss_val) and math.isfinite(norm.item())):
                kept = list_checkpoints(run_dir)
                raise UserError(f"training diverged at step {step + 1}: loss {loss_val:.4g}, gradient norm "
                                f"{norm.item():.4g}; last good checkpoint: "
                                f"{f'step {kept[-1]}' if kept else 'none'} (try a lower --lr)")
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            tokens_since += per_step
            bar.update(1, loss=loss_val)
            if done % cfg.log_every == 0 or done == steps or done == 1:
                now = time.perf_counter()
                elapsed += now - t0
                t0 = now
                rate = tokens_since / max(now - t_log, 1e-9)
                log({"step": done, "tokens": done * per_step, "flops": float(fpt) * done * per_step, "lr": lr,
                     "loss": loss_val, "tokens_per_s": round(rate, 1), "elapsed_s": round(elapsed, 3)})
                bar.update(0, loss=loss_val, tok_s=f"{rate:,.0f}")
                tokens_since, t_log = 0, now
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == steps:
                run_eval(done)
            if is_checkpoint_step(cfg, done, steps):
                elapsed += time.perf_counter() - t0
                t0 = time.perf_counter()
                if d.main:
                    rng = {"torch": torch.get_rng_state(),
                           "cuda": torch.cuda.get_rng_state(d.device) if d.device.type == "cuda" else None}
                    save_checkpoint(run_dir, done, model, {"optimizer": opt.state_dict(), "step": done,
                                                           "tokens": done * per_step, "rng": rng,
                                                           "elapsed_s": elapsed})
                    prune_checkpoints(run_dir, cfg)
            if (cfg.eval_every and done % cfg.eval_every == 0) or is_checkpoint_step(cfg, done, steps):
                t_log, tokens_since = time.perf_counter(), 0  # keep eval and saving out of tokens/s
    return last
