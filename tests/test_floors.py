"""The story world's floors are the generator's own probabilities (issue 21, point 1)."""

from __future__ import annotations

import math
import random

import pytest

from tinyscale.data.world import floorcheck, pieces, text
from tinyscale.data.world.text import LOG_NAME, LOG_PRONOUN, Char, Page, template_fn
from tinyscale.data.world.vocab import default_vocab


@pytest.fixture(scope="module")
def stories():
    return floorcheck.draw(5000, seed=3)


@pytest.fixture(scope="module")
def result(stories):
    return floorcheck.check(0, stories=stories, boot=60)


def test_every_draw_matches_its_floor(result):
    # Each outcome's frequency agrees with exp(floor) (binomial test, family-wise), each key fixes
    # its outcomes' probabilities, and no key claims more than all of the probability.
    assert result["failures"] == [], [(r["key"], r["worst"], r["p_worst"]) for r in result["failures"][:5]]
    assert result["tests"] > 1000


def test_floors_are_explained_and_match_entropy_per_skill(result):
    # Every known floor is the sum of the draws its word reveals.
    assert result["unexplained"] == 0
    skills = result["skills"]
    assert skills["free"]["spans"] > 15_000 and skills["grammar"]["spans"] > 15_000
    for name, row in skills.items():
        lo, hi = row["diff_ci"]
        # The mean floor equals the empirical conditional entropy within the estimate's noise.
        assert lo - 0.005 <= 0.0 <= hi + 0.005, (name, row)
    # Free words' floor is not the size of a whole lexicon list any more: classes and pools.
    assert 2.0 < skills["free"]["mean_floor"] < 5.0


def test_keys_cover_the_draws(result):
    keys = {r["key"][0] for r in result["keys"]}
    assert {"pronoun-or-name", "name", "recipe-verb", "recipe-adj", "recipe-noun", "pool", "number",
            "chore", "spot", "one of two"} <= keys
    choice = next(r for r in result["keys"] if r["key"] == ("pronoun-or-name",))
    assert choice["n"] > 5000 and abs(choice["mean_floor"] - choice["entropy"]) < 0.01


def test_baseline_never_above_floor(stories):
    assert floorcheck.base_violations(stories) == []


def test_floors_are_none_never_zero_where_unknown(stories):
    # Unmarked later names: which of the cast the plot names is not a uniform draw (unknown).
    text_spans = [(st.text[sp[0]:sp[1]], sp) for st in stories[:300] for sp in st.spans]
    names = {c.name for st in stories[:300] for c in st.ctx.values() if isinstance(c, Char) and c.named}
    tracking_names = [sp for t, sp in text_spans if sp[2] == "tracking" and t in names]
    assert any(sp[3] is None for sp in tracking_names)
    assert all(sp[3] is None or sp[3] <= 0 for _t, sp in text_spans)
    # Pronouns chosen over the name carry the choice.
    assert any(sp[2] == "grammar" and sp[3] == LOG_PRONOUN for _t, sp in text_spans)


def _page(seed: int = 0) -> tuple[Page, dict]:
    v = default_vocab()
    page = Page(random.Random(seed), v.article)
    page.draws = []
    a = Char("Lily", "she", v.forms["she"], -3.0)
    return page, {"A": a}


def test_phrasing_alternatives_are_charged():
    # "He" opens two of the three alternatives after "Then": it reveals 2/3 of the draw.
    fn = template_fn("Then [{A.He} ran off.|it rained.|{A.He} sat down.]")
    seen = set()
    for seed in range(40):
        page, ctx = _page(seed)
        fn(page, ctx)
        for sp in page.spans:
            seen.add(sp[3])
    assert seen == {round(math.log(2 / 3), 4)}
    # A word that opens a template: which template was drawn is unknown here.
    page, ctx = _page()
    template_fn("{A.He} ran.")(page, ctx)
    assert page.spans[0][3] is None and page.spans[0][4] is None


def test_name_or_pronoun_choice_is_charged():
    got = set()
    for seed in range(60):
        page, ctx = _page(seed)
        page.s("Once, {A} ran. Then, {A} sat.", ctx)
        got.add(tuple(sp[3] for sp in page.spans))
    # First mention: the draw; then, after "Then, ", the name (0.4, tracking: unknown) or "she" (0.6).
    assert (-3.0, LOG_PRONOUN) in got and (-3.0, None) in got
    assert LOG_NAME == round(math.log(0.4), 4)


@pytest.mark.parametrize("plant", ["drop a chore", "pronoun rate"])
def test_planted_error_fails_the_check(monkeypatch, plant):
    # A list that silently drops a word while its floor still claims the whole list; a draw
    # whose probability moved while its floor did not.
    if plant == "drop a chore":
        monkeypatch.setattr(pieces, "CHORES", pieces.CHORES[:-1])
    else:
        monkeypatch.setattr(text, "PRONOUN_RATE", 0.55)
    res = floorcheck.check(2000, seed=5, boot=0)
    assert res["failures"], "a draw that disagrees with its floor went unnoticed"
    want = ("chore",) if plant == "drop a chore" else ("pronoun-or-name",)
    assert any(r["key"] == want for r in res["failures"])


def test_unknown_floor_travels_as_nan():
    # A corpus line may carry a null floor; the shards mark its tokens unknown (NaN), not 0.
    import numpy as np

    from tinyscale.data.corpus import validate_line
    from tinyscale.data.tokenize import align

    line = {"id": "x", "text": "She ran home", "spans": [[0, 3, "grammar", None, None], [8, 12, "free", -2.0, -2.0]]}
    validate_line(line, "line")
    starts, ends = np.array([0, 3, 7, 8]), np.array([3, 7, 8, 12])
    _skills, floor, base = align([line["text"]], [line["spans"]], starts, ends)
    assert np.isnan(floor[0]) and np.isnan(base[0]) and np.isnan(floor[1])
    assert floor[3] == 2.0 and base[3] == 2.0
