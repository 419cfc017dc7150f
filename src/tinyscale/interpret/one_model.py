"""One model read against the story world's ground truth: neurons, heads, and their controls.

`analyze_model` streams M validation stories through a model once (MLP activations of the chosen
layers into per-neuron top-k lists, attention patterns of the first stories into head statistics),
mean-ablates each head on the first stories (`ablation`), and does the same for a
random-initialised model of the same shape, the control.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyscale import progress, runs
from tinyscale.data.corpus import split_file
from tinyscale.errors import UserError
from tinyscale.fileio import read_json
from tinyscale.generate import eot_id_of
from tinyscale.interpret.ablation import ablate_heads, story_batches
from tinyscale.interpret.heads import METRICS, HeadStats
from tinyscale.interpret.hooks import pad, recording
from tinyscale.interpret.neurons import (
    NeuronLabels,
    StreamingTopK,
    TagCounts,
    TokenStrata,
    against_twin,
    label_neurons,
)
from tinyscale.interpret.tags import TAGS, TaggedStory, corpus_has, read_stories
from tinyscale.model import Transformer

BATCH = 8


@dataclass
class Options:
    layers: Sequence[int] | None = None  # default: the next-to-last layer
    stories: int = 1000  # validation stories streamed for the neurons
    top_k: int = 20
    head_stories: int = 64  # stories whose attention patterns make the head statistics
    seed: int = 0  # of the random-init control and the shuffled draws
    control: bool = True
    ablate_stories: int = 128  # stories for the head ablations (0: none)
    boot: int = 1000  # bootstrap resamples of the ablation intervals
    window: int | None = None  # ablations read each story's first `window` tokens (the training length)
    patch: bool = False  # activation patching on the story world's minimal pairs (`patching`)
    patch_pairs: int = 128  # aligned pairs patched
    patch_seed: int = 1  # the story-world seed the pairs are written with (not the corpus's: unseen stories)
    patch_kinds: Sequence[str] | None = None  # kinds of pairs (`data.world.pairs.KINDS`; default all, in turn)


def load_run_model(run_dir: Path, step: int | None) -> tuple[Transformer, int, Any, int]:
    """Model, step, tokenizer and end-of-text id of a run's checkpoint (the last one by default)."""
    model, step = runs.load_model(run_dir, step)
    tokenizer = runs.load_tokenizer(run_dir)
    eot = eot_id_of(tokenizer)
    if eot is None:
        raise UserError(f"{run_dir / 'tokenizer.json'}: no end-of-text token")
    return model, step, tokenizer, eot


def default_layers(model: Transformer) -> list[int]:
    return [max(model.cfg.n_layers - 2, 0)]


def val_corpus(run_dir: str | Path, corpus: str | Path | None = None) -> Path:
    """The validation split the run's shards were made from (or `corpus`'s val split, or the file `corpus`)."""
    if corpus is not None:
        path = Path(corpus)
        return (split_file(path, "val") or path / "val.jsonl") if path.is_dir() else path
    info = read_json(Path(run_dir) / "run.json")
    data = (info.get("data") or {}).get("dir")
    meta = Path(data) / "meta.json" if data else None
    if meta is None or not meta.is_file():
        raise UserError(f"{run_dir}: cannot find the run's shards (run.json data.dir); give --corpus")
    src = read_json(meta).get("corpus")
    found = split_file(src, "val") if src and Path(src).is_dir() else None
    if found is None:
        raise UserError(f"{meta}: the corpus it was made from ({src}) has no val.jsonl; give --corpus")
    return found


def with_window(opts: Options, run_dir: str | Path) -> Options:
    """`opts` with the ablation window set to the run's training sequence length (run.json), if
    not given."""
    if opts.window is not None or not (Path(run_dir) / "run.json").is_file():
        return opts
    seq_len = (read_json(Path(run_dir) / "run.json").get("config") or {}).get("seq_len")
    return replace(opts, window=int(seq_len)) if seq_len else opts


def random_init(model: Transformer, seed: int) -> Transformer:
    """A freshly initialised model of the same shape: what the statistics give without training."""
    torch.manual_seed(seed)
    return Transformer(model.cfg).eval()


