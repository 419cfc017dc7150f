"""Fine-tune a trained model from a reward (incentivize) or from reference answers (teach).

    tinyscale incentivize RUN --reward hallucination --prompts world --steps 200 --out RUN-rl
    tinyscale incentivize --resume RUN-rl                      # after a crash or kill -9

Incentivize, one step (GRPO-style, Shao et al. 2024):
1. draw `prompts_per_step` prompts and sample `group` completions of each from the current policy;
2. score every completion with the reward; the advantage of a completion is its reward minus the
   mean of its group, divided by the group's standard deviation (no value network: the group is
   the baseline);
3. `updates` optimizer steps on that batch, each minimizing, per completion token,
       -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A) + kl * KL
   with ratio = pi(token) / pi_old(token) (pi_old: the policy that sampled the batch, so the first
   update has ratio 1 and clipping matters from the second on) and KL the k3 estimator
   exp(ref - logp) - (ref - logp) - 1 of the divergence from the starting model (frozen), which is
   unbiased, always >= 0 and needs only the sampled tokens. Token terms are averaged per completion,
   then over completions. All three log-probabilities are taken at the sampling temperature T
   (log_softmax(logits / T)): the rollouts are drawn from that distribution, so it is the one whose
   ratio makes the surrogate an importance-weighted policy gradient, and the k3 estimate is unbiased
   only for the distribution that drew the tokens. (Untempered log-probabilities at T != 1 would
   weight the update by the wrong ratio and give a KL that is not 0 at the start.) Sampling at T
   stays a choice: T < 1 explores less, and the tempered policy is the one that is optimized.

Teach, one step: cross-entropy on the reference answers of `prompts_per_step * group` prompts
(the same prompt pool), so both arms can be run from the same start on the same token budget.

The loop is written here, by hand, rather than with TRL's GRPOTrainer through the Hugging Face
export: at story length a step is mostly reading the prompt, and this loop reads each prompt once per
group (`Answerer.sample_group`, `group_logps`), where `transformers.generate` reads it once per row
(docs/incentivize.md, "Why not TRL", has the measurement); and the run folder and exact resume are
the trainer's own, which TRL would need wrapping for.

Run folder, as `train` writes it (runs.py), through the trainer's run manager
(training/run_folder.py: hidden until its first checkpoint, locked, resumed from the newest good
checkpoint): run.json ("model" is the starting model's shape, so `sample`, `eval` and `export` work
on the result), tokenizer.json, metrics.jsonl, checkpoints/.
Every step's prompts and samples are drawn from generators seeded with (seed, step), so a resumed
run repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from tinyscale import progress, tracking
from tinyscale.config import Trackers
from tinyscale.decoding import new_cache
from tinyscale.errors import UserError
from tinyscale.fileio import read_jsonl
from tinyscale.generate import eot_id_of, generate, pick_device
from tinyscale.incentivize.rewards import call_reward, load_reward, parse_answer
from tinyscale.runs import load_model, load_tokenizer, read_run
from tinyscale.training.checkpoints import Retention
from tinyscale.training.run_folder import RunFolder, check_new_out, open_run, resume_config
from tinyscale.validate import check_incentivize, check_output, os_errors

WORLD_PROMPT_START = 100_000_000  # story indices of RL/teaching prompts: far beyond any corpus
EVAL_PROMPT_START = 200_000_000  # and of evaluation questions: disjoint from both


class IncentiveConfig(BaseModel):
    """Everything that decides what a fine-tuning run computes; stored in run.json "config"."""

    model_config = ConfigDict(extra="forbid")

    start: str  # run folder of the starting model
    start_step: int | None = None  # its checkpoint (None: the newest)
    objective: Literal["incentivize", "teach"] = "incentivize"
    reward: str = "hallucination"  # a name in rewards.BUILTIN or module:function
    threshold: float | None = Field(None, gt=0, lt=1)  # hallucination scored by a confidence threshold
    prompts: str = "world"  # world (questions), world-words (instruct word lists) or a JSONL file
    prompt_count: int = Field(2000, ge=1)  # world prompts to draw
    world_seed: int = 0
    unanswerable: float = Field(0.5, ge=0, le=1)  # share of unanswerable world questions
    steps: int = Field(100, ge=1)
    tokens: int | None = Field(None, ge=1)  # also stop once this many sampled/reference tokens are used
    group: int = Field(8, ge=2)
    prompts_per_step: int = Field(4, ge=1)
    kl: float = Field(0.05, ge=0)
    clip: float = Field(0.2, gt=0)
    updates: int = Field(2, ge=1)  # optimizer steps per sampled batch
    lr: float = Field(1e-4, gt=0)
    # Linear warmup of the learning rate over this many steps. Without it Adam's first update moves
    # every weight by the full lr whatever its gradient (its moment estimates start from one sample):
    # measured on a 0.5M-parameter start at lr 1e-4, the policy after that one update was 10.8 nats
    # per answer token away from the start (KL), before the penalty could act.
    warmup: int = Field(10, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    max_new_tokens: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(1, ge=1)
    checkpoint_every: int = Field(25, ge=1)
    dense_checkpoints: int = 0  # also keep (and write) checkpoints at 1, 2, 4, ... up to this step
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    track: Trackers = []  # experiment trackers (tinyscale/tracking.py)


RESUMABLE_CHANGES = ("steps", "tokens", "device", "threads", "track")


# --- prompts -------------------------------------------------------------------------------------------


def load_prompts(cfg: IncentiveConfig) -> list[dict[str, Any]]:
    """[{"prompt": str, "truth": dict, "reference": str | None}] from the world or a JSONL file."""
    from tinyscale.data.world import default_vocab, make_story
    from tinyscale.data.world.questions import question_set

    if cfg.prompts == "world":
        return question_set(default_vocab(), cfg.world_seed, WORLD_PROMPT_START, cfg.prompt_count,
                            templates="train", unanswerable=cfg.unanswerable)
    if cfg.prompts == "world-words":
        out = []
        for i in range(cfg.prompt_count):
            w = make_story(default_vocab(), cfg.world_seed, WORLD_PROMPT_START + i).meta["words"]
            words = [w["verb"], w["noun"], w["adjective"]]
            out.append({"prompt": f"Words: {', '.join(words)}\nStory:", "truth": {"words": words}, "reference": None})
        return out
    return read_prompt_file(cfg.prompts)


def read_prompt_file(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--prompts: {path}: expected world, world-words or a JSONL file")
    out = []
    for n, row in read_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise UserError(f"{path}:{n}: expected an object with a non-empty 'prompt' string")
        if not isinstance(row.get("truth", {}), dict):
            raise UserError(f"{path}:{n}: 'truth' must be an object")
        out.append({"prompt": row["prompt"], "truth": row.get("truth", {}), "reference": row.get("reference")})
    if not out:
        raise UserError(f"{path}: no prompts")
    return out


def prompt_batch(seed: int, step: int, n_prompts: int, k: int) -> np.ndarray:
    """Indices of step `step`'s prompts: stateless, so a resumed run draws what it would have."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n_prompts, size=k, replace=k > n_prompts)


