"""Dataset and model cards, and Parquet corpora: what Hugging Face's own parsers and loaders read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import tinyscale
from tinyscale.data.corpus import SKILLS
from tinyscale.data.world import write_world_corpus
from tinyscale.errors import UserError

datasets = pytest.importorskip("datasets", reason="the cards are checked with Hugging Face's loaders")
hub = pytest.importorskip("huggingface_hub", reason="the cards are parsed with huggingface_hub")
pytest.importorskip("pyarrow", reason="Parquet corpora need pyarrow")

SEED = 3


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """The same small story-world corpus (with an ood split) in both file formats."""
    root = tmp_path_factory.mktemp("corpora")
    out = {}
    for fmt in ("jsonl", "parquet"):
        write_world_corpus(root / fmt, stories=40, seed=SEED, hold_out=["feature:dialogue"], file_format=fmt)
        out[fmt] = root / fmt
    return out


def _lines(folder: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def _no_nulls(obj):
    """`datasets` reads JSONL `meta` objects as one struct: keys a record lacks come back as None."""
    if isinstance(obj, dict):
        return {k: _no_nulls(v) for k, v in obj.items() if v is not None}
    return [_no_nulls(v) for v in obj] if isinstance(obj, list) else obj


def test_both_formats_load_with_datasets_with_the_same_rows(corpora, tmp_path):
    expected = {s: _lines(corpora["jsonl"], s) for s in ("train", "val", "ood")}
    assert all(expected.values())  # every split has stories, so the comparison below is not empty
    pq = datasets.load_dataset(str(corpora["parquet"]), cache_dir=str(tmp_path / "cache"))
    assert set(pq) == set(expected) and {s: pq[s].num_rows for s in pq} == {s: len(v) for s, v in expected.items()}
    for split, lines in expected.items():
        for row, line in zip(pq[split], lines, strict=True):
            assert row["id"] == line["id"] and row["text"] == line["text"]
            assert json.loads(row["meta"]) == line["meta"]
            assert [[s["start"], s["end"], s["skill"], s["logp"], s["base"]] for s in row["spans"]] == line["spans"]
            assert [[t["start"], t["end"], t["role"]] for t in row["tags"] or []] == line.get("tags", [])
    files = {s: str(corpora["parquet"] / f"{s}.parquet") for s in expected}
    plain = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache2"))
    assert plain["train"][:] == pq["train"][:]

    if not hasattr(datasets, "Json"):
        pytest.skip("this datasets cannot read JSONL whose span lists mix numbers and strings")
    js = datasets.load_dataset(str(corpora["jsonl"]), cache_dir=str(tmp_path / "cache3"))
    assert {s: js[s].num_rows for s in js} == {s: len(v) for s, v in expected.items()}
    for split, lines in expected.items():
        for row, line in zip(js[split], lines, strict=True):
            assert (row["id"], row["text"]) == (line["id"], line["text"])
            # datasets' JSON parser may round a float in its last digit (-2.9957 -> -2.9957000000000003)
            assert [[pytest.approx(x, rel=1e-12) if isinstance(x, float) else x for x in span]
                    for span in line["spans"]] == row["spans"]
            assert _no_nulls(row["meta"]) == _no_nulls(line["meta"])


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_dataset_card_parses_and_says_what_the_corpus_is(corpora, fmt):
    folder = corpora[fmt]
    card = hub.DatasetCard.load(folder / "README.md")
    data = card.data.to_dict()
    counts = {s: len(_lines(corpora["jsonl"], s)) for s in ("train", "val", "ood")}
    assert data["configs"] == [{"config_name": "default",
                                "data_files": [{"split": s, "path": f"{s}.{fmt}"} for s in counts]}]
    assert {d["name"]: d["num_examples"] for d in data["dataset_info"]["splits"]} == counts
    assert data["license"] == "mit" and "text-generation" in data["task_categories"]
    assert data["size_categories"] == ["n<1K"]
    meta = data["tinyscale"]
    assert meta["seed"] == SEED and meta["code"]["tinyscale"] == tinyscale.__version__
    assert meta["recipe"]["hold_out"] == ["feature:dialogue"] and meta["file_format"] == fmt
    if fmt == "parquet":
        features = {f["name"]: f for f in data["dataset_info"]["features"]}
        assert list(features) == ["id", "text", "meta", "spans", "tags"]
        assert [f["name"] for f in features["spans"]["list"]] == ["start", "end", "skill", "logp", "base"]
    for skill in SKILLS[1:]:
        assert f"`{skill}`" in card.text
    assert "character offsets" in card.text and "surprisal" in card.text


def test_parquet_corpus_tokenizes_like_the_jsonl(corpora, tmp_path):
    from tinyscale.data.stats import corpus_stats
    from tinyscale.data.tokenize import tokenize_corpus

    metas = {fmt: tokenize_corpus(corpora[fmt], tmp_path / fmt, vocab_size=300, workers=1) for fmt in corpora}
    assert metas["jsonl"].pop("corpus") != metas["parquet"].pop("corpus")
    assert metas["jsonl"] == metas["parquet"]  # corpus hash included
    names = sorted(p.name for p in (tmp_path / "jsonl").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "parquet").iterdir()) and "ood.skills.bin" in names
    for name in names:
        if name != "meta.json":
            assert (tmp_path / "jsonl" / name).read_bytes() == (tmp_path / "parquet" / name).read_bytes(), name
    stats = {fmt: corpus_stats(corpora[fmt]) for fmt in corpora}
    assert json.dumps(stats["jsonl"]).replace(str(corpora["jsonl"]), "X") == \
        json.dumps(stats["parquet"]).replace(str(corpora["parquet"]), "X")


def test_ingest_writes_parquet_and_a_card(tmp_path):
    from tinyscale.data.ingest import ingest

    src = tmp_path / "stories.jsonl"
    texts = [f"Story number {i}: a cat sat on a mat." for i in range(30)]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    summary = ingest(src, tmp_path / "out", val_fraction=0.2, file_format="parquet")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "README.md", "ingest.json", "train.parquet", "val.parquet"]
    ds = datasets.load_dataset(str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert {s: ds[s].num_rows for s in ds} == summary["stories"]
    assert sorted(list(ds["train"]["text"]) + list(ds["val"]["text"])) == sorted(texts)
    card = hub.DatasetCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "unknown" and card.data.tinyscale["recipe"]["source"] == str(src)
    with pytest.raises(UserError, match="--file-format"):
        ingest(src, tmp_path / "out2", file_format="csv")


def test_a_split_in_both_formats_is_refused(corpora, tmp_path):
    import shutil

    from tinyscale.data.corpus import corpus_splits

    both = tmp_path / "both"
    shutil.copytree(corpora["jsonl"], both)
    shutil.copy(corpora["parquet"] / "val.parquet", both)
    with pytest.raises(UserError, match="both val.jsonl and val.parquet"):
        corpus_splits(both)


# --- the model card ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(corpora, tmp_path_factory) -> Path:
    """A tiny run trained on the Parquet corpus and evaluated (probes included)."""
    from tinyscale.config import TrainConfig
    from tinyscale.data.tokenize import tokenize_corpus
    from tinyscale.evaluate import evaluate_run
    from tinyscale.train import train

    root = tmp_path_factory.mktemp("trained")
    tokenize_corpus(corpora["parquet"], root / "shards", vocab_size=300, workers=1)
    cfg = TrainConfig(data=str(root / "shards"), tokens=8 * 32 * 12, eval_every=0, eval_tokens=2048,
                      checkpoint_every=6, d_model=32, n_layers=2, n_heads=2, seq_len=32, batch=8, lr=3e-3,
                      warmup=2, threads=1, dtype="fp32", device="cpu")
    train(cfg, root / "run")
    evaluate_run(root / "run", device="cpu", completions=0, world_probes=3)
    return root / "run"


def test_export_writes_a_model_card_with_the_runs_numbers(trained, corpora, tmp_path):
    pytest.importorskip("transformers", reason="export needs transformers")
    from tinyscale.export import export_hf

    out = export_hf(trained, tmp_path / "hf")
    card = hub.ModelCard.load(out / "README.md")
    facts = card.data.to_dict()["tinyscale"]
    info = json.loads((trained / "run.json").read_text())
    step = facts["step"]
    result = json.loads((trained / "eval" / f"{step}.json").read_text())
    metrics = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    at_step = [m for m in metrics if m["step"] == step and "loss" in m][-1]

    assert step == 12
    assert facts["architecture"]["d_model"] == info["model"]["d_model"] == 32
    assert facts["architecture"]["context"] == info["context"]
    assert facts["params"] == info["params"]
    assert facts["training"]["tokens"] == at_step["tokens"] == 8 * 32 * 12
    assert facts["training"]["flops"] == at_step["flops"]
    assert facts["data"]["corpus_sha256"] == info["data"]["corpus_sha256"]
    assert facts["data"]["card"] == str(corpora["parquet"].resolve() / "README.md")
    assert card.data.license == "mit"  # the corpus card's

    val = result["loss"]["val"]
    assert facts["validation"]["loss"] == val["loss"] and facts["validation"]["floor"] == val["floor"]
    for skill, r in val["skills"].items():
        assert facts["validation"]["skills"][skill] == {k: r[k] for k in ("loss", "floor", "excess", "tokens")}
    assert set(result["probes"]) and set(result["world_probes"])
    for family in ("probes", "world_probes"):
        for suite, r in result[family].items():
            assert facts["probes"][f"{family}/{suite}"]["acc"] == r["mc"]["acc"]
    reported = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert reported["validation loss (all)"] == val["loss"]
    assert reported["validation loss (tracking)"] == val["skills"]["tracking"]["loss"]
    assert f"| {info['params']['total']:,} |" in card.text
    assert f"| tracking | {val['skills']['tracking']['tokens']:,} | {val['skills']['tracking']['loss']:.4f} |" in card.text
    assert "AutoModelForCausalLM.from_pretrained" in card.text and "tinyscale serve" in card.text
    assert f"--format gguf --dtype q8_0 --out {out}-gguf" in card.text


def test_model_card_says_what_the_run_does_not_have(tmp_path):
    pytest.importorskip("transformers", reason="export needs transformers")
    from test_export import make_run
    from tinyscale.export import export_hf

    run, _, _ = make_run(tmp_path, "neo", True)  # run.json with the model only; no metrics, no eval
    card = hub.ModelCard.load(export_hf(run, tmp_path / "hf") / "README.md")
    facts = card.data.to_dict()["tinyscale"]
    assert facts["params"] == {"total": None, "non_embedding": None} and facts["validation"] is None
    assert "| parameters | missing |" in card.text and "Validation loss: missing" in card.text
    assert card.data.eval_results is None and card.data.license == "other"
