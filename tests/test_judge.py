"""`judge`: the verdict parser on realistic answers, grading against the test server, the cache, the
per-checkpoint results and the tables the report draws from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_openai_server import FakeConfig, running
from tinyscale.analysis.grades import judge_records, width_depth_table
from tinyscale.cli import main
from tinyscale.endpoint import Endpoint
from tinyscale.evaluate.judge import JudgeSettings, judge_run, judge_sweep, load_judge, parse_verdict

G = ("grammar", "creativity", "consistency", "plot")


def _g(*xs: float) -> dict[str, float]:
    return dict(zip(G, map(float, xs), strict=True))


# (answer, expected grades or None for unparsed, expected age group)
VERDICTS = [
    # 1. JSON as asked
    ('{"assessment": "Good.", "grammar": 8, "creativity": 6, "consistency": 7, "plot": 7, "age_group": "C"}',
     _g(8, 6, 7, 7), "C"),
    # 2. JSON in a code fence with prose around it
    ('Here is my evaluation:\n```json\n{"grammar": 9, "creativity": 5, "consistency": 8, "plot": 6, '
     '"age_group": "B"}\n```\nHope this helps.', _g(9, 5, 8, 6), "B"),
    # 3. JSON with long key names and string grades
    ('{"Grammar": "7/10", "Creativity": "6/10", "Consistency with the beginning": "8/10", '
     '"Plot makes sense": "7/10", "Age group": "D: 8-9"}', _g(7, 6, 8, 7), "D"),
    # 4. JSON nested under "grades"
    ('{"assessment": "ok", "grades": {"grammar": 6, "creativity": 4, "consistency": 5, "plot": 3}, '
     '"age_group": "A"}', _g(6, 4, 5, 3), "A"),
    # 5. JSON with snake-case keys and floats
    ('{"grammar": 7.5, "creativity": 6.5, "consistency_with_beginning": 8, "plot_makes_sense": 6, '
     '"age": "E"}', _g(7.5, 6.5, 8, 6), "E"),
    # 6. JSON with an out-of-range grade
    ('{"grammar": 11, "creativity": 6, "consistency": 7, "plot": 7, "age_group": "C"}', None, None),
    # 7. JSON missing the plot grade
    ('{"grammar": 8, "creativity": 6, "consistency": 7, "age_group": "C"}', None, None),
    # 8. The paper's layout: assessment, then grades on one line, then the age group
    ("The student's completion is grammatically correct but the ending is abrupt. The student completes "
     "the sentence split by ***.\n\nGrammar: 8/10, Creativity: 6/10, Consistency: 7/10, Plot: 6/10\n"
     "Age group: C (6-7)", _g(8, 6, 7, 6), "C"),
    # 9. One grade per line, markdown bold
    ("**Assessment:** The story flows well.\n\n**Grammar:** 9/10\n**Creativity:** 7/10\n"
     "**Consistency:** 9/10\n**Plot:** 8/10\n**Age group:** D", _g(9, 7, 9, 8), "D"),
    # 10. Dashes, no scale
    ("Overall fine.\n- Grammar - 7\n- Creativity - 5\n- Consistency - 6\n- Plot - 6\nAge: B", _g(7, 5, 6, 6), "B"),
    # 11. "out of 10"
    ("Grammar: 6 out of 10. Creativity: 4 out of 10. Consistency: 5 out of 10. Plot: 4 out of 10. "
     "I would guess the student is in age group B.", _g(6, 4, 5, 4), "B"),
    # 12. Long labels as in the prompt
    ("Assessment: the student switches characters halfway.\nGrammar: 7\nCreativity: 5\n"
     "Consistency with the beginning of the story: 3\nWhether the plot makes sense: 4\n"
     "Age group: A: 3 or under", _g(7, 5, 3, 4), "A"),
    # 13. Assessment mentions aspects before the grades (the grades come last)
    ("The grammar is mostly right, though one verb is wrong. The plot makes sense until the end, "
     "and it is consistent with the beginning.\n\nGrades:\nGrammar: 7/10\nCreativity: 6/10\n"
     "Consistency: 8/10\nPlot: 7/10\nAge group: C", _g(7, 6, 8, 7), "C"),
    # 14. A markdown table
    ("| Aspect | Grade |\n|---|---|\n| Grammar | 8 |\n| Creativity | 7 |\n| Consistency | 9 |\n"
     "| Plot | 8 |\n| Age group | D |", _g(8, 7, 9, 8), "D"),
    # 15. Scale note in parentheses after each label
    ("Grammar (1-10): 5\nCreativity (1-10): 3\nConsistency (1-10): 4\nPlot (1-10): 2\nAge group: A",
     _g(5, 3, 4, 2), "A"),
    # 16. Numbered list, "=" signs
    ("1. Grammar = 9\n2. Creativity = 8\n3. Consistency = 9\n4. Plot = 9\n5. Age group = E (10-12)",
     _g(9, 8, 9, 9), "E"),
    # 17. Prose grades with a scale
    ("I would give the grammar an 8/10 and the creativity a 5/10. For consistency I give 7/10, and the "
     "plot gets 6 out of 10. The writer seems to be in group C.", _g(8, 5, 7, 6), "C"),
    # 18. Age as a range only
    ("Grammar: 6/10\nCreativity: 6/10\nConsistency: 6/10\nPlot: 5/10\nEstimated age: 6-7 years old",
     _g(6, 6, 6, 5), "C"),
    # 19. No age group at all: grades still count
    ("Grammar: 4/10\nCreativity: 3/10\nConsistency: 2/10\nPlot: 2/10", _g(4, 3, 2, 2), None),
    # 20. Out of range in prose
    ("Grammar: 12/10\nCreativity: 6/10\nConsistency: 7/10\nPlot: 7/10\nAge group: C", None, None),
    # 21. Zero is below the scale
    ("Grammar: 0/10\nCreativity: 1/10\nConsistency: 1/10\nPlot: 1/10\nAge group: A", None, None),
    # 22. Another scale is not rescaled (that would be a guess)
    ("Grammar: 4/5\nCreativity: 3/5\nConsistency: 4/5\nPlot: 3/5\nAge group: B", None, None),
    # 23. Missing creativity
    ("Grammar: 8/10\nConsistency: 7/10\nPlot: 7/10\nAge group: C", None, None),
    # 24. A refusal
    ("I'm sorry, but I can't help with grading this text.", None, None),
    # 25. An empty answer
    ("", None, None),
    # 26. Only an assessment, no grades
    ("The completion is grammatical and creative, and the plot makes sense. The student seems young.",
     None, None),
    # 27. Cut off by max_tokens in the middle of the grades
    ("Assessment: decent.\nGrammar: 7/10\nCreativity: 6/10\nConsis", None, None),
    # 28. Decimal grades
    ("Grammar: 7.5/10\nCreativity: 6.5/10\nConsistency: 8.0/10\nPlot: 7.0/10\nAge group: D",
     _g(7.5, 6.5, 8, 7), "D"),
    # 29. Lower case, colons, age letter in parentheses
    ("grammar: 3\ncreativity: 2\nconsistency: 1\nplot: 1\nage group: (A)", _g(3, 2, 1, 1), "A"),
    # 30. Headings
    ("## Assessment\nThe student ignores the beginning.\n\n## Grades\n- **Grammar**: 6\n- **Creativity**: 5\n"
     "- **Consistency**: 2\n- **Plot**: 3\n\n## Age group\nB: 4-5", _g(6, 5, 2, 3), "B"),
    # 31. Broken JSON falls back on the prose in it
    ('{"grammar": 8, "creativity": 7, "consistency": 8, "plot": 7, "age_group": "C"',
     _g(8, 7, 8, 7), "C"),
    # 32. Grades with a trailing period and "points"
    ("Grammar: 9. Creativity: 8. Consistency: 9. Plot: 9. Age group: F.", _g(9, 8, 9, 9), "F"),
    # 33. JSON with a negative grade
    ('{"grammar": -1, "creativity": 5, "consistency": 5, "plot": 5, "age_group": "B"}', None, None),
    # 34. Age group letter outside A-F is not an age group
    ("Grammar: 5\nCreativity: 5\nConsistency: 5\nPlot: 5\nAge group: G", _g(5, 5, 5, 5), None),
]


def test_enough_verdict_texts():
    assert len(VERDICTS) >= 30


@pytest.mark.parametrize("text, grades, age", VERDICTS, ids=[f"v{i + 1}" for i in range(len(VERDICTS))])
def test_parse_verdict(text, grades, age):
    v = parse_verdict(text)
    if grades is None:
        assert v is None
    else:
        assert v is not None and v.grades == grades and v.age_group == age


def make_run(root: Path, name: str = "r", width: int = 32, depth: int = 2, steps=(10, 20), stories: int = 4) -> Path:
    """A run folder with run.json, metrics and eval/<step>.json holding story completions."""
    run = root / "runs" / name
    (run / "eval").mkdir(parents=True)
    total = 12 * width * width * depth + 300 * width
    (run / "run.json").write_text(json.dumps({
        "config": {"batch": 8, "seq_len": 32}, "params": {"total": total, "non_embedding": total - 300 * width},
        "model": {"family": "llama", "vocab_size": 300, "d_model": width, "n_layers": depth, "n_heads": 2},
        "flops_per_token": 6 * total}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "tokens": s * 256, "val_loss": 3.0 - s / 100})
                                               + "\n" for s in (0, *steps)))
    for step in steps:
        cuts = [{"id": f"val:{i}", "prompt": f"Once upon a time, Lily had a red ball number {i}.",
                 "ending": " She played with it all day.",
                 "completions": [f" She lost it ({name} {step} {k})." for k in range(2)]} for i in range(stories)]
        (run / "eval" / f"{step}.json").write_text(json.dumps({"format": 1, "step": step, "tokens_seen": step * 256,
                                                               "loss": {}, "probes": {}, "completions": cuts}))
    return run


def _ep(url: str) -> Endpoint:
    return Endpoint(url, "judge-model", api_key_env="TINYSCALE_TEST_KEY", timeout=2.0, backoff=0.01)


def test_judge_fills_cache_and_rerun_makes_zero_requests(tmp_path):
    run = make_run(tmp_path)
    with running(FakeConfig(fault_rate=0.2, slow_seconds=3.0, seed=4)) as server:
        results = judge_run(run, _ep(server.base_url), JudgeSettings(concurrency=4))
        asked = server.state.counts["requests"]
        # 2 checkpoints x 4 stories x 2 samples, and 4 reference endings shared by both checkpoints.
        assert server.state.counts["judge"] == 16 + 4
        again = judge_run(run, _ep(server.base_url), JudgeSettings(concurrency=4))
        assert server.state.counts["requests"] == asked  # a rerun costs nothing
    assert again[20]["student"] == results[20]["student"]
    cache = (run / "eval" / "judge_cache.jsonl").read_text().splitlines()
    assert len(cache) == 20
    r = load_judge(run)[20]
    assert r["student"]["n"] == 8 and r["student"]["unparsed"] == 0 and r["reference"]["n"] == 4
    for g in G:
        s = r["student"]["grades"][g]
        assert 3 <= s["lo"] <= s["mean"] <= s["hi"] <= 9
    assert sum(r["student"]["age_groups"].values()) == 8
    assert r["judge"]["model"] == "judge-model" and r["judge"]["json_mode"]


def test_unparsable_answers_are_asked_twice_then_counted(tmp_path):
    run = make_run(tmp_path, steps=(10,), stories=6)
    with running(FakeConfig(unparsable_verdict_rate=0.4, seed=1, reject_json_mode=True)) as server:
        results = judge_run(run, _ep(server.base_url), JudgeSettings(concurrency=2, reference=False))
        counts = server.state.counts
    r = results[10]["student"]
    entries = [json.loads(x) for x in (run / "eval" / "judge_cache.jsonl").read_text().splitlines()]
    refused = [e for e in entries if e["verdict"] is None]
    assert r["unparsed"] == len(refused) > 0 and r["parsed"] == 12 - len(refused)
    assert all(e["tries"] == 2 for e in refused)
    # The server has no JSON mode: asked with it by each worker at first, then in prose, which was parsed.
    assert 1 <= counts["rejected_json_mode"] <= 2 and not results[10]["judge"]["json_mode"]
    assert counts["judge"] == 12 + len(refused)  # answered requests: one each, two for the refused


def test_records_and_width_depth_table_for_the_report(tmp_path):
    for w, d in ((32, 2), (64, 2), (32, 4)):
        make_run(tmp_path / "sweep", f"d{w}-l{d}", w, d)
    (tmp_path / "sweep" / "runs" / "unjudged").mkdir()
    with running(FakeConfig()) as server:
        for run in sorted((tmp_path / "sweep" / "runs").glob("d*")):
            judge_run(run, _ep(server.base_url), JudgeSettings(), "last")
    rows = judge_records(tmp_path / "sweep")
    assert len(rows) == 3 and all(r["final"] and r["step"] == 20 and r["flops"] for r in rows)
    assert {(r["width"], r["depth"]) for r in rows} == {(32, 2), (64, 2), (32, 4)}
    table = width_depth_table(tmp_path / "sweep", "plot")
    assert table["widths"] == [32, 64] and table["depths"] == [2, 4]
    assert table["rows"][1][1] is None and all(isinstance(x, float) for x in table["rows"][0])
    # The sweep's report shows the grades against compute and the depth x width table.
    from tinyscale.analysis.report import _grades_section

    html = _grades_section(tmp_path / "sweep", tmp_path / "plots", "non_embedding_params")
    assert "data:image/png;base64," in html and "layers" in html and (tmp_path / "plots" / "grades.png").is_file()


def test_cli_judge_and_bad_input(tmp_path, capsys):
    run = make_run(tmp_path)
    with running(FakeConfig()) as server:
        assert main(["-q", "judge", str(run), "--base-url", server.base_url, "--model", "j", "--checkpoints", "10",
                     "--completions", "2", "--samples", "1"]) == 0
        out = capsys.readouterr().out
        assert "reference" in out and (run / "eval" / "judge_10.json").is_file()
        assert not (run / "eval" / "judge_20.json").exists()
        assert json.loads((run / "eval" / "judge_10.json").read_text())["student"]["n"] == 2
        assert main(["-q", "judge", str(run), "--base-url", server.base_url, "--model", "j",
                     "--checkpoints", "30"]) == 2
        assert "no completions at step(s) 30" in capsys.readouterr().err
    empty = tmp_path / "empty"
    (empty / "eval").mkdir(parents=True)
    assert main(["-q", "judge", str(empty), "--base-url", "http://127.0.0.1:9/v1", "--model", "j"]) == 2
    assert "no story completions" in capsys.readouterr().err


def test_api_key_never_reaches_disk_or_output(tmp_path, capsys, monkeypatch):
    from tinyscale import progress

    secret = "sk-judge-5e1f0c-do-not-write"
    monkeypatch.setenv("TINYSCALE_TEST_KEY", secret)
    run = make_run(tmp_path)
    with running(FakeConfig(fault_rate=0.3, faults=("500", "429"), retry_after="0", seed=2)) as server:
        try:
            code = main(["judge", str(run), "--base-url", server.base_url, "--model", "j",
                         "--api-key-env", "TINYSCALE_TEST_KEY"])  # progress and log lines on
        finally:
            progress.enable(False)
        bad = main(["-q", "judge", str(run), "--base-url", server.base_url.replace("/v1", "/x"), "--model", "other",
                    "--api-key-env", "TINYSCALE_TEST_KEY"])
    assert code == 0 and bad == 2 and secret in server.state.keys
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


# --- a sweep: one shared cache, bounded concurrency, resumable ----------------------------------------


def _sweep(root: Path) -> Path:
    """Two runs of a sweep whose validation beginnings (and reference endings) are the same."""
    make_run(root / "sweep", "d32-l2", 32, 2)
    make_run(root / "sweep", "d64-l2", 64, 2)
    return root / "sweep"


def _unique_items(sweep: Path) -> set[tuple[str, str]]:
    """(beginning, ending) of every graded item, read from the runs' eval files: what must be asked once."""
    items = set()
    for ev in sweep.glob("runs/*/eval/[0-9]*.json"):
        for cut in json.loads(ev.read_text())["completions"]:
            items |= {(cut["prompt"], c) for c in [*cut["completions"], cut["ending"]]}
    return items


