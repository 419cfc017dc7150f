"""Teach versus incentivize over sizes through the sweep launchers: one job per size, merged, resumable."""

import json
import shutil

import pytest
import torch

from _tiny_shards import make_shards
from tinyscale.analysis.report import build_report
from tinyscale.config import ModelConfig
from tinyscale.errors import UserError
from tinyscale.fileio import write_json
from tinyscale.incentivize.compare import compare, default_out, figure_data, summarize
from tinyscale.incentivize.policy_gradient import IncentiveConfig
from tinyscale.model import Transformer
from tinyscale.training.checkpoints import save_checkpoint


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep folder with two randomly initialized tiny sizes (long context: world questions follow a story)."""
    root = tmp_path_factory.mktemp("cmp")
    shards = make_shards(root, stories=60)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(shards / "tokenizer.json")).get_vocab_size()
    for width in (8, 16):
        cfg = ModelConfig(vocab_size=vocab, d_model=width, n_layers=1, n_heads=2, max_seq_len=1280)
        torch.manual_seed(width)
        model = Transformer(cfg)
        run = root / "sw" / "runs" / f"d{width}"
        total = sum(p.numel() for p in model.parameters())
        write_json(run / "run.json", {"model": cfg.model_dump(), "data": {"dir": str(shards)},
                                      "params": {"total": total, "non_embedding": total - vocab * width}})
        shutil.copy(shards / "tokenizer.json", run / "tokenizer.json")
        save_checkpoint(run, 0, model, {"step": 0})
    return root / "sw"


BASE = dict(steps=1, group=2, prompts_per_step=1, max_new_tokens=3, updates=1, prompt_count=12, lr=1e-3,
            checkpoint_every=1, warmup=0, device="cpu")


def _files(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_sizes_run_as_parallel_jobs_merge_and_resume(sweep, tmp_path):
    out = tmp_path / "cmp"
    base = IncentiveConfig(start=str(sweep / "runs" / "d8"), **BASE)
    summary = compare([str(sweep)], out, base, seeds=2, questions=6, launcher="local", parallel=2)
    rows = {(r["size"], r["arm"]): r for r in summary["rows"]}
    assert set(rows) == {(s, a) for s in ("d8", "d16") for a in ("start", "teach", "incentivize")}
    for (_, arm), row in rows.items():
        assert row["accuracy_answerable"]["n"] == (1 if arm == "start" else 2)  # intervals over seeds
        assert row["val_loss"]["lo"] <= row["val_loss"]["mean"] <= row["val_loss"]["hi"]
    assert json.loads((out / "compare.json").read_text())["rows"] == json.loads(json.dumps(summary["rows"]))
    figure = json.loads((out / "figure.json").read_text())
    assert [p["params"] for p in figure["mean_reward"]["teach"]] == sorted(rows[(s, "teach")]["params"]
                                                                          for s in ("d8", "d16"))
    for size in ("d8", "d16"):
        assert "incentivize RUN" not in (out / "logs" / f"{size}.log").read_text()
        assert "--size-job" in (out / "logs" / f"{size}.log").read_text()
        for seed in range(2):
            rl = json.loads((out / size / f"incentivize-s{seed}" / "run.json").read_text())["config"]
            teach = json.loads((out / size / f"teach-s{seed}" / "run.json").read_text())["config"]
            used = json.loads((out / size / f"incentivize-s{seed}" / "metrics.jsonl").read_text().splitlines()[-1])
            # the flags reach the job: the arm is what the base config says, for this start and seed
            assert {k: rl[k] for k in BASE} == BASE and rl["seed"] == seed and rl["start"].endswith(size)
            assert teach["objective"] == "teach" and teach["tokens"] == used["tokens"]

    # Resume: a lost evaluation is redone, nothing else; a finished size is not even launched.
    (out / "d8" / "teach-s1" / "answers.json").unlink()
    before = _files(out)
    compare([str(sweep)], out, base, seeds=2, questions=6, launcher="local", parallel=2)
    after = _files(out)
    changed = {p.relative_to(out).as_posix() for p in after if before.get(p) != after[p]}
    assert changed == {"d8/teach-s1/answers.json", "logs/d8.log", "compare.json", "figure.json", "compare.md"}

    # The sweep report draws the comparison from wherever it is (here outside the sweep folder).
    page = build_report(sweep, incentivize=out).read_text()
    assert (sweep / "plots" / "teach_vs_incentivize.png").stat().st_size > 1000
    assert "<td>d16</td>" in page and "not run" not in page


def test_out_defaults_to_the_sweep_and_is_required_otherwise(sweep):
    assert default_out([str(sweep)]) == sweep / "incentivize"
    with pytest.raises(UserError, match="--out"):
        default_out([str(sweep / "runs" / "d8")])


def test_a_sweep_folder_brings_its_launcher_unless_one_is_given(tmp_path):
    import yaml

    from tinyscale.incentivize.compare import launch_plan
    from tinyscale.sweep import RayOptions

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"data": "shards", "launcher": "ray", "parallel": 3,
                                                         "ray": {"num_cpus": 2}}))
    assert launch_plan([str(tmp_path)], None, None, None, None) == ("ray", 3, RayOptions(num_cpus=2), 2)
    assert launch_plan([str(tmp_path)], "local", 1, None, 4) == ("local", 1, RayOptions(num_cpus=2), 4)
    assert launch_plan([str(tmp_path / "runs" / "a")], None, None, None, 4) == ("local", 1, RayOptions(), 4)


def test_cli_compare_of_a_run_without_out_is_one_line(sweep, capsys):
    from tinyscale.cli import main

    assert main(["-q", "incentivize", str(sweep / "runs" / "d8"), "--compare"]) == 2
    assert "--out" in capsys.readouterr().err


def test_report_section_from_the_sweep_comparison_or_not_run(tmp_path, capsys):
    from tinyscale.cli import main

    sweep = tmp_path / "sweep"
    write_json(sweep / "runs" / "a" / "run.json", {"model": {"d_model": 8, "n_layers": 1}, "params": {"total": 10}})
    page = build_report(sweep).read_text()
    assert '<section id="incentivize"><h2>Teach versus incentivize</h2>' in page
    assert "Teach versus incentivize: not run" in page
    # A comparison by hand: two sizes, the incentivize arm saying "I don't know" where the others answer wrong.
    answerable = [i % 2 == 0 for i in range(40)]

    def ev(wrong_share):
        verdicts = ["correct" if a else ("wrong" if i < 40 * wrong_share else "idk") for i, a in enumerate(answerable)]
        return {"outcomes": {"id": list(range(40)), "answerable": answerable, "verdict": verdicts,
                             "reward": [0.0] * 40}, "val_windows": [1.0, 1.1], "val_loss": 1.05}

    results = {size: {"start": [ev(1.0)], "teach": [ev(1.0)] * 3, "incentivize": [ev(0.0)] * 3}
               for size in ("d8 & co", "d16")}
    sizes = {"d8 & co": {"params": 1000}, "d16": {"params": 4000}}
    summary = summarize(results, sizes, IncentiveConfig(start="x"), seeds=3)
    write_json(sweep / "incentivize" / "compare.json", summary)
    write_json(sweep / "incentivize" / "figure.json", figure_data(summary))
    page = build_report(sweep).read_text()
    section = page.split('<section id="incentivize">')[1].split("</section>")[0]
    assert "not run" not in section and "d8 &amp; co" in section and "<td>d16</td>" in section
    assert section.count('src="data:image/png;base64,') == 1 and "bootstrap over seeds x questions" in section
    # The paired differences, the sure ones marked: confident-wrong on unanswerable questions 1 -> 0.
    row = section.split("<td>d16</td><td>confident_wrong_unanswerable</td>")[1].split("</tr>")[0]
    assert row.count("✓</b>") == 2 and "<th>teach - incentivize</th>" in section  # not teach - start
    assert section.count("✓</b></td>") == 2 * 2 * 3  # sizes x pairs (not teach - start) x metrics (confident_wrong*, idk_unanswerable)
    assert main(["-q", "report", str(sweep), "--incentivize", str(tmp_path / "nope")]) == 2
    assert "--incentivize" in capsys.readouterr().err
