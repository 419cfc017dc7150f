"""examples/quickstart.ipynb runs from top to bottom, in a fresh kernel of this interpreter, and shows
what it promises: a per-skill table, a plot, samples and one neuron."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="the notebook test needs nbclient (dev extra)")
nbformat = pytest.importorskip("nbformat", reason="the notebook test needs nbformat (dev extra)")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (dev extra)")
pytest.importorskip("matplotlib", reason="the notebook draws with matplotlib")

NOTEBOOK = Path(__file__).parents[1] / "examples" / "quickstart.ipynb"


def _text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        out.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "".join(out)


@pytest.mark.slow
def test_quickstart_notebook_runs_and_shows_its_results(tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "store the notebook without outputs"
    # Kernel "python3" is ipykernel's own spec: this interpreter; the source tree importable as here.
    src = str(Path(__file__).parents[1] / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's scratch folder
    client = nbclient.NotebookClient(nb, timeout=300, startup_timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, when one fails

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    text = "\n".join(_text(c) for c in code)
    # The per-skill table: a row per skill with its loss.
    table = next(_text(c) for c in code if "evaluate_run(" in c.source)
    for skill in ("grammar", "fact", "reasoning", "tracking", "free"):
        assert any(line.split()[0] == skill and float(line.split()[2]) > 0 for line in table.splitlines()[1:]
                   if line.strip()), skill
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1
    assert text.count("Once upon a time") >= 2 and "---" in text  # two samples
    assert "neuron" in text and "top tokens:" in text
    assert any(tmp_path.glob("tinyscale-quickstart-*/runs/tiny/interpret.json"))  # worked in a temp folder
