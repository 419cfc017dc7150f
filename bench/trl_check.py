"""The incentivize loop checked against TRL's GRPOTrainer: same start, reward, prompts and settings.

    python bench/trl_check.py runs/qa-1M --seeds 3 --steps 40 --out trl-check

`tinyscale incentivize` runs a hand-written GRPO loop (incentivize/policy_gradient.py; its docstring
says why). This bench runs TRL's `GRPOTrainer` on the Hugging Face export of the same starting run
with the same reward function (the built-in hallucination reward, called through tinyscale's own
`call_reward`), the same prompt pool (the world's training questions), group size, prompts per step,
KL coefficient (k3 estimator in both), clip, updates per sampled batch (TRL's `num_iterations`),
learning rate and warmup, Adam betas, gradient clip, answer length, temperature, and stopping rule
(an answer ends at its first line break or at end-of-text in both: TRL's eos list is set to those
tokens), for the same number of sampled batches, `--seeds` seeds each. Both results are then graded
by the same code (`incentivize.compare.answer_model`: greedy answers to the 200 held-out questions)
and compared with the comparison's bootstrap over seeds x questions (questions paired, seeds matched
by index; seeds of the two tools are independent runs, not paired draws).

What differs and cannot be made equal (printed at the end too):
- prompts: tinyscale draws each step's prompts with replacement-free `prompt_batch(seed, step)`;
  TRL walks a seeded shuffle of the pool. Same distribution, different draws.
- warmup: tinyscale warms up per sampled batch with fractional steps per update; TRL's
  `constant_with_warmup` warms up per optimizer step from 0. Both reach the full rate at batch 10.
- the loss normalisation is the same only with `loss_type="grpo"` (per-answer mean, then mean):
  TRL's default (`dapo`, normalised by the batch's token count) and its default `beta=0` (no KL
  penalty) are not what tinyscale does; this bench sets both explicitly.

Prints per-batch mean reward (averaged over seeds) for both, the wall time of each, and the final
accuracy / "I don't know" / confident-wrong rates with 95% intervals and the difference's interval.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tinyscale.incentivize.compare import answer_model, metric_columns
from tinyscale.incentivize.policy_gradient import Answerer, IncentiveConfig, incentivize, load_prompts
from tinyscale.incentivize.rewards import call_reward, load_reward
from tinyscale.incentivize.stats import draws, percentile_interval, point, resampled
from tinyscale.runs import load_model, load_tokenizer

SHOWN = ("accuracy_answerable", "idk_unanswerable", "confident_wrong_unanswerable", "mean_reward")


def tinyscale_arm(start: str, seed: int, base: IncentiveConfig, out: Path) -> tuple[list[float], float]:
    """One seed of `tinyscale incentivize`; (mean reward per sampled batch, wall seconds)."""
    cfg = base.model_copy(update={"seed": seed})
    t0 = time.perf_counter()
    if not (out / "metrics.jsonl").is_file():
        incentivize(cfg, out)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["reward"] for r in rows if "reward" in r], wall


def trl_arm(hf_start: Path, seed: int, base: IncentiveConfig, out: Path) -> tuple[list[float], float]:
    """One seed of TRL's GRPOTrainer with base's settings; the trained model saved in `out`."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = load_tokenizer(hf_start)
    answerer = Answerer(tok, base.max_new_tokens)
    reward_fn = load_reward(base.reward, base.threshold)
    batches: list[float] = []

    def reward(prompts: list[str], completions: list[str], truth: list[str], **_: object) -> list[float]:
        # One call per sampled batch (prompts_per_step x group answers), as tinyscale scores a step.
        scores = [call_reward(reward_fn, p, c.split("\n", 1)[0], {**json.loads(t), "ref_logp": 0.0})
                  for p, c, t in zip(prompts, completions, truth, strict=True)]
        batches.append(float(np.mean(scores)))
        return scores

    pool = load_prompts(base)
    data = Dataset.from_list([{"prompt": p["prompt"], "truth": json.dumps(p["truth"])} for p in pool])
    model = AutoModelForCausalLM.from_pretrained(hf_start, dtype=torch.float32)
    # Stop where tinyscale's Answerer stops: the first line break (kept) or end-of-text.
    model.generation_config.eos_token_id = sorted({answerer.eot, *answerer.breaks})
    args = GRPOConfig(
        output_dir=str(out / "trl"), use_cpu=True, bf16=False, seed=seed, report_to="none",
        save_strategy="no", logging_steps=1, disable_dropout=True,
        per_device_train_batch_size=base.prompts_per_step * base.group, num_generations=base.group,
        num_iterations=base.updates, max_steps=base.steps * base.updates,
        learning_rate=base.lr, lr_scheduler_type="constant_with_warmup", warmup_steps=base.warmup * base.updates,
        optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0, max_grad_norm=base.grad_clip,
        beta=base.kl, epsilon=base.clip, loss_type="grpo", scale_rewards="group",
        max_completion_length=base.max_new_tokens, temperature=base.temperature, top_k=0, top_p=1.0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(hf_start))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its log lines: stdout is the result
        trainer.train()
    wall = time.perf_counter() - t0
    trainer.save_model(str(out))
    for name in ("tinyscale.json", "tokenizer.json"):  # so tinyscale's loader reads the result
        shutil.copy(hf_start / name, out / name)
    return batches, wall


