"""`data ingest` on every source layout, and an unlabeled corpus through tokenize, train, eval, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinyscale.cli import main
from tinyscale.data import ingest as ingest_mod
from tinyscale.data.ingest import ingest, normalize
from tinyscale.errors import UserError

NAMES = ["Lily", "Tom", "Ben", "Mia", "Sam", "Anna", "Max", "Zoe"]
THINGS = ["ball", "cat", "dog", "kite", "cake", "tree", "boat", "hat"]


def story(i: int) -> str:
    name, thing = NAMES[i % 8], THINGS[(i // 8) % 8]
    return (f"Once upon a time, there was a little girl named {name}. {name} had a {thing}. "
            f"One day, {name} lost the {thing}. She was sad.\n\n{name} looked for the {thing} "
            f"everywhere. At last she found it under the bed. {name} was happy again.")


def _read(out: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]


def write_tinystories_txt(path: Path, texts: list[str]) -> None:
    """The published layout: each story followed by a line `<|endoftext|>`."""
    path.write_text("".join(t + "\n<|endoftext|>\n" for t in texts), encoding="utf-8")


def test_published_txt_files_keep_their_splits_and_repair_mojibake(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "CHUNK", 97)  # separators fall across chunk boundaries
    src = tmp_path / "src"
    src.mkdir()
    train = [story(i) for i in range(30)]
    train[3] = "Tom said, \u201cI can\u2019t find it.\u201d".encode().decode("cp1252", errors="replace")
    train[5] = "   "
    write_tinystories_txt(src / "TinyStories-train.txt", train)
    write_tinystories_txt(src / "TinyStories-valid.txt", [story(i) for i in range(100, 107)])
    summary = ingest(src, tmp_path / "out")
    tr, va = _read(tmp_path / "out", "train"), _read(tmp_path / "out", "val")
    assert len(tr) == 29 and len(va) == 7 and summary["skipped_empty"] == 1 and summary["kept_source_splits"]
    assert tr[0]["text"] == train[0] and va[0]["text"] == story(100)
    assert "â€" not in tr[3]["text"] and "can" in tr[3]["text"] and "t find it" in tr[3]["text"]
    assert summary["normalized"] == 1
    assert not any(r.get("spans") for r in tr) and len({r["id"] for r in tr + va}) == 36


def test_all_data_json_records_keep_their_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest_mod, "CHUNK", 50)
    records = [{"story": story(i), "instruction": {"prompt:": f"Write a short story ... {i}",
                                                    "words": ["hang", "foot", "cute"],
                                                    "features": ["Dialogue", "Twist"]},
                "summary": f"A girl finds her toy {i}.", "source": "GPT-4"} for i in range(40)]
    records.append({"story": "", "instruction": {}, "summary": "", "source": "GPT-3.5"})
    (tmp_path / "data00.json").write_text(json.dumps(records, indent=1))
    summary = ingest(tmp_path / "data00.json", tmp_path / "out", val_fraction=0.25)
    rows = _read(tmp_path / "out", "train") + _read(tmp_path / "out", "val")
    assert len(rows) == 40 and summary["skipped_empty"] == 1
    assert 3 <= summary["stories"]["val"] <= 20 and not summary["kept_source_splits"]
    meta = rows[0]["meta"]
    assert meta["words"] == {"verb": "hang", "noun": "foot", "adjective": "cute"}
    assert meta["features"] == ["dialogue", "plot_twist"] and meta["generator"] == "GPT-4"
    assert meta["summary"].startswith("A girl finds") and meta["prompt"].startswith("Write a short story")


def test_jsonl_with_a_named_text_field_and_limit(tmp_path):
    lines = [{"content": story(i), "n": i} for i in range(50)] + [{"content": None, "n": 99}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = ingest(tmp_path / "c.jsonl", tmp_path / "auto")
    assert sum(summary["stories"].values()) == 50 and summary["skipped_empty"] == 1
    ingest(tmp_path / "c.jsonl", tmp_path / "lim", limit=10)
    assert len(_read(tmp_path / "lim", "train") + _read(tmp_path / "lim", "val")) == 10
    with pytest.raises(UserError, match="no field 'body'.*content"):
        ingest(tmp_path / "c.jsonl", tmp_path / "bad", text_field="body")
    assert not (tmp_path / "bad").exists()


def test_parquet_files_by_split_name(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    src = tmp_path / "pq"
    src.mkdir()
    pq.write_table(pa.table({"text": [story(i) for i in range(60)], "id": list(range(60))}), src / "train.parquet",
                   row_group_size=16)
    pq.write_table(pa.table({"text": [story(i) for i in range(5)], "id": list(range(5))}),
                   src / "validation.parquet")
    summary = ingest(src, tmp_path / "out", limit=50)
    assert summary["stories"] == {"train": 50, "val": 5}
    assert _read(tmp_path / "out", "train")[7]["text"] == story(7)


def test_folder_of_txt_files_one_story_each(tmp_path):
    src = tmp_path / "stories"
    src.mkdir()
    for i in range(40):
        (src / f"story_{i:03d}.txt").write_text(story(i) + "\n")
    (src / "empty.txt").write_text("\n")
    summary = ingest(src, tmp_path / "out", val_fraction=0.3)
    assert summary["stories"]["train"] + summary["stories"]["val"] == 40 and summary["skipped_empty"] == 1
    assert 4 <= summary["stories"]["val"] <= 25


def test_hf_dataset_saved_to_disk_and_loaded_by_name(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [story(i) for i in range(30)]}),
                               "validation": datasets.Dataset.from_dict({"text": [story(i) for i in range(4)]}),
                               "test": datasets.Dataset.from_dict({"text": [story(i) for i in range(3)]})})
    ds.save_to_disk(str(tmp_path / "saved"))
    summary = ingest(tmp_path / "saved", tmp_path / "out")
    assert summary["stories"] == {"train": 30, "val": 4} and summary["skipped_splits"] == 1
    # `hf:NAME` goes through load_dataset(NAME, streaming=True); a local data folder stands in for the hub.
    local = tmp_path / "hub"
    (local / "data").mkdir(parents=True)
    for split, n in (("train", 20), ("test", 3)):
        (local / "data" / f"{split}.jsonl").write_text("".join(json.dumps({"story": story(i)}) + "\n"
                                                             for i in range(n)))
    summary = ingest(f"hf:{local}", tmp_path / "out2")
    assert summary["stories"] == {"train": 20, "val": 3}


def test_normalize_repairs_mojibake_and_keeps_ascii():
    assert normalize("She didnâ€™t go.\r\n") in ("She didn't go.", "She didn\u2019t go.")
    assert normalize("  plain text \n") == "plain text"


def test_bad_sources_are_one_line_exit_2(tmp_path, capsys):
    assert main(["-q", "data", "ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "x.csv").write_text("a,b\n")
    assert main(["-q", "data", "ingest", str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown file type" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text('[{"text": "a"}, {"text": ')
    assert main(["-q", "data", "ingest", str(tmp_path / "broken.json"), "--out", str(tmp_path / "o")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_unlabeled_corpus_goes_through_tokenize_train_eval_report(tmp_path):
    from tinyscale.analysis.report import build_report
    from tinyscale.config import TrainConfig
    from tinyscale.data.stats import corpus_stats
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.evaluate import evaluate_run
    from tinyscale.train import train

    src = tmp_path / "ts"
    src.mkdir()
    write_tinystories_txt(src / "TinyStories-train.txt", [story(i) for i in range(300)])
    write_tinystories_txt(src / "TinyStories-valid.txt", [story(i) for i in range(300, 330)])
    assert main(["-q", "data", "ingest", str(src), "--out", str(tmp_path / "corpus")]) == 0
    stats = corpus_stats(tmp_path / "corpus")
    assert stats["once_upon_a_time_share"] == 1.0 and stats["stories"] == {"train": 300, "val": 30}
    tokenize_corpus(tmp_path / "corpus", tmp_path / "shards", vocab_size=300, workers=1)
    run = tmp_path / "sweep" / "runs" / "tiny"
    train(TrainConfig(data=str(tmp_path / "shards"), tokens=30 * 8 * 32, d_model=32, n_layers=2, n_heads=2,
                      seq_len=32, batch=8, eval_every=10, checkpoint_every=15, threads=1, dtype="fp32"), run)
    results = evaluate_run(run, "all", suites=[], completions=2, samples=1)
    last = results[max(results)]
    assert last["loss"]["val"]["loss"] > 0 and len(last["completions"]) == 2
    page = build_report(tmp_path / "sweep", n_boot=5).read_text()
    skills = page[page.index('<section id="skills">'):]
    assert "No labels" in skills[:skills.index("</section>")]


def test_stats_compare_corpora(tmp_path):
    from tinyscale.data.stats import corpus_stats, syllables

    assert [syllables(w) for w in ("cat", "time", "happy", "little", "beautiful")] == [1, 1, 2, 2, 3]
    simple = tmp_path / "simple"
    simple.mkdir()
    write_tinystories_txt(simple / "train.txt", [story(i) for i in range(40)])
    write_tinystories_txt(simple / "valid.txt", [story(i) for i in range(40, 44)])
    hard = tmp_path / "hard"
    hard.mkdir()
    prose = ("Notwithstanding considerable organizational difficulties, the administration's comprehensive "
             "infrastructure modernization initiative nevertheless achieved substantial improvements {i} "
             "regarding international competitiveness and environmental sustainability")
    write_tinystories_txt(hard / "train.txt", [prose.format(i=i) + "." for i in range(20)])
    write_tinystories_txt(hard / "valid.txt", ["Once upon a time, " + prose.format(i=99) + "."])
    ingest(simple, tmp_path / "a")
    ingest(hard, tmp_path / "b")
    a, b = corpus_stats(tmp_path / "a"), corpus_stats(tmp_path / "b")
    assert a["once_upon_a_time_share"] == 1.0 and b["once_upon_a_time_share"] == round(1 / 21, 4)
    assert a["readability_grade"] < 4 < 14 < b["readability_grade"]
    r = a["distinct_ngram_ratio"]
    assert set(r) == {"1", "2", "3", "4"} and r["1"] < r["2"] < r["3"] <= r["4"] and r["4"] == a["distinct_4gram_ratio"]
    assert b["distinct_ngram_ratio"]["4"] < 0.2  # the same sentence, twenty times
    assert a["vocabulary"] > 20
