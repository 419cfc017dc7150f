"""The request-level logit changes of `tinyscale serve`, computed by hand on a 6-token vocabulary."""

from __future__ import annotations

import math

import torch

from tinyscale.serve.penalties import Penalties, adjust

LOGITS = torch.tensor([[2.0, -1.0, 0.5, 0.0, 3.0, -2.0]])


def test_nothing_asked_changes_nothing():
    assert not Penalties().active
    assert torch.equal(adjust(LOGITS, Penalties(), [1, 2], [4], 1.0, 0), LOGITS)


def test_logit_bias_is_added_to_its_tokens():
    out = adjust(LOGITS, Penalties(logit_bias={1: 5.0, 4: -100.0}), [], [], 1.0, None)
    assert out[0].tolist() == [2.0, 4.0, 0.5, 0.0, -97.0, -2.0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    # vLLM's: prompt and generated tokens alike, each once however often it occurred.
    out = adjust(LOGITS, Penalties(repetition=2.0), [0, 1, 0], [2], 1.0, None)
    assert out[0].tolist() == [1.0, -2.0, 0.25, 0.0, 3.0, -2.0]
    # llama.cpp's repeat_penalty over the last 2 tokens only: token 0 (third from the end) is spared.
    out = adjust(LOGITS, Penalties(repetition=2.0, window=2), [0, 1], [2], 1.0, None)
    assert out[0].tolist() == [2.0, -2.0, 0.25, 0.0, 3.0, -2.0]


def test_presence_and_frequency_count_generated_tokens_only():
    out = adjust(LOGITS, Penalties(presence=0.5, frequency=0.25), [3, 3, 3], [4, 4, 2], 1.0, None)
    want = LOGITS[0].tolist()
    want[4] -= 0.5 + 2 * 0.25
    want[2] -= 0.5 + 0.25
    assert out[0].tolist() == want  # token 3, only in the prompt, keeps its logit


def test_min_tokens_masks_the_end_of_text_until_reached():
    p = Penalties(min_tokens=2)
    assert adjust(LOGITS, p, [], [4], 1.0, 0)[0, 0] == float("-inf")
    assert adjust(LOGITS, p, [], [4, 4], 1.0, 0)[0, 0] == 2.0
    assert adjust(LOGITS, p, [], [], 1.0, None)[0, 0] == 2.0  # ignore_eos: nothing to mask


def test_min_p_keeps_the_tokens_at_least_that_likely_after_temperature():
    for t in (1.0, 0.5, 2.0):
        probs = torch.softmax(LOGITS[0] / t, -1)
        keep = (probs >= 0.1 * probs.max()).tolist()
        out = adjust(LOGITS, Penalties(min_p=0.1), [], [], t, None)[0]
        assert [bool(math.isfinite(v)) for v in out.tolist()] == keep, t
    # greedy: nothing to cut
    assert torch.equal(adjust(LOGITS, Penalties(min_p=0.9), [], [], 0.0, None), LOGITS)