# --- the pieces of the objective (tested against hand computations) ---------------------------------------


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards [P, G] -> (r - group mean) / (group std + eps); a group that scored alike gets 0."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased (n-1), as GRPO implementations use
    return (rewards - mean) / (std + eps)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from tokens sampled by pi: exp(d) - d - 1, d = ref - logp."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, adv: torch.Tensor,
                mask: torch.Tensor, clip: float, kl: float) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate plus the KL penalty; all token tensors [B, T], `adv` [B], `mask` [B, T]."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    k = kl_k3(logp, ref_logp)
    per_token = -surrogate + kl * k
    n = mask.sum(dim=1).clamp(min=1)
    loss = ((per_token * mask).sum(dim=1) / n).mean()
    with torch.no_grad():
        total = mask.sum().clamp(min=1)
        clipped = ((ratio - ratio.clamp(1 - clip, 1 + clip)).abs() > 0).float()
        stats = {"kl": float((k * mask).sum() / total), "clip_frac": float((clipped * mask).sum() / total)}
    return loss, stats


def completion_logps(model: torch.nn.Module, prompts: list[list[int]], completions: list[list[int]],
                     device: torch.device, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each completion token given its prompt, at `temperature` (log_softmax of
    logits / T): [B, Tc] and its mask [B, Tc]."""
    lens = [len(p) + len(c) for p, c in zip(prompts, completions, strict=True)]
    L, Tc = max(lens), max(len(c) for c in completions)
    x = torch.zeros(len(prompts), L, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        x[i, : lens[i]] = torch.tensor(p + c)
    x = x.to(device)
    # Only the positions that predict a completion token go through the vocabulary head.
    h = model(x[:, :-1], hidden=True)
    rows = torch.arange(len(prompts), device=device)[:, None]
    cols = torch.tensor([[len(p) - 1 + j if j < len(c) else 0 for j in range(Tc)]
                         for p, c in zip(prompts, completions, strict=True)], device=device)
    mask = torch.tensor([[1.0 if j < len(c) else 0.0 for j in range(Tc)] for c in completions], device=device)
    targets = torch.tensor([[c[j] if j < len(c) else 0 for j in range(Tc)] for c in completions], device=device)
    logits = model.head(h[rows, cols]).float()
    logp = torch.log_softmax(logits / temperature, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return logp * mask, mask


def group_logps(model: torch.nn.Module, prompts: list[list[int]], groups: list[list[list[int]]],
                device: torch.device, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_logps` for a group of completions per prompt, computing each prompt once, at
    `temperature` (the rollouts' sampling temperature: see the module doc).

    A row packs a prompt, then completions side by side, each padded to the longest: [prompt | pad |
    c_1 | c_2 | ...]. The attention mask lets a completion token see the prompt and the earlier
    tokens of its own completion only, and positions restart after the prompt for every completion,
    so each token sees exactly what it sees in its own sequence: the same log-probabilities as
    `completion_logps` (tested), at about 1/group of the cost of repeating a story-length prompt.
    A group that does not fit the context in one row is spread over several rows.
    Returns [sum of group sizes, Tc] in the order of the groups' completions.
    """
    Lmax, Tc = max(len(p) for p in prompts), max(len(c) for g in groups for c in g)
    per_row = max(1, (model.cfg.max_seq_len - Lmax) // Tc)
    rows = [(p, g[i:i + per_row]) for p, g in zip(prompts, groups, strict=True) for i in range(0, len(g), per_row)]
    G = max(len(sub) for _, sub in rows)
    T = Lmax + G * Tc
    idx = torch.arange(T)
    block = torch.where(idx >= Lmax, (idx - Lmax) // Tc, -1)
    off = torch.where(idx >= Lmax, (idx - Lmax) % Tc, idx)
    x = torch.zeros(len(rows), T, dtype=torch.long)
    masks, positions = [], []
    for i, (p, sub) in enumerate(rows):
        x[i, : len(p)] = torch.tensor(p)
        for j, c in enumerate(sub):
            x[i, Lmax + j * Tc: Lmax + j * Tc + len(c)] = torch.tensor(c)
        in_prompt, comp = idx < len(p), (block >= 0) & (block < len(sub))
        m = in_prompt[:, None] & in_prompt[None, :] & (idx[None, :] <= idx[:, None])
        m |= comp[:, None] & (in_prompt[None, :] | ((block[:, None] == block[None, :]) & (off[None, :] <= off[:, None])))
        m |= torch.eye(T, dtype=torch.bool) & ~(in_prompt | comp)[:, None]  # padding sees itself (no empty row)
        masks.append(m)
        positions.append(torch.where(comp, len(p) + off, torch.where(in_prompt, idx, 0)))
    h = model(x.to(device), positions=torch.stack(positions).to(device),
              attn_mask=torch.stack(masks)[:, None].to(device), hidden=True)
    # The state that predicts completion token k: the prompt's last one for k = 0, else token k - 1.
    src = [[(len(p) - 1 if k == 0 else Lmax + j * Tc + k - 1) for k in range(Tc)]
           for p, sub in rows for j in range(len(sub))]
    comps = [c for _, sub in rows for c in sub]
    row_of = torch.tensor([i for i, (_, sub) in enumerate(rows) for _ in sub], device=device)[:, None]
    mask = torch.tensor([[1.0 if k < len(c) else 0.0 for k in range(Tc)] for c in comps], device=device)
    targets = torch.tensor([[c[k] if k < len(c) else 0 for k in range(Tc)] for c in comps], device=device)
    logits = model.head(h[row_of, torch.tensor(src, device=device)]).float()
    logp = torch.log_softmax(logits / temperature, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    return logp * mask, mask


# --- sampling ----------------------------------------------------------------------------------------


class Answerer:
    """Samples answers: stops a completion at its first line break (kept, so the policy learns to
    stop) or at end-of-text (appended for the same reason)."""

    def __init__(self, tokenizer: Any, max_new_tokens: int) -> None:
        self.tok, self.max_new = tokenizer, max_new_tokens
        self.eot = eot_id_of(tokenizer)
        vocab = tokenizer.get_vocab_size()
        self.breaks = {i for i in range(vocab) if "\n" in tokenizer.decode([i])}

    def cut(self, row: list[int]) -> list[int]:
        for j, t in enumerate(row):
            if t in self.breaks:
                return row[: j + 1]
        if len(row) < self.max_new and self.eot is not None:
            return row + [self.eot]  # `generate` stopped at end-of-text and dropped it
        return row

    def text(self, completion: list[int]) -> str:
        return self.tok.decode([t for t in completion if t != self.eot]).split("\n", 1)[0]

    def sample(self, model: torch.nn.Module, prompts: list[list[int]], temperature: float,
               seed: int) -> list[list[int]]:
        rows = generate(model, prompts, self.max_new, temperature=temperature, seed=seed, eot_id=self.eot)
        return [self.cut(r) for r in rows]

    @torch.inference_mode()
    def sample_group(self, model: torch.nn.Module, prompt: list[int], group: int, temperature: float,
                     seed: int) -> list[list[int]]:
        """`group` answers to one prompt: the prompt is read once, its cache copied to every row
        (`generate` would read it `group` times: most of a rollout's cost at story length)."""
        from tinyscale.generate import sample_next

        device = model.tok_emb.weight.device
        cache = new_cache(model, 1, len(prompt) + self.max_new)
        logits = model(torch.tensor([prompt], device=device), cache)[:, -1].expand(group, -1)
        cache.k, cache.v = cache.k.repeat(1, group, 1, 1, 1), cache.v.repeat(1, group, 1, 1, 1)
        gen = torch.Generator(device=device).manual_seed(seed)
        out = []
        for t in range(self.max_new):
            tok = sample_next(logits, temperature, None, None, gen)
            out.append(tok)
            if t < self.max_new - 1:
                logits = model(tok[:, None], cache)[:, -1]
        rows = torch.stack(out, dim=1).tolist()
        return [self.cut(r[: r.index(self.eot)] if self.eot in r else r) for r in rows]


# --- the run -------------------------------------------------------------------------------------------


def incentivize(cfg: IncentiveConfig, out: str | Path) -> dict[str, Any]:
    """Start a new fine-tuning run in `out` (must not exist or be empty); return the last metrics."""
    out = Path(out)
    prompts_file = None if cfg.prompts in ("world", "world-words") else cfg.prompts
    check_output(out, {"starting run": cfg.start, "prompts file": prompts_file})
    check_new_out(out)
    return _run(cfg, out, resuming=False)


def resume(run_dir: str | Path, **overrides: Any) -> dict[str, Any]:
    """Continue from the newest checkpoint; only RESUMABLE_CHANGES may differ."""
    run_dir = Path(run_dir)
    cfg, _ = resume_config(run_dir, overrides, RESUMABLE_CHANGES, IncentiveConfig, kind="incentivize")
    return _run(cfg, run_dir, resuming=True)


def _run(cfg: IncentiveConfig, run_dir: Path, resuming: bool) -> dict[str, Any]:
    """Everything is read and checked first; then, holding the run's folder (`open_run`: a new run
    stays hidden until its first checkpoint, a failed resume keeps its last good checkpoint), the run
    files are written and the loop runs."""
    check_incentivize(cfg.model_dump())  # flags, and a config read back from run.json
    tracking.require(cfg.track)
    torch.set_num_threads(cfg.threads or max(1, os.cpu_count() or 1))
    device = pick_device(cfg.device)
    start = read_run(cfg.start)
    reward = load_reward(cfg.reward, cfg.threshold) if cfg.objective == "incentivize" else None
    policy, start_step = load_model(cfg.start, cfg.start_step, str(device))
    ref, _ = load_model(cfg.start, start_step, str(device))
    ref.requires_grad_(False)
    tok = load_tokenizer(cfg.start)
    ans = Answerer(tok, cfg.max_new_tokens)
    pool = _encode_prompts(load_prompts(cfg), tok, policy.cfg.max_seq_len - cfg.max_new_tokens, cfg.objective)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    info = {"kind": "incentivize", "config": cfg.model_dump(), "model": start["model"],
            "context": policy.cfg.max_seq_len,  # the start's trained context (runs.load_model)
            "params": start.get("params"), "data": start.get("data"),
            "start": {"run": str(Path(cfg.start).resolve()), "step": start_step}}
    retention = Retention(cfg.checkpoint_every, cfg.dense_checkpoints)
    with open_run(run_dir, not resuming, retention) as run, os_errors(run_dir):
        step, state = run.load_newest(policy, opt, device) if resuming else (0, {})
        run.begin(info, Path(cfg.start) / "tokenizer.json", step)
        policy.train()
        return _loop(cfg, policy, ref, opt, pool, ans, reward, run, device, step,
                     int(state.get("tokens", 0)), float(state.get("elapsed_s", 0.0)))


def _encode_prompts(items: list[dict], tok: Any, max_len: int, objective: str) -> list[dict]:
    out = []
    for it in items:
        ids = tok.encode(it["prompt"]).ids
        if not ids or len(ids) > max_len:
            continue
        row = {**it, "ids": ids}
        if objective == "teach":
            if not it.get("reference"):
                raise UserError("teach: every prompt needs a 'reference' answer")
            row["ref_ids"] = tok.encode(it["reference"] + "\n").ids
        out.append(row)
    if not out:
        raise UserError(f"--prompts: no prompt fits the model's context ({max_len} tokens before the answer)")
    return out


def _loop(cfg: IncentiveConfig, policy: torch.nn.Module, ref: torch.nn.Module, opt: torch.optim.Optimizer,
          pool: list[dict], ans: Answerer, reward: Any, run: RunFolder, device: torch.device, step: int,
          used: int, elapsed: float) -> dict[str, Any]:
    last: dict[str, Any] = {}
    budget = cfg.tokens or math.inf
    # A token budget (the teach arm of --compare) is what ends the run: the bar counts tokens then.
    by_tokens = cfg.tokens is not None and cfg.tokens < cfg.steps * cfg.prompts_per_step * cfg.group * cfg.max_new_tokens
    total, done = (cfg.tokens, used) if by_tokens else (cfg.steps, step)
    with progress.bar(total, cfg.objective + (" (tokens)" if by_tokens else ""), completed=done) as bar:
        while step < cfg.steps and used < budget:
            t0 = time.perf_counter()
            if cfg.objective == "incentivize":
                row = rl_step(cfg, policy, ref, opt, pool, ans, reward, step, device)
            else:
                row = teach_step(cfg, policy, opt, pool, step, device)
            step += 1
            n_tokens = row.pop("n_tokens")
            used += n_tokens
            elapsed += time.perf_counter() - t0
            row = {"step": step, "tokens": used, **row, "elapsed_s": round(elapsed, 3)}
            last = row
            save = run.retention.due(step, step == cfg.steps or used >= budget)
            if step % cfg.log_every == 0 or save:  # a checkpoint always has its metrics line
                run.log(row)
            bar.update(min(n_tokens, total - done) if by_tokens else 1, **{k: row[k] for k in ("reward", "loss") if k in row})
            done += n_tokens if by_tokens else 1
            if save:
                run.save(step, policy, opt, device, used, elapsed)
    return last


def _step_update(policy: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, cfg: IncentiveConfig,
                 step: float) -> float:
    """One optimizer update at (fractional) `step`, with the warmed-up learning rate."""
    for group in opt.param_groups:
        group["lr"] = cfg.lr * (min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    if not (math.isfinite(loss.item()) and math.isfinite(norm.item())):
        raise UserError(f"fine-tuning diverged at step {math.floor(step) + 1} (loss {loss.item():.4g}); try a lower --lr")
    opt.step()
    return float(norm)


def rl_step(cfg: IncentiveConfig, policy: torch.nn.Module, ref: torch.nn.Module, opt: torch.optim.Optimizer,
            pool: list[dict], ans: Answerer, reward: Any, step: int, device: torch.device) -> dict[str, Any]:
    """Sample groups, score them, and make `updates` clipped policy-gradient steps on them."""
    items = [pool[i] for i in prompt_batch(cfg.seed, step, len(pool), cfg.prompts_per_step)]
    prompts = [it["ids"] for it in items for _ in range(cfg.group)]
    t0 = time.perf_counter()
    policy.eval()
    groups = [ans.sample_group(policy, it["ids"], cfg.group, cfg.temperature, seed=(cfg.seed * 1_000_003 + step) * 64 + i)
              for i, it in enumerate(items)]
    policy.train()
    completions = [c for g in groups for c in g]
    t_roll = time.perf_counter() - t0
    heads = [it["ids"] for it in items]
    T = cfg.temperature  # the distribution the rollouts came from (module doc)
    with torch.no_grad():
        ref_logp, mask = group_logps(ref, heads, groups, device, T)
        old_logp, _ = group_logps(policy, heads, groups, device, T)
    ref_mean = ((ref_logp * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()
    texts = [ans.text(c) for c in completions]
    truths = [items[i // cfg.group]["truth"] for i in range(len(prompts))]
    rewards = torch.tensor([call_reward(reward, items[i // cfg.group]["prompt"], texts[i],
                                        {**truths[i], "ref_logp": ref_mean[i]}) for i in range(len(prompts))])
    adv = group_advantages(rewards.view(cfg.prompts_per_step, cfg.group)).flatten().to(device)
    stats: dict[str, float] = {}
    for j in range(cfg.updates):
        logp, _ = group_logps(policy, heads, groups, device, T)
        loss, stats = policy_loss(logp, old_logp, ref_logp, adv, mask, cfg.clip, cfg.kl)
        norm = _step_update(policy, opt, loss, cfg, step + (j + 1) / cfg.updates - 1)
    n_tokens = sum(len(c) for c in completions)
    row = {"n_tokens": n_tokens, "reward": round(float(rewards.mean()), 4),
           "reward_std": round(float(rewards.std()), 4), "loss": round(float(loss.detach()), 5), "grad_norm": round(norm, 4),
           **{k: round(v, 5) for k, v in stats.items()},
           "completion_len": round(n_tokens / len(completions), 3),
           "rollout_tokens_per_s": round(n_tokens / max(t_roll, 1e-9), 1)}
    if all("answers" in t for t in truths):  # questions: how the answers split
        verdicts = [parse_answer(x, t["answers"]) for x, t in zip(texts, truths, strict=True)]
        row["idk"] = round(sum(v.idk for v in verdicts) / len(verdicts), 4)
        row["confident_wrong"] = round(sum(v.confident_wrong for v in verdicts) / len(verdicts), 4)
        row["non_answer"] = round(sum(v.non_answer for v in verdicts) / len(verdicts), 4)
    return row


def teach_step(cfg: IncentiveConfig, policy: torch.nn.Module, opt: torch.optim.Optimizer, pool: list[dict],
               step: int, device: torch.device) -> dict[str, Any]:
    """Supervised fine-tuning on reference answers, with the same per-answer averaging as rl_step."""
    items = [pool[i] for i in prompt_batch(cfg.seed, step, len(pool), cfg.prompts_per_step * cfg.group)]
    logp, mask = completion_logps(policy, [it["ids"] for it in items], [it["ref_ids"] for it in items], device)
    loss = -((logp * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    norm = _step_update(policy, opt, loss, cfg, step)
    return {"n_tokens": int(mask.sum()), "loss": round(float(loss.detach()), 5), "grad_norm": round(norm, 4)}
