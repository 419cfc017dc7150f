"""The model card (README.md) that `tinyscale export` writes into a Hugging Face folder.

Every number comes from the run's own files: run.json (architecture, parameters, FLOPs per token,
data hashes), metrics.jsonl (tokens and FLOPs at the exported step; the validation loss when no
eval file has it), eval/<step>.json (validation loss per skill with floor and excess, probe
accuracies) and the shards' meta.json (the corpus folder, whose README.md is its dataset card). A
number the run does not have is said to be missing, never filled in. The YAML front matter
(huggingface_hub's ModelCardData) holds the same numbers under `tinyscale` and the losses and
accuracies as `model-index` results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tinyscale import runs
from tinyscale.fileio import atomic_open, read_json, read_jsonl

HF_ARCH = {"llama": "LlamaForCausalLM", "neo": "GPTNeoForCausalLM"}
MISSING = "missing"


def _metrics_at(run_dir: Path, step: int) -> dict[str, Any]:
    """The training and validation lines of metrics.jsonl at `step`, merged ({} without the file)."""
    path = run_dir / "metrics.jsonl"
    merged: dict[str, Any] = {}
    if path.is_file():
        for _, line in read_jsonl(path):
            if isinstance(line, dict) and line.get("step") == step:
                merged.update(line)
    return merged


def _data(info: dict[str, Any]) -> dict[str, Any]:
    """The data reference: shards folder and hashes (run.json), corpus folder and its dataset card."""
    data = info.get("data") or {}
    out = {k: data.get(k) for k in ("dir", "corpus_sha256", "tokenizer_sha256")}
    meta = Path(data["dir"]) / "meta.json" if data.get("dir") else None
    corpus = read_json(meta).get("corpus") if meta is not None and meta.is_file() else None
    out["corpus"] = corpus
    card = Path(corpus) / "README.md" if corpus else None
    out["card"] = str(card) if card is not None and card.is_file() else None
    out["license"] = None
    if out["card"]:
        from huggingface_hub import DatasetCard

        out["license"] = DatasetCard.load(out["card"]).data.license
    return out


def _validation(result: dict | None, metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Validation loss overall and per skill (with floor/excess where measured) and its source."""
    val = ((result or {}).get("loss") or {}).get("val")
    source = "eval"
    if not isinstance(val, dict):
        val, source = metrics.get("val"), "metrics.jsonl"
    if not isinstance(val, dict):
        if metrics.get("val_loss") is None:
            return None
        skills = {s: {"loss": v} for s, v in (metrics.get("val_loss_by_skill") or {}).items()}
        val = {"loss": metrics["val_loss"], "skills": skills}
    keys = ("loss", "floor", "excess", "tokens")
    return {"source": source, **{k: val.get(k) for k in keys},
            "skills": {s: {k: v.get(k) for k in keys} for s, v in (val.get("skills") or {}).items()}}


def _probes(result: dict | None) -> dict[str, dict[str, Any]]:
    """Multiple-choice accuracy of every probe suite in the eval file, by family."""
    out = {}
    for family in ("probes", "world_probes"):
        for suite, r in ((result or {}).get(family) or {}).items():
            mc = r.get("mc") or {}
            out[f"{family}/{suite}"] = {"acc": mc.get("acc"), "lo": mc.get("lo"), "hi": mc.get("hi"),
                                        "n": mc.get("n"), "chance": r.get("chance"), "untrained": r.get("no_skill"),
                                        "trigram": r.get("trigram")}
    return out