def _cached_keys(path: Path) -> set[str]:
    return {json.loads(x)["key"] for x in path.read_text().splitlines() if x.strip()}


def test_judge_a_sweep_with_one_shared_cache_and_report_shows_grades(tmp_path, capsys):
    from tinyscale.evaluate.judge import cache_key, judge_prompt, load_template

    sweep = _sweep(tmp_path)
    flags = ["--base-url", "", "--model", "judge-model", "--concurrency", "3", "--api-key-env", "TINYSCALE_TEST_KEY"]
    with running(FakeConfig(fault_rate=0.2, faults=("429", "500", "drop", "malformed"), retry_after="0",
                            judge_seconds=0.02, seed=3)) as server:
        flags[1] = server.base_url
        assert main(["-q", "judge", str(sweep), *flags]) == 0
        first = server.state.counts["judge"]
        assert main(["-q", "judge", str(sweep), *flags]) == 0  # everything cached: nothing asked
        assert main(["-q", "judge", str(sweep / "runs" / "d64-l2"), *flags, "--cache",
                     str(sweep / "judge_cache.jsonl")]) == 0  # one run against the sweep's cache
        assert server.state.counts["judge"] == first
        assert 1 < server.state.counts["max_in_flight"] <= 3
    out = capsys.readouterr().out
    assert "d32-l2" in out and "d64-l2" in out and "reference" in out
    # 2 runs x 2 checkpoints x 4 stories x 2 samples, and the 4 reference endings shared by all of them.
    items = _unique_items(sweep)
    assert len(items) == 36 and first == 36
    template = load_template()
    assert {cache_key("judge-model", judge_prompt(template, b, e)) for b, e in items} == \
        _cached_keys(sweep / "judge_cache.jsonl")
    for run in sweep.glob("runs/*"):
        judged = load_judge(run)
        assert sorted(judged) == [10, 20] and not (run / "eval" / "judge_cache.jsonl").exists()
        assert all(r["student"]["n"] == 8 and r["reference"]["n"] == 4 for r in judged.values())
    assert main(["-q", "report", str(sweep)]) == 0
    html = (sweep / "report.html").read_text()
    assert "No teacher's grades" not in html and (sweep / "plots" / "grades.png").is_file()
    assert "layers \\ width" in html


