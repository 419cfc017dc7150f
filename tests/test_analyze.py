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
