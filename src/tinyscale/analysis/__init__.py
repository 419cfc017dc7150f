"""Analysis of many runs: scaling-law fits, the emergence taxonomy, figures and the HTML report.

    records = collect_sweep("sweeps/demo")           # plain dicts, one per run x checkpoint
    analysis = analyze_sweep("sweeps/demo")          # fits + taxonomy, writes analysis.json
    build_report("sweeps/demo")                      # plots/*.png and report.html

The fitters (`scaling`) and the classifier (`emergence`) take plain arrays, so they also serve data
that never came from a sweep (see `analyze_csv`).
"""

from tinyscale.analysis.analyze import analyze_csv, analyze_records, analyze_sweep
from tinyscale.analysis.collect import collect_sweep
from tinyscale.analysis.emergence import CLASSES, classify_curve
from tinyscale.analysis.scaling import fit_frontier, fit_parametric, fit_power_law

__all__ = ["CLASSES", "analyze_csv", "analyze_records", "analyze_sweep", "classify_curve", "collect_sweep",
           "fit_frontier", "fit_parametric", "fit_power_law"]
