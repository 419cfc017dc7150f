"""Speed of the incentivize loop on the 3M preset: rollout tokens/s and update steps/s, on CPU.

    PYTHONPATH=src python bench/incentivize_speed.py [--threads 2] [--prompt-len 320] [--hf]

A step of `policy_gradient.rl_step` has two costs: sampling `prompts_per_step x group` answers
(rollout: each prompt of story length read once, its KV cache copied to the group's rows) and
`updates` optimizer steps, each a forward and backward pass over the prompts with the group's
answers packed after them. `generate()` per row (every row reads its own copy of the prompt) is
timed too, for comparison. Both are timed here on a randomly initialized 3M
model (width 128 x 8 layers, vocabulary 4096) with random prompt tokens, so only compute counts.

`--hf` also times the same rollout with `transformers` `generate` on the Hugging Face export of
the same weights: the sampler TRL's GRPOTrainer uses on CPU (without vLLM). It is the measurement
behind writing the loop by hand instead of using TRL through the export (see policy_gradient.py).
"""

from __future__ import annotations

import argparse
import time

import torch

from tinyscale.incentivize.policy_gradient import Answerer, group_logps, policy_loss
from tinyscale.model import Transformer, count_params, model_config
from tinyscale.training.provenance import machine_info


def _best(fn, reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=320)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hf", action="store_true", help="also time transformers.generate on the export")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model_config("3M", vocab_size=4096, max_seq_len=512)
    model = Transformer(cfg).eval()
    rows = args.group * args.prompts_per_step
    prompts = torch.randint(0, 4096, (args.prompts_per_step, args.prompt_len)).repeat_interleave(args.group, 0)
    prompt_lists = prompts.tolist()
    print(f"3M preset: {count_params(cfg):,} parameters; {rows} rows of {args.prompt_len} prompt tokens, "
          f"{args.max_new_tokens} new; {args.threads} threads; {machine_info(torch.device('cpu'))['cpu']}")

    from tinyscale.generate import generate

    t = _best(lambda: generate(model, prompt_lists, args.max_new_tokens, temperature=1.0, seed=0), args.reps)
    print(f"rollout, generate() per row:   {rows * args.max_new_tokens / t:10.1f} tokens/s   ({t:.3f} s per batch)")
    ans = Answerer(_NoText(), args.max_new_tokens)
    heads = prompt_lists[:: args.group]
    t = _best(lambda: [ans.sample_group(model, p, args.group, 1.0, seed=0) for p in heads], args.reps)
    print(f"rollout, prompt once per group: {rows * args.max_new_tokens / t:9.1f} tokens/s   ({t:.3f} s per batch)")

    groups = [torch.randint(0, 4096, (args.group, args.max_new_tokens)).tolist() for _ in heads]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    with torch.no_grad():
        ref, mask = group_logps(model, heads, groups, torch.device("cpu"))
    adv = torch.randn(rows)

    def update() -> None:
        logp, _ = group_logps(model, heads, groups, torch.device("cpu"))
        loss, _ = policy_loss(logp, ref, ref, adv, mask, 0.2, 0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = _best(update, args.reps)
    print(f"update (fwd+bwd+AdamW):        {1 / t:10.2f} steps/s    ({t:.3f} s per update)")
    if args.hf:
        _hf_rollout(model, prompts, args)


class _NoText:
    """Stands in for a tokenizer: no token is a line break and there is no end-of-text token, so
    every answer runs to the full length (the worst case for the timing)."""

    def get_vocab_size(self) -> int:
        return 4096

    def decode(self, ids: list[int]) -> str:
        return "x"

    def token_to_id(self, name: str) -> None:
        return None


def _hf_rollout(model: Transformer, prompts: torch.Tensor, args: argparse.Namespace) -> None:
    from transformers import LlamaForCausalLM

    from tinyscale.export import hf_config, hf_state_dict

    hf = LlamaForCausalLM(hf_config(model.cfg, eot_id=0)).eval()
    hf.load_state_dict(hf_state_dict(model), strict=False)
    mask = torch.ones_like(prompts)

    def roll() -> None:
        with torch.inference_mode():
            hf.generate(prompts, attention_mask=mask, max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens,
                        do_sample=True, top_k=0)

    t = _best(roll, args.reps)
    rows = prompts.shape[0]
    print(f"rollout (transformers.generate): {rows * args.max_new_tokens / t:8.1f} tokens/s   ({t:.3f} s per batch)")


if __name__ == "__main__":
    main()
