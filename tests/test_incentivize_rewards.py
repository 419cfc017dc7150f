"""Answer parsing and every reward, on written examples."""


import pytest

from tinyscale.errors import UserError
from tinyscale.incentivize.rewards import hallucination, load_reward, parse_answer, required_words

KITE = ["kite"]


@pytest.mark.parametrize(("completion", "answers", "verdict"), [
    (" the kite", KITE, "correct"),
    (" A kite.", KITE, "correct"),
    (" kites", ["kite", "kites"], "correct"),
    (" maybe the kite", KITE, "correct_hedged"),
    (" I think it was a kite", KITE, "correct_hedged"),
    (" the ball", KITE, "wrong"),
    (" probably the ball", KITE, "wrong_hedged"),
    (" I don't know", KITE, "idk"),
    (" I do not know.", [], "idk"),
    (" I’m not sure", [], "hedge_only"),  # curly apostrophe; a hedge with no answer is not an abstention
    (" maybe", KITE, "hedge_only"),  # a bare hedge: no answer, no "I don't know"
    (" Probably.", [], "hedge_only"),
    (" I don't know, maybe", [], "idk"),  # the abstention is said
    (" The story does not say", [], "idk"),
    (" I don't know, maybe a kite", KITE, "correct_hedged"),  # content after the phrases is judged
    (" Spot", [], "wrong"),  # any answer to an unanswerable question is wrong
    ("", KITE, "no_answer"),  # silence is not an abstention, nor a confident wrong answer
    (" .", [], "no_answer"),
    (" four years old", ["four"], "correct"),
    (" the kite\nQ: What was the name of the kite? A: Spot", KITE, "correct"),  # first line only
    (" the kite and the ball", KITE, "wrong"),
])
def test_parse_answer(completion, answers, verdict):
    assert parse_answer(completion, answers).verdict == verdict


def test_hallucination_default_table():
    truth = {"answers": KITE}
    got = [hallucination("", c, truth) for c in (" a kite", " maybe a kite", " I don't know", " maybe a ball", " a ball")]
    assert got == [1.0, 0.5, 0.0, -2.0, -4.0]
    assert hallucination("", " Spot", {"answers": []}) == -4.0
    assert hallucination("", " I don't know", {"answers": []}) == 0.0


def test_non_answers_cost_more_than_saying_i_dont_know():
    """A bare hedge or silence must not be a cheaper abstention than "I don't know" (the policy would
    learn the shortcut), nor count as a hallucination."""
    for truth in ({"answers": KITE}, {"answers": []}):
        idk = hallucination("", " I don't know", truth)
        for non_answer in (" maybe", " probably", " not sure", ""):
            v = parse_answer(non_answer, truth["answers"])
            assert v.non_answer and not v.idk and not v.confident_wrong
            assert hallucination("", " a ball", truth) < hallucination("", non_answer, truth) == -1.0 < idk
            assert load_reward("hallucination", threshold=0.5)("", non_answer, truth) == -1.0  # -t/(1-t)


def test_hallucination_threshold_and_custom_table():
    fn = load_reward("hallucination", threshold=0.75)
    truth = {"answers": KITE}
    assert fn("", " kite", truth) == 1.0
    assert fn("", " maybe kite", truth) == 1.0  # hedging does not matter under a threshold
    assert fn("", " I don't know", truth) == 0.0
    assert fn("", " ball", truth) == pytest.approx(-3.0)  # -t/(1-t)
    table = {"correct": 2.0, "correct_hedged": 1.0, "idk": -0.5, "wrong_hedged": -1.0, "wrong": -3.0}
    assert hallucination("", " I don't know", truth, table=table) == -0.5
    assert hallucination("", " maybe", truth, table=table) == -1.0  # a verdict it leaves out: the default
    with pytest.raises(UserError, match="--threshold"):
        load_reward("hallucination", threshold=1.5)


def test_required_words_share_and_fluency():
    truth = {"words": ["jump", "ball", "red"], "ref_logp": 0.0}
    assert required_words("", "Tom jumped with a red ball.", truth) == 1.0
    assert required_words("", "Tom jumped.", truth) == pytest.approx(1 / 3)
    # A bare list earns the words but reads as unlikely text to the starting model.
    listed = required_words("", "jump ball red", {**truth, "ref_logp": -8.0})
    story = required_words("", "Tom jumped with a red ball.", {**truth, "ref_logp": -2.0})
    assert listed == pytest.approx(1.0 - 0.25 * 8) and story > listed


def test_user_reward_and_bad_specs(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text("def shout(prompt, completion, truth):\n    return completion.count('!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward("my_rewards:shout")
    assert fn("", "hi!!", {}) == 2
    for spec, msg in (("nope", "module:function"), ("no_such_mod:f", "cannot import"), ("my_rewards:none", "no function")):
        with pytest.raises(UserError, match=msg):
            load_reward(spec)


def test_metrics_on_written_answers():
    from tinyscale.incentivize.compare import _answer_metrics

    items = [{"prompt": "", "truth": {"answerable": True, "answers": KITE}},
             {"prompt": "", "truth": {"answerable": True, "answers": KITE}},
             {"prompt": "", "truth": {"answerable": False, "answers": []}},
             {"prompt": "", "truth": {"answerable": False, "answers": []}},
             {"prompt": "", "truth": {"answerable": False, "answers": []}},
             {"prompt": "", "truth": {"answerable": False, "answers": []}}]
    m = _answer_metrics(items, [" a kite", " I don't know", " Spot", " I don't know", " maybe", ""], hallucination)
    assert m["accuracy_answerable"] == 0.5 and m["idk_answerable"] == 0.5
    assert m["idk_unanswerable"] == 0.25 and m["confident_wrong_unanswerable"] == 0.25
    assert m["confident_wrong"] == pytest.approx(1 / 6)  # the empty answer is not a confident wrong one
    assert m["hedge_only"] == pytest.approx(1 / 6) and m["no_answer"] == pytest.approx(1 / 6)
    assert m["mean_reward"] == pytest.approx((1 + 0 - 4 + 0 - 1 - 1) / 6)
    assert m["outcomes"]["verdict"] == ["correct", "idk", "wrong", "idk", "hedge_only", "no_answer"]
    assert m["outcomes"]["id"] == list(range(6)) and m["outcomes"]["answerable"] == [True] * 2 + [False] * 4
