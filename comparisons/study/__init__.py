"""The side-by-side study: methods, the run, its store and statistics, and the report.

* :mod:`.vocabulary` — the metrics' names, directions and descriptions, the headline
  metrics per task and the default reference method;
* :mod:`.methods` — the registry of attribution methods (one entry per method); the
  methods themselves in :mod:`.ours` (our variants) and :mod:`.baselines` (Captum's and
  the random floor), over :mod:`.context` (what a method gets: the example's inputs,
  the reuse cache, σ_S per key);
* :mod:`.run` — :func:`~comparisons.study.run.run_study`: explain, score, store;
* :mod:`.scoring` — the metrics of one explanation of one example;
* :mod:`.cascade` — the cascading model randomisation (the sanity check) of a run;
* :mod:`.shards` — one study shared by N processes (``torchrun``) and their merge;
* :mod:`.store` — the resumable run folder (tidy results, explanations, curves);
* :mod:`.sanity` — the sanity check summarised: ρ per stage, pass or fail;
* :mod:`.summary` — a run's statistics and what its ``meta.json`` says, as the report
  reads them;
* :mod:`.verdict` — the report's verdict paragraph, written from the numbers;
* :mod:`.figures` — the report's figures: overview, mean curves, sanity check;
* :mod:`.tables` — the report's tables: headline, every metric, sanity, definitions;
* :mod:`.heatmaps` — the report's per-example rows of Captum ``visualize_text``;
* :mod:`.report` — the HTML report and its Markdown summary.

The metrics themselves are in :mod:`comparisons.metrics`, the statistics in
:mod:`comparisons.stats`.
"""