class _Stream:
    """Top-k per neuron and head statistics for one model over the stories streamed to it."""

    def __init__(self, model: Transformer, layers: Sequence[int], top_k: int) -> None:
        self.model, self.layers = model, list(layers)
        n = model.cfg.ffn_dim
        self.top = {layer: StreamingTopK(n, top_k) for layer in self.layers}
        self.heads = [HeadStats.zeros(model.cfg.n_heads) for _ in range(model.cfg.n_layers)]

    @torch.no_grad()
    def add(self, batch: list[TaggedStory], with_heads: bool, stride: int) -> None:
        names = [f"blocks.{layer}.mlp.act" for layer in self.layers]
        if with_heads:
            names += [f"blocks.{layer}.attn.pattern" for layer in range(self.model.cfg.n_layers)]
        ids, lengths = pad([s.ids for s in batch])
        with recording(self.model, names) as acts:
            self.model(ids)
        # Every real token but the end-of-text one in front of each story.
        keep = torch.zeros(ids.shape, dtype=torch.bool)
        for j, n in enumerate(lengths):
            keep[j, 1:n] = True
        keys = torch.tensor([s.number * stride for s in batch])[:, None] + torch.arange(ids.shape[1])[None, :]
        tags = torch.zeros(ids.shape, dtype=torch.long)
        for j, s in enumerate(batch):
            tags[j, :len(s.tags)] = torch.from_numpy(s.tags)
        for layer in self.layers:
            a = acts[f"blocks.{layer}.mlp.act"]
            self.top[layer].update(a[keep], keys[keep], tags[keep], ids[keep])
        if with_heads:
            for layer in range(self.model.cfg.n_layers):
                pat = acts[f"blocks.{layer}.attn.pattern"]
                for j, s in enumerate(batch):
                    self.heads[layer].add(pat[j], torch.from_numpy(s.entity), lengths[j])


def _batches(stories: Iterator[TaggedStory], size: int) -> Iterator[list[TaggedStory]]:
    batch: list[TaggedStory] = []
    for s in stories:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class Streamed:
    streams: list[_Stream]
    counts: TagCounts  # base rates
    strata: TokenStrata  # tags per token id and position, for the within-token test
    kept: list[TaggedStory]  # the first stories, for the ablations (the first one also for heatmaps)
    read: int


def stream(models: Sequence[Transformer], path: Path, tokenizer: Any, eot_id: int, opts: Options,
           layers: Sequence[int]) -> Streamed:
    """Stream the first `opts.stories` stories through every model."""
    max_len = models[0].cfg.max_seq_len
    # The twin streams every layer: all its neurons are the null of the trained model's (`neurons`).
    streams = [_Stream(m, layers if i == 0 else range(m.cfg.n_layers), opts.top_k) for i, m in enumerate(models)]
    counts, strata = TagCounts(seed=opts.seed), TokenStrata()
    kept: list[TaggedStory] = []
    read = 0
    with progress.bar(opts.stories, "interpret") as bar:
        for batch in _batches(read_stories(path, opts.stories, tokenizer, eot_id, max_len), BATCH):
            kept += batch[:max(opts.ablate_stories, 1) - len(kept)]
            for s in batch:
                counts.add(s.tags[1:])
                strata.add(np.asarray(s.ids[1:]), np.arange(1, len(s.ids)), s.tags[1:])
            with_heads = read < opts.head_stories
            for st in streams:
                st.add(batch, with_heads, max_len)
            read += len(batch)
            bar.update(len(batch))
    if read == 0:
        raise UserError(f"{path}: no stories to read")
    return Streamed(streams, counts, strata, kept, read)


