"""Hostile text from runs (names, stories, commands, analysis strings) reaches the HTML pages as text:
parsed back by a browser's rules, it is the same string, and it makes no element or attribute."""

import json
from html.parser import HTMLParser

from test_report import make_sweep
from tinyscale.analysis.analyze import analyze_sweep
from tinyscale.analysis.report import build_report
from tinyscale.fileio import write_json

HOSTILE = "<script>alert(1)</script> a&b\"'"
RUN = 'a&b"<i>'  # a run folder's name (no slash in a file name)


class _Page(HTMLParser):
    """Every start tag, every attribute (tag, name, value) and every text chunk with its innermost
    element, as a browser would read them (character references resolved)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.texts: list[tuple[str, str]] = []
        self._open: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag not in ("img", "br", "hr", "meta"):
            self._open.append(tag)

    def handle_endtag(self, tag):
        if tag in self._open:
            del self._open[len(self._open) - 1 - self._open[::-1].index(tag):]

    def handle_data(self, data):
        self.texts.append((self._open[-1] if self._open else "", data))

    def text_in(self, tag: str) -> list[str]:
        return [d for t, d in self.texts if t == tag]


def _hostile_sweep(tmp_path):
    """The report test's sweep with hostile text in a run's name, the stories, the completions, a
    command of sweep.json, and (through analysis.json) a taxonomy reason and a check's message."""
    sweep = make_sweep(tmp_path)
    (sweep / "runs" / "d32-l1").rename(sweep / "runs" / RUN)
    for path in sweep.glob("runs/*/eval/*.json"):
        result = json.loads(path.read_text())
        result["completions"][0]["prompt"] = HOSTILE
        result["completions"][0]["completions"] = [HOSTILE]
        path.write_text(json.dumps(result))
    plan = json.loads((sweep / "sweep.json").read_text())
    plan["runs"][0]["commands"] = [f"echo {HOSTILE}"]
    (sweep / "sweep.json").write_text(json.dumps(plan))
    analysis = analyze_sweep(sweep, n_boot=5)
    labelled = next(c for r in analysis["taxonomy"] for c in r["metrics"].values() if c.get("label"))
    labelled["reason"] = HOSTILE
    analysis["checks"]["violations"] = [{"message": HOSTILE}]
    write_json(sweep / "analysis.json", analysis)  # newer than every run file: the report reuses it
    return sweep


def test_report_shows_hostile_text_as_text(tmp_path):
    page = _Page(build_report(_hostile_sweep(tmp_path)).read_text())
    assert "script" not in page.tags  # nothing executable, from the data or otherwise
    assert RUN in page.text_in("td")  # the run's name in the models table, one cell
    assert HOSTILE in page.text_in("div")  # the story's beginning, in its box
    assert page.text_in("td").count(HOSTILE) == 4  # each of the four models' completion
    assert any(f"echo {HOSTILE}" in t for t in page.text_in("pre"))  # the command of sweep.json
    assert HOSTILE in page.text_in("li")  # the check's message in the box at the top
    assert ("td", "title", HOSTILE) in page.attrs  # a taxonomy cell's reason, whole in its attribute


def test_interpret_page_shows_hostile_text_as_text(tmp_path):
    from tinyscale.interpret.page import render

    token = {"text": HOSTILE, "act": 1.0, "level": 1.0, "focus": True}
    neuron = {"layer": 0, "neuron": 3, "label": HOSTILE, "share": 0.5, "base": 0.1, "selectivity": 0.4,
              "p_value": 0.01, "significant": True, "distinct_tokens": 2, "max_act": 1.0, "context_tag": HOSTILE,
              "z": 3.0, "p_perm": 0.01, "contexts": [{"act": 1.0, "tokens": [token], "tags": [HOSTILE]}]}
    context = {"title": f"tinyscale interpret: {HOSTILE}", "subtitle": HOSTILE, "sections": [("summary", HOSTILE)],
               "layers": [0], "stories": 1, "tokens": 1, "top_k": 1, "head_stories": 1, "tags": {},
               "model": None, "control": None, "tag_rows": [], "shown": [neuron],
               "ranked": [{**neuron, "words": [HOSTILE]}], "heatmaps": [], "ablation": None,
               "sizes_png": "AAAA", "sizes_header": [HOSTILE], "sizes_rows": [[RUN]], "local_window": 4,
               "local_min": 0.5, "lift_min": 2.0, "heatmap_tokens": 32}
    page = _Page(render(context, tmp_path / "page.html").read_text())
    assert "script" not in page.tags
    assert f"tinyscale interpret: {HOSTILE}" in page.text_in("title")
    assert HOSTILE in page.text_in("span")  # the token in its context line
    assert ("span", "title", HOSTILE) in page.attrs  # the focus token's tags, whole in the attribute
    assert HOSTILE in page.text_in("th") and RUN in page.text_in("td")  # the sizes table
