"""lm-evaluation-harness's `local-completions` model, unchanged, against `tinyscale serve`.

The served model is the Hugging Face folder `tinyscale export` wrote; tinyscale's own multiple-choice
scorer (evaluate/probes.py, what `tinyscale eval` runs) scores the same items on the run's checkpoint.
Both must agree item by item: the echo/logprobs layout is what makes an evaluation harness work.
"""

from __future__ import annotations

import json
import random

import pytest

from _serve_helpers import MC_TASK, Server, make_run

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pytest.importorskip("fastapi")

NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna"]
THINGS = ["ball", "cat", "dog", "kite", "cake", "tree", "boat"]

GEN_TASK = """task: tiny_stories_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: generate_until
doc_to_text: "<|endoftext|>{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""


def write_items(path, n: int = 12) -> list[dict]:
    """Probe lines in tinyscale's suite format, which the lm-eval task reads as its dataset too."""
    rng = random.Random(1)
    items = []
    for i in range(n):
        name, thing = rng.choice(NAMES), rng.choice(THINGS)
        wrong = rng.sample([t for t in THINGS if t != thing], 2)
        items.append({"id": f"mc-{i}", "prompt": f"Once upon a time, {name} had a red {thing}. {name} loved the",
                      "answer": thing, "wrong": wrong, "kind": "tracking", "style": "world"})
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return items


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tinyscale.export import export_hf

    root = tmp_path_factory.mktemp("lmeval")
    run = make_run(root, "tiny")
    hf = export_hf(run, root / "tiny-hf")
    items = write_items(root / "items.jsonl")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(MC_TASK.format(items=root / "items.jsonl"))
    (tasks / "gen.yaml").write_text(GEN_TASK.format(items=root / "items.jsonl"))
    server = Server([run, hf], root, "--name", "tiny-run", "--name", "tiny-hf")  # as docs/serve.md: no --dtype
    yield run, server, tasks, items
    server.stop()


def test_served_export_and_run_are_both_listed(setup):
    import requests

    _, server, _, _ = setup
    ids = [m["id"] for m in requests.get(server.base + "/v1/models", timeout=10).json()["data"]]
    assert ids == ["tiny-run", "tiny-hf"]


def test_lm_eval_local_completions_matches_tinyscale_scorer(setup, monkeypatch):
    from lm_eval.tasks import TaskManager

    from tinyscale import runs
    from tinyscale.evaluate.probes import Codec, read_suite, score_probes
    from tinyscale.generate import eot_id_of

    run, server, tasks, items = setup
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_args = {"model": "tiny-hf", "base_url": server.base + "/v1/completions", "num_concurrent": 4,
                  "max_length": 128, "max_retries": 1, "timeout": 60}
    out = lm_eval.simple_evaluate(model="local-completions", model_args=model_args,
                                  tasks=["tiny_stories_mc", "tiny_stories_gen"], log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks), include_defaults=False))

    model, _ = runs.load_model(run)
    tokenizer = runs.load_tokenizer(run)
    probes = read_suite(tasks.parent / "items.jsonl")
    ours = score_probes(model, probes, Codec.from_tokenizer(tokenizer, bos_id=eot_id_of(tokenizer)),
                        max_len=model.cfg.max_seq_len)

    samples = sorted(out["samples"]["tiny_stories_mc"], key=lambda s: s["doc_id"])
    assert len(samples) == len(items) == len(ours)
    for sample, score in zip(samples, ours, strict=True):
        theirs = [resp[0][0] for resp in sample["resps"]]  # (loglikelihood, is_greedy) per option
        assert max(abs(a - b) for a, b in zip(theirs, score.logps, strict=True)) < 1e-4, (sample["doc_id"], theirs, score.logps)
    acc = out["results"]["tiny_stories_mc"]["acc,none"]
    assert acc == pytest.approx(sum(s.mc for s in ours) / len(ours))
    assert len({round(lp, 3) for s in ours for lp in s.logps}) > len(items)  # non-trivial scores

    generated = out["samples"]["tiny_stories_gen"]
    assert len(generated) == len(items) and all(isinstance(s["resps"][0][0], str) for s in generated)
    assert any(s["resps"][0][0].strip() for s in generated)
