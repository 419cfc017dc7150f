"""Which points each curve and law sees: compute curves, seed averaging, the L(D) fallback, D from C,
per-task chance levels, and the per-run crossing of a skill's no-skill baseline."""

import math

import pytest

from tinyscale.analysis.analyze import analyze_csv, compute_curve, fit_laws, size_curve, skill_baselines
from tinyscale.errors import UserError


def rec(run: str, size: float, flops: float, loss: float, *, tokens: float | None = None, final: bool = False,
        gap: float | None = None, gap_se: float = 0.02, seed_loss: float | None = None) -> dict:
    skill = {} if gap is None else {"tracking": 4.0 + gap}
    return {"run": run, "non_embedding_params": size, "params": size, "flops": flops, "step": int(flops),
            "tokens": tokens if tokens is not None else flops / (6 * size), "loss": loss, "final": final,
            "skill_loss": {**skill, **({"fact": seed_loss} if seed_loss is not None else {})},
            "skill_tokens": {"tracking": 2000, "fact": 2000}, "skill_loss_se": {},
            "skill_floor": {"tracking": 0.4} if skill else {}, "skill_baseline": {"tracking": 4.0} if skill else {},
            "skill_gap": {"tracking": gap} if skill else {}, "skill_gap_se": {"tracking": gap_se} if skill else {},
            "skill_gap_hi": {"tracking": gap + 1.96 * gap_se} if skill else {}, "probes": {}}


def test_compute_curve_takes_the_lowest_loss_checkpoint_per_log_bin():
    recs = [rec("a", 1e5, 1e12, 3.0), rec("b", 1e6, 1.05e12, 2.5),  # same bin: b wins (lower loss)
            rec("a", 1e5, 1e14, 2.0), rec("b", 1e6, 1e16, 1.5)]
    curve = compute_curve(recs, "all", "loss")
    assert [c[1] for c in curve] == [2.5, 2.0, 1.5]
    assert [c[0] for c in curve] == [1.05e12, 1e14, 1e16]


def test_size_curve_averages_seeds_and_combines_their_noise():
    recs = [rec("s0", 1e6, 1e15, 2.0, final=True, seed_loss=2.0), rec("s1", 1e6, 1e15, 2.2, final=True, seed_loss=2.2),
            rec("t0", 1e7, 1e16, 1.5, final=True, seed_loss=1.5)]
    curve = size_curve(recs, "fact", "loss", "non_embedding_params")
    assert curve[0][0] == 1e6 and curve[0][1] == pytest.approx(2.1)
    # Two seeds: the mean's noise is the root of the summed variances over 2 (smaller than one seed's).
    one = 2.0 / math.sqrt(2000)
    assert curve[0][2] == pytest.approx(math.sqrt((2.0 / math.sqrt(2000)) ** 2 + (2.2 / math.sqrt(2000)) ** 2) / 2)
    assert curve[0][2] < one * 1.1 and curve[1][1] == 1.5


def test_l_of_d_from_one_learning_curve_claims_no_interval():
    # One budget per size: L(D) falls back to the largest model's learning curve.
    recs = []
    for name, n in (("small", 1e5), ("mid", 1e6), ("big", 1e7)):
        for d in (1e6, 3e6, 1e7, 3e7):
            recs.append(rec(name, n, 6 * n * d, 1.5 + 30 / d**0.3 + 20 / n**0.3, tokens=d, final=d == 3e7))
    fits = fit_laws(recs, n_boot=20)
    assert "largest model (big)" in fits["L(D)"]["source"] and "no interval" in fits["L(D)"]["source"]
    assert fits["L(D)"]["n_boot"] == 0 and not fits["L(D)"]["ci"]
    assert fits["L(N)"]["n_boot"] > 0  # laws over runs keep their bootstrap


