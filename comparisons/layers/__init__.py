"""The paper's layer-by-layer analysis (``python -m comparisons layers``).

Modules:

* :mod:`~comparisons.layers.groups` — stop words, the VADER lexicon, token groups by
  whole word.
* :mod:`~comparisons.layers.curves` — per-sentence sums, the depth curves and their
  bootstrap intervals (curves, group ratios, paired changes between models).
* :mod:`~comparisons.layers.plots` — tokens × layers heatmaps and depth-curve figures.
* :mod:`~comparisons.layers.page` — the HTML pages (``layers.html``, ``index.html``).
* :mod:`~comparisons.layers.run` — :func:`~comparisons.layers.run.run_layers`, model
  loading, sentence files, threads.
"""
