"""The analysis of a hand-made sweep folder, the CSV path, and the HTML report with all its sections."""

import base64
import json
import math
import re
from pathlib import Path

import pytest

from tinyscale.analysis.analyze import analyze_csv, analyze_sweep
from tinyscale.analysis.collect import collect_sweep
from tinyscale.analysis.report import SECTIONS, build_report
from tinyscale.cli import main
from tinyscale.errors import UserError

VOCAB, PER_STEP, STEPS = 512, 1024, (0, 20, 40, 60, 80, 100)
SHAPES = [(32, 1), (32, 3), (64, 1), (64, 3)]  # width x depth; four distinct sizes
SKILLS = {"grammar": 0.5, "fact": 1.3, "reasoning": 1.1, "tracking": 1.2, "other": 0.9}


def _loss(n: float, d: float) -> float:
    return 1.5 + 40.0 / n**0.3 + 60.0 / d**0.3 if d else math.log(VOCAB)


def _rate(acc: float, n: int = 40) -> dict:
    se = math.sqrt(max(acc * (1 - acc), 0.01) / n)
    return {"acc": acc, "k": round(acc * n), "n": n, "lo": max(0.0, acc - 1.96 * se), "hi": min(1.0, acc + 1.96 * se)}


def _probes(rank: int) -> dict:
    """Accuracy by size rank 0..3: grammar rises smoothly, reasoning jumps at the largest two."""
    mc = {"grammar": 0.55 + 0.12 * rank, "facts": 0.4 + 0.1 * rank,
          "reasoning": [0.5, 0.5, 0.85, 0.95][rank], "tracking": [0.52, 0.49, 0.5, 0.51][rank]}
    out = {}
    for suite, acc in mc.items():
        ps = [min(0.95, acc * 0.6 + 0.01 * i) for i in range(10)]
        out[suite] = {"n": 40, "chance": 0.5, "mc": _rate(acc), "exact": _rate(max(0.0, acc - 0.45)),
                      "p_answer": sum(ps) / len(ps), "items": [{"id": f"{suite}-{i}", "p": p} for i, p in enumerate(ps)]}
    return out


def make_sweep(root: Path, sweep_json: bool = True) -> Path:
    """A sweep folder of four tiny fake runs: run.json, metrics.jsonl and eval/<step>.json by hand."""
    sweep = root / "sweep"
    for rank, (width, depth) in enumerate(SHAPES):
        name = f"d{width}-l{depth}"
        run = sweep / "runs" / name
        (run / "eval").mkdir(parents=True)
        non_emb = 12 * width * width * depth
        total = non_emb + VOCAB * width
        (run / "run.json").write_text(json.dumps({
            "config": {"d_model": width, "n_layers": depth, "seq_len": 64},
            "model": {"family": "llama", "vocab_size": VOCAB, "d_model": width, "n_layers": depth, "n_heads": 2},
            "params": {"total": total, "non_embedding": non_emb}, "flops_per_token": 6 * total, "data": {}}))
        lines = []
        for step in STEPS:
            tokens = step * PER_STEP
            loss = _loss(non_emb, tokens)
            lines.append({"step": step, "tokens": tokens, "flops": 6.0 * total * tokens, "lr": 1e-3, "loss": loss})
            lines.append({"step": step, "tokens": tokens, "flops": 6.0 * total * tokens, "val_loss": loss,
                          "val_loss_by_skill": {s: loss * f for s, f in SKILLS.items()},
                          "val_tokens_by_skill": {s: 2000 for s in SKILLS}})
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        last = STEPS[-1]
        loss = _loss(non_emb, last * PER_STEP)
        (run / "eval" / f"{last}.json").write_text(json.dumps({
            "format": 1, "step": last,
            "loss": {"val": {"tokens": 10000, "loss": loss,
                             "skills": {s: {"tokens": 2000, "loss": loss * f} for s, f in SKILLS.items()}}},
            "probes": _probes(rank),
            "completions": [{"id": "val-3", "prompt": "Once upon a time, Tom & Mia <went>",
                             "ending": " to the park.", "completions": [f" to the park{'!' * rank}", " home."]},
                            {"id": "val-7", "prompt": "Lily saw a cat.", "ending": " It was red.",
                             "completions": [f" It ran away ({name})."]}]}))
    if sweep_json:
        (sweep / "sweep.json").write_text(json.dumps({"data": "shards", "launcher": "local", "runs": [
            {"name": f"d{w}-l{d}", "options": {}, "commands": [f"tinyscale -q train --d-model {w} --n-layers {d}",
                                                              f"tinyscale -q eval sweep/runs/d{w}-l{d}"]}
            for w, d in SHAPES]}))
    return sweep