def test_csv_with_params_and_compute_only_derives_tokens_and_fits_l_of_n_d(tmp_path):
    lines = ["N,C,L"]
    for n in (1e6, 3e6, 1e7, 3e7, 1e8):
        for d in (1e8, 1e9, 1e10):
            lines.append(f"{n},{6 * n * d},{1.7 + 400 / n**0.34 + 400 / d**0.28}")
    path = tmp_path / "chinchilla.csv"
    path.write_text("\n".join(lines) + "\n")
    out = analyze_csv(path, params_col="N", loss_col="L", flops_col="C", n_boot=5)
    assert "D = C / (6 N)" in out["notes"][0]
    assert out["fits"]["L(N,D)"]["params"]["beta"] == pytest.approx(0.28, rel=0.15)


def test_csv_per_task_chance_levels(tmp_path):
    lines = ["task,N,acc,chance"]
    for n, mmlu, gsm in ((1e6, 0.25, 0.0), (1e7, 0.26, 0.0), (1e8, 0.24, 0.01), (1e9, 0.6, 0.3), (1e10, 0.8, 0.5)):
        lines += [f"mmlu,{n},{mmlu},0.25", f"gsm8k,{n},{gsm},0"]
    path = tmp_path / "tasks.csv"
    path.write_text("\n".join(lines) + "\n")
    out = analyze_csv(path, task_col="task", x_col="N", metric_col="acc", chance_col="chance")
    by_task = {t["task"]: t for t in out["tasks"]}
    assert by_task["mmlu"]["chance"] == 0.25 and by_task["gsm8k"]["chance"] == 0.0
    assert by_task["mmlu"]["label"] == by_task["gsm8k"]["label"] == "emergent"
    # One --chance for both gives GSM8K chance 0.25; a break in trend is a break whatever the chance.
    one = analyze_csv(path, task_col="task", x_col="N", metric_col="acc", chance=0.25)["tasks"][1]
    assert one["chance"] == 0.25 and one["label"] == "emergent"
    path.write_text("task,N,acc,chance\nt,1,0.3,0.25\nt,2,0.3,0.5\nt,3,0.4,0.25\n")
    with pytest.raises(UserError, match="several chance levels"):
        analyze_csv(path, task_col="task", x_col="N", metric_col="acc", chance_col="chance")


def test_crossing_the_baseline_is_timed_per_run_and_said_in_one_sentence():
    recs = []
    for name, size, gaps in (("d16", 1e4, [3.6, 0.9, 0.3, 0.1]),     # learns the prior only
                             ("d96", 1e6, [3.6, 0.5, -0.4, -1.5])):  # falls below from its 3rd point
        for i, g in enumerate(gaps):
            recs.append(rec(name, size, 10.0 ** (12 + i), 3.0 - i * 0.3, gap=g, final=i == 3))
    (tracking,) = skill_baselines(recs)
    runs = {r["run"]: r for r in tracking["runs"]}
    assert runs["d96"]["below_from_flops"] == 1e14 and runs["d16"]["below_from_flops"] is None
    assert runs["d96"]["baseline"] == 4.0 and runs["d96"]["floor"] == 0.4
    assert "from 1e+14 FLOPs in 1 of 2 models only" in tracking["sentence"] and "d16 +0.10" in tracking["sentence"]
    # A single checkpoint below the baseline that does not stay there is not a crossing.
    recs[-1]["skill_gap"]["tracking"] = 0.2
    assert skill_baselines(recs)[0]["runs"][1]["below_from_flops"] is None


