"""What the neurons and attention heads of small models do, labelled against the story world.

    tinyscale.interpret.activations(run, texts, names)     named activations, for notebooks
    tinyscale.interpret.interpret(run_or_sweep, out=...)    the page (HTML) and its numbers (JSON)
    tinyscale.interpret.readability(sweep)                  the sweep report's figure and table

Modules: `activations` (hooks), `wordclass` and `tags` (ground truth per token), `neurons`
(streamed top-k, labels, selectivity, controls), `heads` (attention statistics and classes),
`analyze` (one model), `sweep` (across sizes), `page` (HTML).
"""

from tinyscale.interpret.activations import activation_names, activations
from tinyscale.interpret.run import interpret
from tinyscale.interpret.sweep import readability

__all__ = ["activation_names", "activations", "interpret", "readability"]