def test_collect_reads_metrics_and_eval(tmp_path):
    recs = collect_sweep(make_sweep(tmp_path))
    assert len(recs) == len(SHAPES) * len(STEPS)
    finals = [r for r in recs if r["final"]]
    assert len(finals) == 4 and all(r["step"] == 100 for r in finals)
    big = max(finals, key=lambda r: r["params"])
    assert big["width"] == 64 and big["depth"] == 3
    assert big["probes"]["reasoning"]["mc"] == pytest.approx(0.95)
    assert 0 < big["probes"]["reasoning"]["prob_se"] < 0.1
    assert set(big["skill_loss"]) == set(SKILLS)


def test_analyze_sweep_writes_json_with_fits_and_taxonomy(tmp_path):
    sweep = make_sweep(tmp_path)
    result = analyze_sweep(sweep, n_boot=20)
    on_disk = json.loads((sweep / "analysis.json").read_text())
    assert on_disk["n_runs"] == 4
    fits = result["fits"]
    # The runs follow a known law in N at fixed D: the fitted exponent must come out close.
    assert fits["L(N)"]["params"]["alpha"] == pytest.approx(0.3, rel=0.1)
    assert fits["L(N,D)"]["params"]["beta"] == pytest.approx(0.3, rel=0.1)
    assert fits["frontier"]["method"] in ("isoflop", "parametric")
    table = {(r["curve"], r["axis"]): r["metrics"] for r in result["taxonomy"]}
    assert table[("reasoning", "size")]["mc"]["label"] == "emergent"
    assert table[("grammar", "size")]["mc"]["label"] == "smooth_crossing"  # from chance (0.55 +- 0.08), on trend
    assert table[("tracking", "size")]["mc"]["label"] == "flat"
    assert table[("all", "size")]["loss"]["label"] == "smooth"


def test_report_has_every_section_and_embedded_images(tmp_path):
    sweep = make_sweep(tmp_path)
    out = build_report(sweep, n_boot=10)
    page = out.read_text()
    for key, title in SECTIONS:
        assert f'<section id="{key}"><h2>{title}</h2>' in page
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    for name in ("learning_curves", "skill_losses", "probes", "heatmap"):
        assert (sweep / "plots" / f"{name}.png").stat().st_size > 1000
    assert "Tom &amp; Mia &lt;went&gt;" in page  # story text is escaped
    assert "It ran away (d64-l3)." in page  # every model's completion is shown
    assert "tinyscale -q train --d-model 64 --n-layers 3" in page  # commands from sweep.json
    assert "emergent" in page and "no data" not in page.lower()


def test_report_cli_without_probes_or_sweep_json_says_so(tmp_path, capsys):
    sweep = make_sweep(tmp_path, sweep_json=False)
    for run in (sweep / "runs").iterdir():
        for f in (run / "eval").iterdir():
            f.unlink()
    assert main(["-q", "report", str(sweep), "--n-boot", "5"]) == 0
    assert str(sweep / "report.html") in capsys.readouterr().out
    page = (sweep / "report.html").read_text()
    assert "No probe results" in page and "No story completions" in page and "No sweep.json" in page
    assert 'id="taxonomy"' in page and (sweep / "analysis.json").is_file()