def test_a_killed_sweep_judge_resumes_without_asking_again(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tinyscale.evaluate.judge import cache_key

    sweep = _sweep(tmp_path)
    cache = sweep / "judge_cache.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    with running(FakeConfig(judge_seconds=0.05, fault_rate=0.1, faults=("500", "drop"), seed=5)) as server:
        cmd = [sys.executable, "-m", "tinyscale.cli", "-q", "judge", str(sweep), "--base-url", server.base_url,
               "--model", "judge-model", "--concurrency", "2", "--api-key-env", "TINYSCALE_TEST_KEY"]
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120  # generous: the machine may be shared
        while (not cache.is_file() or len(_cached_keys(cache)) < 8) and first.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        graded = _cached_keys(cache)
        assert 8 <= len(graded) < 36, "the first judge should have been killed midway"
        assert not list(sweep.glob("runs/*/eval/judge_*.json"))  # results only once all is answered
        asked_before = len(server.state.judged)
        results = judge_sweep([sweep], _ep(server.base_url), JudgeSettings(concurrency=2))
        asked_now = {cache_key("judge-model", p) for p in server.state.judged[asked_before:]}
    assert asked_now.isdisjoint(graded)  # nothing graded before the kill was asked again
    assert asked_now | graded == _cached_keys(cache) and len(_cached_keys(cache)) == 36
    assert all(r["student"]["n"] == 8 for by_step in results.values() for r in by_step.values())


def test_judge_sweep_bad_input(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    (sweep / "runs" / "unjudged").mkdir()
    (sweep / "runs" / "unjudged" / "run.json").write_text("{}")
    with running(FakeConfig()) as server:
        args = ["-q", "judge", str(sweep), "--base-url", server.base_url, "--model", "j"]
        assert main([*args, "--checkpoints", "30"]) == 2
        assert "d32-l2: --checkpoints 30: no completions at step(s) 30" in capsys.readouterr().err
        assert main(args) == 0  # the run without completions is skipped
    assert not (sweep / "runs" / "unjudged" / "eval").exists()
    empty = tmp_path / "empty"
    for name in ("a", "b"):
        (empty / "runs" / name / "eval").mkdir(parents=True)
        (empty / "runs" / name / "run.json").write_text("{}")
    assert main(["-q", "judge", str(empty), "--base-url", "http://127.0.0.1:9/v1", "--model", "j"]) == 2
    assert "no story completions in any of the 2 runs" in capsys.readouterr().err
