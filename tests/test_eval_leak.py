"""The probe suites must test skills, not recall: no probe's text may occur in the story world."""

import json

import pytest

from tinyscale.evaluate.probes import SUITES, load_suite

STORIES = 3000


@pytest.fixture(scope="module")
def world_text(tmp_path_factory):
    from tinyscale.data.world import write_world_corpus

    out = tmp_path_factory.mktemp("world") / "corpus"
    texts = []
    for fmt, seed in (("plain", 0), ("instruct", 1)):
        write_world_corpus(out, stories=STORIES // 2, seed=seed, val_fraction=0.1, fmt=fmt, hold_out=[],
                           overwrite=True)
        for path in sorted(out.glob("*.jsonl")):
            texts += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    assert len(texts) >= STORIES
    # One string with a separator no probe contains, so `in` scans every story at once.
    return "\n\x00\n".join(" ".join(t.split()) for t in texts)


@pytest.mark.parametrize("suite", SUITES)
def test_no_probe_occurs_in_world_stories(world_text, suite):
    leaked = [p.id for p in load_suite(suite)[1] if " ".join(f"{p.prompt} {p.answer}".split()) in world_text]
    assert not leaked, f"probes whose prompt+answer the story world writes: {leaked}"


def test_the_check_can_find_a_leak(world_text):
    """A sentence taken from a world story is found, so a clean result above means something."""
    story = world_text.split("\n\x00\n")[7]
    sentence = story.split(". ")[1]
    assert sentence in world_text