def test_analyze_cli_prints_fits_and_rejects_bad_input(tmp_path, capsys):
    sweep = make_sweep(tmp_path)
    assert main(["-q", "analyze", str(sweep), "--n-boot", "10", "--out", str(tmp_path / "copy.json")]) == 0
    out = capsys.readouterr().out
    assert "L(N)" in out and "emergent" in out
    assert json.loads((tmp_path / "copy.json").read_text()) == json.loads((sweep / "analysis.json").read_text())
    assert main(["-q", "report", str(tmp_path / "missing")]) == 2
    assert main(["-q", "report", str(sweep), "--metric", "accuracy"]) == 2
    assert main(["-q", "analyze"]) == 2
    assert "sweep folder not found" in capsys.readouterr().err


def _write_csv(path: Path, rows: list[list]) -> Path:
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def test_csv_fits_and_tasks(tmp_path):
    rows = [["N", "D", "L", "task", "acc"]]
    for n in (1e6, 3e6, 1e7, 3e7, 1e8):
        for d in (1e8, 1e9, 1e10):
            rows.append([n, d, 1.7 + 400 / n**0.34 + 400 / d**0.28, "t1", 0.25 if n < 1e7 else 0.9])
    path = _write_csv(tmp_path / "pub.csv", rows)
    out = analyze_csv(path, params_col="N", tokens_col="D", loss_col="L", task_col="task", x_col="N",
                      metric_col="acc", chance=0.25, n_boot=10)
    assert out["fits"]["L(N,D)"]["params"]["alpha"] == pytest.approx(0.34, rel=0.1)
    assert out["tasks"][0]["label"] == "emergent"
    assert main(["-q", "analyze", "--csv", str(path), "--params-col", "N", "--tokens-col", "D", "--loss-col", "L",
                 "--n-boot", "5", "--out", str(tmp_path / "fit.json")]) == 0
    assert "alpha" in json.loads((tmp_path / "fit.json").read_text())["fits"]["L(N,D)"]["params"]


def test_csv_bad_cell_and_missing_column_name_the_place(tmp_path, capsys):
    path = _write_csv(tmp_path / "bad.csv", [["N", "L"], [1e6, 3.0], [2e6, "n/a"], [4e6, 2.5]])
    with pytest.raises(UserError, match=r"line 3, column 'L': 'n/a' is not a number"):
        analyze_csv(path, params_col="N", loss_col="L")
    with pytest.raises(UserError, match="no column 'D'"):
        analyze_csv(path, params_col="N", loss_col="L", tokens_col="D")
    assert main(["analyze", "--csv", str(path), "--params-col", "N", "--loss-col", "L"]) == 2
    assert "line 3" in capsys.readouterr().err


def test_report_of_a_sweep_with_nothing_evaluated_renders_every_section(tmp_path):
    run = tmp_path / "sweep" / "runs" / "a"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"model": {"d_model": 8, "n_layers": 1}, "params": {"total": 10}}))
    page = build_report(tmp_path / "sweep").read_text()
    for key, _ in SECTIONS:
        assert f'<section id="{key}">' in page
    assert "No runs with an evaluated checkpoint." in page


def test_every_page_template_ships_in_the_package():
    """pyproject's package-data globs cover every template file (a wheel without one renders no page)."""
    import glob

    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tinyscale"]
    package = root / "src" / "tinyscale"
    shipped = {Path(p) for pattern in patterns for p in glob.glob(pattern, root_dir=package, recursive=True)}
    templates = {p.relative_to(package) for p in package.glob("*/templates/**/*") if p.is_file()}
    assert {Path("analysis/templates/report.html"), Path("analysis/templates/report/completions.html"),
            Path("interpret/templates/interpret.html")} <= templates
    assert templates <= shipped, templates - shipped
