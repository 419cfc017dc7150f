"""The probe suites must test skills, not recall: no probe's text may occur in the story world."""

import json

import pytest

from tinyscale.evaluate.probes import SUITES, Probe, load_suite

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


def leaked(probes: list[Probe], world_text: str) -> list[str]:
    """Ids of the probes whose prompt followed by their answer occurs in the world's text."""
    return [p.id for p in probes if " ".join(f"{p.prompt} {p.answer}".split()) in world_text]


@pytest.mark.parametrize("suite", SUITES)
def test_no_probe_occurs_in_world_stories(world_text, suite):
    found = leaked(load_suite(suite)[1], world_text)
    assert not found, f"probes whose prompt+answer the story world writes: {found}"


def test_the_check_finds_a_planted_leak(world_text):
    """A probe built from a world sentence (its last word as the answer) is flagged by the same check,
    and the same probe with another answer is not: a clean result above means something."""
    sentence = next(s for s in world_text.split("\n\x00\n")[7].split(". ") if len(s.split()) > 5)
    *words, last = sentence.split()
    planted = Probe("planted", " ".join(words), last, ("zebra",), "fact", "novel")
    changed = Probe("changed", " ".join(words), "zebra", (last,), "fact", "novel")
    assert leaked([planted, changed], world_text) == ["planted"]
