"""`tinyscale interpret RUN_OR_SWEEP`: the page and its numbers for a run (or a sweep's models)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

from tinyscale import progress
from tinyscale.errors import UserError
from tinyscale.fileio import write_json
from tinyscale.interpret import heads as heads_mod
from tinyscale.interpret import page, scores_figure
from tinyscale.interpret.across_sizes import analyze_sizes, is_sweep
from tinyscale.interpret.one_model import Options, analyze_model, load_run_model, val_corpus, with_window
from tinyscale.interpret.patching_figure import patching_context
from tinyscale.interpret.sizes_figure import sizes_figure, sizes_table
from tinyscale.validate import check_output, json_with, text_with

TITLE = "tinyscale interpret:"  # how the page's <title> starts: what marks a page as interpret's own
SECTIONS = [("summary", "Summary"), ("neurons", "Most selective neurons"), ("all-neurons", "All neurons"),
            ("heads", "Attention heads"), ("ablation", "Head ablations"), ("patching", "Patching"),
            ("sizes", "Across sizes"), ("head-scores", "Head scores over training")]


def interpret(path: str | Path, out: str | Path | None = None, *, step: int | None = None,
              opts: Options | None = None, corpus: str | Path | None = None, show: int = 24,
              heads: bool = False) -> Path:
    """Write OUT.html and OUT.json (default: PATH/interpret.html) for a run or a sweep folder;
    return the HTML's path. On a sweep, every model is summarised (`across_sizes`) and the largest one
    is shown in detail. `heads`: also the head scores at every kept checkpoint (`over_training`)."""
    path, opts = Path(path), opts or Options()
    out = Path(out) if out else path / "interpret.html"
    if out.suffix != ".html":
        raise UserError(f"--out: {out} must end in .html (the numbers go beside it as .json)")
    check_out(out, corpus)
    sizes, done = None, {}
    run_dir = path
    if is_sweep(path):
        sizes = analyze_sizes(path, opts, step=step, corpus=corpus, keep=done)
        run_dir = Path(max(sizes, key=lambda r: r["non_embedding_params"] or 0)["dir"])
    model, step, tokenizer, eot = load_run_model(run_dir, step)
    val = val_corpus(run_dir, corpus)
    progress.info("interpret: %s step %d on %s", run_dir, step, val)
    data = done.get(str(run_dir)) or analyze_model(model, val, tokenizer, eot, with_window(opts, run_dir))
    first = data.pop("first_story")
    if opts.patch:
        data["patching"] = patch_run(model, tokenizer, eot, with_window(opts, run_dir))
    data |= {"run": str(run_dir), "step": step, "corpus": str(val), "model_config": model.cfg.model_dump()}
    if sizes is not None:
        data["sizes"] = sizes
    if heads:
        from tinyscale.interpret.over_training import scores

        data["head_scores"] = scores(path, corpus, stories=opts.head_stories, seed=opts.seed)
    write_json(out.with_suffix(".json"), data)
    context = _page_context(data, model, val, tokenizer, eot, first, show, run_dir, sizes)
    context |= scores_figure.page_context(data.get("head_scores"), model, val, tokenizer, eot, run_dir.name)
    return page.render(context, out)


def patch_run(model: Any, tokenizer: Any, eot: int, opts: Options) -> dict:
    """`--patch`: activation patching on minimal pairs, the random-init twin as the control."""
    from tinyscale.interpret.one_model import random_init
    from tinyscale.interpret.patching import run_patching

    twin = random_init(model, opts.seed) if opts.control else None
    return run_patching(model, twin, tokenizer, eot, pairs=opts.patch_pairs, seed=opts.patch_seed,
                        window=opts.window, boot=opts.boot, kinds=opts.patch_kinds)


def check_out(out: Path, corpus: str | Path | None) -> None:
    """The page and the JSON beside it replace only files that interpret wrote (never RUN/run.json or
    SHARDS/meta.json), and are never a corpus file given with --corpus."""
    inputs = {"corpus file": corpus if corpus and Path(corpus).is_file() else None}
    check_output(out, inputs, file=True, ours=text_with(f"<title>{TITLE}"), what="a page written by tinyscale interpret")
    check_output(out.with_suffix(".json"), inputs, file=True, ours=json_with("run", "step", "model_config", "layers"),
                 what="the numbers of a tinyscale interpret page (written beside the .html)")


def _page_context(data: dict, model: Any, val: Path, tokenizer: Any, eot: int, first: Any, show: int,
                  run_dir: Path, sizes: list[dict] | None) -> dict:
    rows = data["model"]["neurons"]
    # Equal selectivity: more distinct tokens first (a role across words says more than one token).
    by_sel = sorted(rows, key=lambda r: (r["selectivity"] is None, -round(r["selectivity"] or 0, 2),
                                         -r["distinct_tokens"], -r["max_act"]))
    shown = [dict(r) for r in by_sel[:show]]
    ctx = page.contexts(model, val, tokenizer, eot, shown, data["stories"])
    for r in shown:
        r["contexts"] = ctx.get((r["layer"], r["neuron"]), [])
    ranked = [{**r, "words": [tokenizer.decode([t[3]]) for t in r["top"][:8]]}
              for r in sorted(rows, key=lambda r: -r["max_act"])]
    sizes_png, header, table = None, [], []
    if sizes:
        png = sizes_figure(sizes)
        sizes_png = page.b64(png) if png else None
        header, table = sizes_table(sizes)
    best = data["model"]["summary"]["best_by_tag"]
    control = (data.get("control") or {}).get("summary", {}).get("best_by_tag", {})
    tag_rows = [{"tag": t, "base": data["base_rates"][t], "best": best.get(t), "control": control.get(t),
                 "labelled": sum(r["label"] == t for r in rows)} for t in best]
    return {
        **ablation_context(data["model"].get("ablation"), (data.get("control") or {}).get("ablation")),
        **patching_context(data.get("patching")),
        "tag_rows": tag_rows,
        "title": f"{TITLE} {run_dir.name} (step {data['step']})",
        "subtitle": f"{run_dir} · corpus {val} · generated {_dt.datetime.now().isoformat(timespec='seconds')}",
        "sections": SECTIONS, "layers": data["layers"], "stories": data["stories"], "tokens": data["tokens"],
        "top_k": data["top_k"], "head_stories": data["head_stories"], "tags": data["tags"],
        "model": data["model"], "control": data.get("control"), "shown": shown, "ranked": ranked,
        "heatmaps": page.heatmaps(model, first, data["model"]["heads"]) if first else [],
        "local_window": heads_mod.LOCAL_WINDOW, "local_min": heads_mod.LOCAL_MIN, "lift_min": heads_mod.LIFT_MIN,
        "heatmap_tokens": page.HEATMAP_TOKENS, "sizes_png": sizes_png, "sizes_header": header, "sizes_rows": table,
    }


def ablation_context(model: dict | None, control: dict | None) -> dict:
    """The ablation section's tables: per skill the heads that move it most (trained and twin side
    by side), and every head's change per skill."""
    if not model:
        return {"ablation": None}
    skills = [s for s in model["skills"] if model["tokens"][s]]
    per_skill = [{"skill": s, "tokens": model["tokens"][s], "clean": model["clean_loss"][s],
                  "clean_control": control["clean_loss"][s] if control else None,
                  "model": model["top"][s], "control": control["top"][s] if control else []} for s in skills]
    twin = {(h["layer"], h["head"]): h["delta"] for h in control["heads"]} if control else {}
    heads = [{"layer": h["layer"], "head": h["head"], "model": [h["delta"][s] for s in skills],
              "control": [twin[(h["layer"], h["head"])][s] for s in skills] if twin else []}
             for h in model["heads"]]
    return {"ablation": {"stories": model["stories"], "boot": model["boot"], "skills": skills,
                         "window": model.get("window"),
                         "per_skill": per_skill, "heads": heads}}