def card_facts(run_dir: str | Path, step: int) -> dict[str, Any]:
    """Everything the card states, read from the run's files (None: the run does not have it)."""
    run_dir = Path(run_dir)
    info = runs.read_run(run_dir)
    metrics = _metrics_at(run_dir, step)
    result = runs.read_evals(run_dir).get(step)
    params = info.get("params") or {}
    model = info["model"]
    return {
        "run": str(run_dir.resolve()), "step": step,
        "architecture": {"family": model.get("family"), "d_model": model.get("d_model"),
                         "n_layers": model.get("n_layers"), "n_heads": model.get("n_heads"),
                         "vocab_size": model.get("vocab_size"), "context": runs.trained_context(info, run_dir),
                         "tie_embeddings": model.get("tie_embeddings")},
        "params": {"total": params.get("total"), "non_embedding": params.get("non_embedding")},
        "training": {"tokens": metrics.get("tokens", (result or {}).get("tokens_seen")),
                     "flops": metrics.get("flops"), "flops_per_token": info.get("flops_per_token")},
        "code": info.get("code"),
        "data": _data(info),
        "validation": _validation(result, metrics),
        "probes": _probes(result),
    }


def _n(x: Any, fmt: str = ",") -> str:
    return MISSING if x is None else format(x, fmt)


def _architecture(f: dict[str, Any]) -> list[str]:
    a, p, t = f["architecture"], f["params"], f["training"]
    rows = [("family", f"{a['family']} ({HF_ARCH.get(a['family'], '?')} in transformers)"),
            ("d_model", _n(a["d_model"])), ("layers", _n(a["n_layers"])), ("heads", _n(a["n_heads"])),
            ("context (tokens, as trained)", _n(a["context"])), ("vocabulary", _n(a["vocab_size"])),
            ("tied embeddings", str(a["tie_embeddings"]).lower()),
            ("parameters", _n(p["total"])), ("parameters without embeddings", _n(p["non_embedding"])),
            ("training tokens (at this checkpoint)", _n(t["tokens"])),
            ("training FLOPs (at this checkpoint)", _n(t["flops"], ".4g")),
            ("FLOPs per token", _n(t["flops_per_token"], ".4g"))]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _data_lines(f: dict[str, Any]) -> list[str]:
    d = f["data"]
    card = f"`{d['card']}`" if d["card"] else f"{MISSING} (the corpus folder has no README.md)"
    return [f"- shards: `{d['dir'] or MISSING}`", f"- corpus: `{d['corpus'] or MISSING}`", f"- dataset card: {card}",
            f"- corpus sha256: `{d['corpus_sha256'] or MISSING}`",
            f"- tokenizer sha256: `{d['tokenizer_sha256'] or MISSING}`"]


def _loss_lines(f: dict[str, Any]) -> list[str]:
    v = f["validation"]
    if v is None:
        return [f"Validation loss: {MISSING} (no eval file and no validation line in metrics.jsonl at step "
                f"{f['step']}; run `tinyscale eval`)."]
    where = f"eval/{f['step']}.json" if v["source"] == "eval" else "metrics.jsonl"
    rows = [("all", v), *v["skills"].items()]
    return [f"Natural-log loss per token on the validation split ({where}); floor: the generator's true "
            "surprisal where the corpus labels it, excess = loss - floor.", "",
            "| skill | tokens | loss | floor | excess |", "|---|---|---|---|---|",
            *(f"| {s} | {_n(r['tokens'])} | {_n(r['loss'], '.4f')} | {_n(r['floor'], '.4f')} | "
              f"{_n(r['excess'], '.4f')} |" for s, r in rows)]


def _probe_lines(f: dict[str, Any]) -> list[str]:
    if not f["probes"]:
        return [f"Probe accuracies: {MISSING} (no eval file at step {f['step']}; run `tinyscale eval`)."]
    return ["Multiple-choice accuracy with its 95% Wilson interval (eval file):", "",
            "| suite | accuracy | interval | items | chance | untrained model | corpus trigram |",
            "|---|---|---|---|---|---|---|",
            *(f"| {s} | {_n(r['acc'], '.3f')} | {_n(r['lo'], '.3f')}-{_n(r['hi'], '.3f')} | {_n(r['n'])} | "
              f"{_n(r['chance'], '.3f')} | {_n(r.get('untrained'), '.3f')} | {_n(r.get('trigram'), '.3f')} |"
              for s, r in f["probes"].items()),
            "", "An untrained model scores the options of fewest tokens highest (a summed log-probability), so "
            "its accuracy, not chance, is where a model without the skill sits. The corpus trigram picks by the "
            "same sum from the two tokens before each one: above it, a model uses more than local statistics."]