def grade(model: torch.nn.Module, tok: object, questions: int) -> dict[str, np.ndarray]:
    """Per metric, the per-question values (and the mask of the questions it is over)."""
    model.eval()
    return metric_columns(answer_model(model, tok, questions)["outcomes"])


def summary(arms: dict[str, list[dict]], metric: str) -> str:
    """One line: each arm's mean [95%] and the difference trl - tinyscale [95%]."""
    values = {a: np.stack([g[metric][0] for g in runs]) for a, runs in arms.items()}
    mask = arms["start"][0][metric][1].astype(float)
    strata = np.array(arms["start"][0]["accuracy_answerable"][1], dtype=int)  # answerable or not
    seed_idx, counts = draws(len(values["tinyscale"]), strata)
    samples = {a: resampled(v, mask, seed_idx, counts) for a, v in values.items()}
    cells = []
    for a, v in values.items():
        lo, hi = percentile_interval(samples[a])
        cells.append(f"{a} {point(v, mask):.3f} [{lo:.3f}, {hi:.3f}]")
    lo, hi = percentile_interval(samples["trl"] - samples["tinyscale"])
    diff = point(values["trl"], mask) - point(values["tinyscale"], mask)
    agree = "agree" if lo <= 0 <= hi else "DIFFER"
    return f"{metric:30s} " + " | ".join(cells) + f" | trl - tinyscale {diff:+.3f} [{lo:+.3f}, {hi:+.3f}] {agree}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("start", help="a trained run on a corpus with questions (e.g. the 1M QA run of docs/incentivize.md)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="sampled batches (tinyscale steps)")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="trl-check")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from tinyscale.export import export_hf

    hf_start = out / "start-hf"
    if not hf_start.is_dir():
        export_hf(a.start, hf_start)
    base = IncentiveConfig(start=a.start, steps=a.steps, threads=a.threads)
    start_model, _ = load_model(a.start)
    tok = load_tokenizer(a.start)
    arms: dict[str, list[dict]] = {"start": [grade(start_model, tok, a.questions)], "tinyscale": [], "trl": []}
    curves: dict[str, list[list[float]]] = {"tinyscale": [], "trl": []}
    walls: dict[str, list[float]] = {"tinyscale": [], "trl": []}
    from tinyscale.serve.loading import load_hf_folder

    for seed in range(a.seeds):
        curve, wall = tinyscale_arm(a.start, seed, base, out / f"tinyscale-{seed}")
        curves["tinyscale"].append(curve), walls["tinyscale"].append(wall)
        arms["tinyscale"].append(grade(load_model(out / f"tinyscale-{seed}")[0], tok, a.questions))
        curve, wall = trl_arm(hf_start, seed, base, out / f"trl-{seed}")
        curves["trl"].append(curve), walls["trl"].append(wall)
        arms["trl"].append(grade(load_hf_folder(out / f"trl-{seed}", "cpu")[0], tok, a.questions))
        print(f"seed {seed}: tinyscale {walls['tinyscale'][-1]:.0f} s, trl {walls['trl'][-1]:.0f} s", file=sys.stderr)
    print(f"# TRL check: {a.start}, {a.seeds} seeds x {a.steps} sampled batches of {base.prompts_per_step} prompts "
          f"x {base.group} answers; kl {base.kl}, clip {base.clip}, updates {base.updates}, lr {base.lr}")
    print("\nmean reward per sampled batch (mean over seeds):")
    print("batch  tinyscale  trl")
    for i in range(a.steps):
        cells = [np.mean([c[i] for c in curves[k] if len(c) > i]) if any(len(c) > i for c in curves[k]) else float("nan")
                 for k in ("tinyscale", "trl")]
        print(f"{i + 1:5d}  {cells[0]:9.3f}  {cells[1]:.3f}")
    print(f"\nwall time per seed: tinyscale {np.mean(walls['tinyscale']):.0f} s, trl {np.mean(walls['trl']):.0f} s")
    print(f"\nheld-out questions ({a.questions}, greedy), mean [95% bootstrap over seeds x questions]:")
    for metric in SHOWN:
        print(summary(arms, metric))
    (out / "trl_check.json").write_text(json.dumps({"curves": curves, "walls": walls}, indent=1))


if __name__ == "__main__":
    main()