def neuron_rows(st: _Stream, layer: int, labels: NeuronLabels, stride: int) -> list[dict]:
    """One JSON row per neuron of a layer, in neuron order."""
    top = st.top[layer]
    rows = []
    for n in range(top.values.shape[0]):
        keys = top.keys[n].tolist()
        rows.append({
            "layer": layer, "neuron": n, "max_act": float(labels.max_act[n]), "label": labels.label[n],
            "share": float(labels.share[n]), "base": float(labels.base[n]),
            "selectivity": _f(labels.selectivity[n]), "p_value": float(labels.p_value[n]),
            "significant": bool(labels.significant[n]), "context_tag": labels.context_tag[n],
            "z": float(labels.z[n]), "p_perm": float(labels.p_perm[n]),
            "significant_perm": bool(labels.significant_perm[n]),
            "p_iid": float(labels.p_iid[n]), "significant_iid": bool(labels.significant_iid[n]),
            "distinct_tokens": len(set(top.ids[n].tolist())),
            "top": [[k // stride, k % stride, round(float(v), 5), t] for k, v, t in
                    zip(keys, top.values[n].tolist(), top.ids[n].tolist(), strict=True)],
        })
    return rows


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def summarize(rows: list[dict], labels: list[NeuronLabels]) -> dict:
    sel = np.array([r["selectivity"] for r in rows if r["selectivity"] is not None], dtype=float)
    null = np.concatenate([lab.null for lab in labels]) if labels else np.zeros(0)
    by_tag = np.concatenate([lab.by_tag for lab in labels]).max(0) if labels else np.zeros(0)
    return {
        # The best selectivity any neuron reaches for each tag, whether or not it is its label:
        # what a label's selectivity is compared with in the control.
        "best_by_tag": {t: _f(v) for t, v in zip(TAGS, by_tag, strict=True) if np.isfinite(v)},
        "neurons": len(rows),
        "mean_selectivity": float(sel.mean()) if len(sel) else None,
        "best_selectivity": float(sel.max()) if len(sel) else None,
        # Against the twin and within-token (see neurons.py), within-token alone, token-blind (old).
        "significant": int(sum(r["significant"] for r in rows)),
        "significant_perm": int(sum(r["significant_perm"] for r in rows)),
        "significant_iid": int(sum(r["significant_iid"] for r in rows)),
        "shuffled_p99": float(np.nanpercentile(null, 99)) if len(null) and not np.isnan(null).all() else None,
    }


def head_rows(st: _Stream) -> list[dict]:
    return [{"layer": layer, "head": h, **{m: _f(row[m]) for m in METRICS}, "class": row["class"]}
            for layer, stats in enumerate(st.heads) for h, row in enumerate(stats.result())]


def class_counts(heads: list[dict]) -> dict[str, int]:
    out = {c: 0 for c in ("local", "semantic", "mixed", "diffuse")}
    for h in heads:
        out[h["class"]] += 1
    return out


def _ablation(model: Transformer, batches: list, opts: Options, name: str) -> dict | None:
    if not batches:
        return None
    out = ablate_heads(model, batches, boot=opts.boot, seed=opts.seed, label=f"ablate {name}")
    return out | {"window": opts.window}


def analyze_model(model: Transformer, path: Path, tokenizer: Any, eot_id: int, opts: Options) -> dict:
    """The numbers of one model (and of its random-init control): JSON-ready, plus the first story."""
    layers = list(opts.layers) if opts.layers else default_layers(model)
    for layer in layers:
        if not 0 <= layer < model.cfg.n_layers:
            raise UserError(f"--layers: {layer} is not a layer of this model (0..{model.cfg.n_layers - 1})")
    models = [model] + ([random_init(model, opts.seed)] if opts.control else [])
    got = stream(models, path, tokenizer, eot_id, opts, layers)
    stride = model.cfg.max_seq_len
    out: dict[str, Any] = {"layers": layers, "stories": got.read, "top_k": opts.top_k,
                           "head_stories": min(got.read, opts.head_stories), "tokens": got.counts.total,
                           "base_rates": {t: float(b) for t, b in zip(TAGS, got.counts.base(), strict=True)},
                           "tags": {"skills": corpus_has(path, "spans"), "roles": corpus_has(path, "tags")}}
    batches = story_batches(got.kept[:opts.ablate_stories], BATCH, opts.window) if opts.ablate_stories else []
    labels = [{layer: label_neurons(st.top[layer], got.counts, seed=opts.seed, strata=got.strata,
                                    positions=(st.top[layer].keys % stride).numpy()) for layer in st.layers}
              for st in got.streams]
    if len(labels) > 1:  # the trained model's neurons against every neuron of its twin
        null_z = np.concatenate([lab.z for lab in labels[1].values()])
        for lab in labels[0].values():
            against_twin(lab, null_z)
    for name, st, by_layer in zip(("model", "control"), got.streams, labels, strict=False):
        labs = [by_layer[layer] for layer in layers]
        rows = [r for layer, lab in zip(layers, labs, strict=True) for r in neuron_rows(st, layer, lab, stride)]
        heads = head_rows(st)
        summary = summarize(rows, labs)
        if name == "control":  # a twin is not tested against itself
            summary["significant"] = None
        out[name] = {"summary": summary, "neurons": rows, "heads": heads,
                     "head_classes": class_counts(heads),
                     "ablation": _ablation(st.model, batches, opts, name)}
    out["first_story"] = got.kept[0] if got.kept else None
    return out