def _usage(f: dict[str, Any], out: str) -> list[str]:
    run, name = f["run"], Path(f["run"]).name
    return [
        "With transformers:", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'tok = AutoTokenizer.from_pretrained("{out}")', f'model = AutoModelForCausalLM.from_pretrained("{out}")',
        'ids = tok("Once upon a time", return_tensors="pt").input_ids',
        "print(tok.decode(model.generate(ids, max_new_tokens=64, do_sample=True)[0]))", "```", "",
        f"Keep prompt + completion within the trained context ({_n(f['architecture']['context'])} tokens).", "",
        "With llama.cpp or ollama, from a GGUF export of the same run:", "", "```bash",
        f"tinyscale export {run} --format gguf --dtype q8_0 --out {out}-gguf",
        f'llama-cli -m {out}-gguf/*.gguf -p "Once upon a time" -n 64',
        f"printf 'FROM %s\\n' {out}-gguf/*.gguf > Modelfile && ollama create {name} -f Modelfile "
        f'&& ollama run {name} "Once upon a time"', "```", "",
        "With tinyscale's own OpenAI-compatible server (from the run folder):", "", "```bash",
        f"tinyscale serve {run} --port 8000",
        "curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\",
        f"  -d '{{\"model\": \"{name}\", \"prompt\": \"Once upon a time\", \"max_tokens\": 40}}'", "```"]


def _eval_results(f: dict[str, Any], corpus: str) -> list:
    from huggingface_hub import EvalResult

    def result(metric: str, name: str, value: float, split: str = "val") -> EvalResult:
        return EvalResult(task_type="text-generation", dataset_type="tinyscale-corpus", dataset_name=corpus,
                          dataset_split=split, metric_type=metric, metric_name=name, metric_value=value)

    out = []
    v = f["validation"] or {"skills": {}}
    for skill, r in [("all", v), *v["skills"].items()]:
        if r.get("loss") is not None:
            out.append(result("loss", f"validation loss ({skill})", r["loss"]))
    for suite, r in f["probes"].items():
        if r["acc"] is not None:
            out.append(result("accuracy", f"{suite} accuracy", r["acc"], "probes"))
    return out


def write_model_card(run_dir: str | Path, folder: str | Path, step: int, shown_as: str | Path) -> Path:
    """Write `folder`/README.md for the export of `run_dir`'s checkpoint `step`; `shown_as`: the
    export folder's path in the usage examples (the final one, when `folder` is a staging folder)."""
    from huggingface_hub import ModelCard, ModelCardData

    f = card_facts(run_dir, step)
    name, corpus = Path(f["run"]).name, Path(f["data"]["corpus"] or "corpus").name
    data = ModelCardData(language=["en"], license=f["data"]["license"] or "other", library_name="transformers",
                         pipeline_tag="text-generation", tags=["tinyscale", str(f["architecture"]["family"])],
                         model_name=name, eval_results=_eval_results(f, corpus) or None, tinyscale=f)
    licence = (f"{f['data']['license']}, as the dataset card of the training corpus says." if f["data"]["license"]
               else "Not decided here (the training corpus has no dataset card): choose one before sharing.")
    body = [f"# {name}", "",
            f"A {f['architecture']['family']} language model trained with tinyscale; checkpoint at step {step} "
            f"of `{f['run']}`.", "", "## Architecture and training", "", *_architecture(f), "",
            "## Training data", "", *_data_lines(f), "", "## Validation loss", "", *_loss_lines(f), "",
            "## Probes", "", *_probe_lines(f), "", "## Licence", "", licence, "", "## How to use", "",
            *_usage(f, str(shown_as)), ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))
    path = Path(folder) / "README.md"
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(str(card))
    return path
