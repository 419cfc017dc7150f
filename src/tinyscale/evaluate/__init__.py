"""Evaluation: loss per skill, probe suites (facts, reasoning, tracking, grammar), story completions.

    from tinyscale.evaluate import evaluate_run, load_eval
    results = evaluate_run("runs/3M", checkpoints="all")   # {step: result}, also RUN/eval/<step>.json
"""

from tinyscale.evaluate.results import DEFAULT_MAX_TOKENS, evaluate_run, load_eval

__all__ = ["DEFAULT_MAX_TOKENS", "evaluate_run", "load_eval"]