def test_a_crossing_is_set_against_the_corpus_trigram_on_the_same_tokens():
    """A baseline that the corpus's trigram already beats is a weak control: the sentence says so,
    and names the models whose loss is below the trigram's beyond noise."""
    recs = []
    for name, size, gaps in (("d16", 1e4, [3.6, 0.9, -0.3, -0.4]), ("d96", 1e6, [3.6, 0.5, -0.4, -1.5])):
        for i, g in enumerate(gaps):
            recs.append(rec(name, size, 10.0 ** (12 + i), 3.0 - i * 0.3, gap=g, final=i == 3))
    recs[0]["skill_trigram"] = {"tracking": 3.7}  # eval files carry it; the trainer's records do not
    (tracking,) = skill_baselines(recs)
    assert tracking["trigram"] == 3.7
    # d16 ends at 3.6 (+-0.04) against 3.7: below; d96 at 2.5: below; a loss of 3.69 would be level with it
    assert [r["vs_trigram"] for r in tracking["runs"]] == ["below", "below"]
    assert "the corpus trigram scores 3.70 nats/token on these tokens, below the baseline" in tracking["sentence"]
    assert "below the trigram beyond noise: d16, d96" in tracking["sentence"]
    recs[0]["skill_trigram"] = {"tracking": 4.5}  # a trigram above the baseline: the crossing stands
    (tracking,) = skill_baselines(recs)
    assert "4.50 nats/token on these tokens; below" in tracking["sentence"]
    for r in recs:
        r.pop("skill_trigram", None)
    assert "trigram" not in skill_baselines(recs)[0]["sentence"]


