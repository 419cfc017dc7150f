"""Fine-tuning from a reward (incentivize) or from reference answers (teach), and their comparison.

Modules: `rewards` (reward functions and the answer parser), `policy_gradient` (the loop and its
run folder), `compare` (teach versus incentivize from the same start on the same token budget).
"""
