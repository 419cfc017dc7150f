"""What the neurons and attention heads of small models do, labelled against the story world.

    tinyscale.interpret.activations(run, texts, names)     named activations, for notebooks
    tinyscale.interpret.interpret(run_or_sweep, out=...)    the page (HTML) and its numbers (JSON)
    tinyscale.interpret.readability(sweep)                  the sweep report's figure and table

Modules: `hooks` (named activations), `wordclass` and `tags` (ground truth per token), `neurons`
(streamed top-k, labels, selectivity, controls), `heads` (attention statistics and classes),
`ablation` (head ablations), `patching` and `patching_figure` (activation patching on the story
world's minimal pairs), `one_model` (one model read, with its random twin), `across_sizes`
(every model of a sweep), `sizes_figure` (their figure and table), `page` (HTML), `write` (the
`interpret` verb: the page and its numbers).
"""

from typing import Any

__all__ = ["activation_names", "activations", "interpret", "readability"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the sweep report reads `readability` without importing torch.
    if name in ("activations", "activation_names"):
        from tinyscale.interpret import hooks as module
    elif name == "interpret":
        from tinyscale.interpret import write as module
    elif name == "readability":
        from tinyscale.interpret import sizes_figure as module
    else:
        raise AttributeError(f"module 'tinyscale.interpret' has no attribute {name!r}")
    return getattr(module, name)