def test_new_flags_refuse_bad_input_in_one_line(tmp_path, capsys):
    from tinyscale.cli import main

    path = tmp_path / "tasks.csv"
    path.write_text("task,N,acc\nt,1,0.3\nt,2,0.3\nt,3,0.4\n")
    before = path.read_bytes()
    assert main(["analyze", "--csv", str(path), "--task-col", "task", "--x-col", "N", "--metric-col", "acc",
                 "--chance-col", "nochance"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no column 'nochance'" in err[0] and path.read_bytes() == before
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--eval-min-skill-tokens", "-1"])
    assert e.value.code == 2 and not (tmp_path / "r").exists()
    assert "--eval-min-skill-tokens" in capsys.readouterr().err


# --- seeds and windows in every interval ----------------------------------------------------------


def seeded(size: float, seed: int, loss: float, *, flops: float | None = None, windows: dict | None = None,
           se: float = 0.002) -> dict:
    r = rec(f"n{size:g}-s{seed}", size, flops or 6 * size * 1e7, loss, tokens=1e7, final=True)
    r.update(point=f"n{size:g}", seed=seed, loss_se=se, windows=windows or {"set": "val", "file": None})
    return r


SIZES4 = (1e5, 3e5, 1e6, 3e6, 1e7)


def law_n(n: float) -> float:
    return 1.5 + 40 / n**0.3


def test_seeds_that_disagree_widen_the_intervals_of_a_fit_and_of_each_point():
    from tinyscale.analysis.analyze import analyze_records

    one = [seeded(n, 0, law_n(n)) for n in SIZES4]
    two = [seeded(n, s, law_n(n) + (0.08 if (s + i) % 2 else -0.08)) for i, n in enumerate(SIZES4) for s in (0, 1)]
    a, b = analyze_records(one, n_boot=40), analyze_records(two, n_boot=40)
    width = {k: r["fits"]["L(N)"]["ci"]["alpha"][1] - r["fits"]["L(N)"]["ci"]["alpha"][0] for k, r in (("one", a), ("two", b))}
    assert width["two"] > 3 * width["one"]
    # The point estimates are the seed means: the same law.
    assert [p[1] for p in b["fits"]["points"]["L(N)"]] == pytest.approx([law_n(n) for n in SIZES4])
    # Each size's noise in the taxonomy is the spread over seeds (~0.08 / sqrt 2), not the windows' 0.002.
    size_all = next(e for e in b["taxonomy"] if e["curve"] == "all" and e["axis"] == "size")
    assert size_all["metrics"]["loss"]["diagnostics"]["sigma"] > 0.02
    assert b["seeds"]["per_point"] == {f"n{n:g}": 2 for n in SIZES4} and b["seeds"]["caveat"] is None


def test_per_size_selection_is_the_seed_mean_not_the_winners_curse():
    import numpy as np

    rng = np.random.default_rng(3)
    recs = [seeded(n, s, 2.0 + 0.1 * rng.standard_normal()) for n in SIZES4 for s in range(5)]
    fits = fit_laws(recs, n_boot=10)
    new = np.array([p[1] for p in fits["points"]["L(N)"]])
    old = np.array([min(r["loss"] for r in recs if r["params"] == n) for n in SIZES4])  # the former rule
    assert old.mean() < 1.9  # min of 5 draws: ~1.16 sd below the truth
    assert abs(new.mean() - 2.0) < 0.06 and np.all(new > old)


def test_one_seed_study_says_so_beside_every_claim():
    from tinyscale.analysis.analyze import analyze_records
    from tinyscale.analysis.seeds import CAVEAT

    out = analyze_records([seeded(n, 0, law_n(n)) for n in SIZES4], n_boot=10)
    assert out["seeds"]["caveat"] == CAVEAT and out["seeds"]["max"] == 1
    assert out["fits"]["L(N)"]["caveat"] == CAVEAT
    assert all(e["caveat"] == CAVEAT for e in out["taxonomy"])
    assert out["comparisons"] and all(c["caveat"] == CAVEAT for c in out["comparisons"])
    assert "not paired" in out["seeds"]["intervals"]


def window_file(path, per_window: "np.ndarray") -> str:  # noqa: F821
    """val_windows/<step>.npz as the trainer writes it: one skill, 128 tokens per window."""
    import numpy as np

    sums = np.zeros((len(per_window), 1, 8), np.float32)
    sums[:, 0, 0], sums[:, 0, 1] = 128, 128 * per_window
    np.savez_compressed(path, sums=sums, shares=np.array([1.0]), skills=np.array(["other"]))
    return str(path)


def test_runs_on_shared_windows_are_compared_by_paired_differences(tmp_path):
    import numpy as np

    from tinyscale.analysis.seeds import mean_over_seeds, replicates, size_comparisons

    rng = np.random.default_rng(0)
    hard = rng.uniform(1.0, 5.0, 300)  # windows differ far more than the two models do
    small, large = hard, hard - 0.05 + 0.01 * rng.standard_normal(300)
    recs = []
    for size, per_window in ((1e5, small), (1e6, large)):
        f = window_file(tmp_path / f"{size:g}.npz", per_window)
        recs.append(seeded(size, 0, float(per_window.mean()), windows={"set": "val", "file": f}))
    (cmp,) = size_comparisons(mean_over_seeds(recs, "params"), replicates(recs, "params", 100), "params")
    assert cmp["paired"] and cmp["diff"] == pytest.approx(large.mean() - small.mean())
    paired, indep = (hi - lo for lo, hi in (cmp["ci"], cmp["ci_independent"]))
    assert paired < indep / 5
    assert cmp["verdict"] == "larger is better"  # treated as independent, 0.05 would be inside the noise
    assert cmp["ci_independent"][0] < 0 < cmp["ci_independent"][1]
    # Different windows (another evaluation set): no pairing, the independent interval stands.
    recs[1]["windows"]["set"] = "other"
    (cmp,) = size_comparisons(mean_over_seeds(recs, "params"), replicates(recs, "params", 50), "params")
    assert not cmp["paired"] and cmp["ci"] == cmp["ci_independent"]


def test_report_of_a_one_seed_sweep_says_it_beside_intervals_and_classes(tmp_path):
    import re

    import numpy as np

    from test_report import make_sweep
    from tinyscale.analysis.collect import collect_sweep
    from tinyscale.analysis.report import build_report
    from tinyscale.analysis.seeds import CAVEAT

    sweep = make_sweep(tmp_path)
    run = next((sweep / "runs").iterdir())
    (run / "val_windows").mkdir()
    window_file(run / "val_windows" / "100.npz", np.full(10, 3.0))
    recs = collect_sweep(sweep)
    kept = [r for r in recs if r["run"] == run.name and r["step"] == 100]
    assert kept[0]["windows"]["file"].endswith("100.npz") and len({r["point"] for r in recs}) == 4
    page = build_report(sweep, n_boot=8).read_text()
    for section in ("curves", "taxonomy"):  # (this sweep has no baselines: no skill intervals)
        body = re.search(f'<section id="{section}">(.*?)</section>', page, re.S).group(1)
        assert CAVEAT in body, section
    assert "bigger" not in page and "larger is better" in page  # the size comparisons table


def test_trained_seeds_share_windows_and_are_analysed_as_seeds(tmp_path, monkeypatch, request):
    """Four tiny runs (two sizes x two seeds) through the trainer: per-window sums kept for every
    evaluation, reproducing its losses; seeds grouped; sizes compared with paired differences."""
    import numpy as np

    from _tiny_shards import make_shards
    from tinyscale.analysis.analyze import analyze_records
    from tinyscale.analysis.collect import collect_sweep
    from tinyscale.analysis.seeds import _load_sums, _window_stats
    from tinyscale.config import TrainConfig
    from tinyscale.kernels import cpu_kernels
    from tinyscale.train import train

    # PyTorch's operators: the C++ kernels would be compiled first where they are not built yet.
    # `cpu_kernels` remembers its answer: forget it after this test, or every later test in the
    # process would run without the kernels.
    monkeypatch.setenv("TINYSCALE_NO_KERNELS", "1")
    cpu_kernels.cache_clear()
    request.addfinalizer(cpu_kernels.cache_clear)
    shards = make_shards(tmp_path / "data", stories=120)
    for width in (16, 32):
        for seed in (0, 1):
            cfg = TrainConfig(data=str(shards), tokens=30 * 8 * 32, eval_every=15, d_model=width, n_layers=1,
                              n_heads=2, seq_len=32, batch=8, lr=3e-3, warmup=5, threads=1, dtype="fp32", seed=seed,
                              eval_tokens=1024, eval_min_skill_tokens=200)
            train(cfg, tmp_path / "sweep" / "runs" / f"d{width}-s{seed}")
    recs = collect_sweep(tmp_path / "sweep")
    final = next(r for r in recs if r["run"] == "d32-s1" and r["final"])
    stats = _window_stats(_load_sums(final["windows"]["file"])[0].sum(0)[None], *_load_sums(final["windows"]["file"])[1:])
    assert stats["loss"][0] == pytest.approx(final["loss"], rel=1e-5)
    for skill, loss in final["skill_loss"].items():
        assert stats["skill_loss"][skill][0] == pytest.approx(loss, rel=1e-5)
    out = analyze_records(recs, size_key="params", n_boot=30)
    assert out["seeds"]["per_point"] == {"d16": 2, "d32": 2} and out["seeds"]["caveat"] is None
    (overall,) = [c for c in out["comparisons"] if c["row"] == "all"]
    assert overall["paired"] and overall["seeds"] == [2, 2] and "seeds and validation windows" in out["seeds"]["intervals"]
    assert np.isfinite(overall["ci"]).all()


def test_csv_rows_grouped_by_run_stay_points_of_their_curve(tmp_path):
    lines = ["run,N,D,L"]
    for run, n in (("a", 1e6), ("b", 1e7), ("c", 1e8)):
        lines += [f"{run},{n},{d},{1.7 + 400 / n**0.34 + 400 / d**0.28}" for d in (1e8, 1e9, 1e10)]
    path = tmp_path / "runs.csv"
    path.write_text("\n".join(lines) + "\n")
    out = analyze_csv(path, params_col="N", tokens_col="D", loss_col="L", run_col="run", n_boot=5)
    assert out["fits"]["L(N,D)"]["n_points"] == 9 and out["fits"]["L(N,D)"]["params"]["alpha"] == pytest.approx(0.34, rel=0.15)
