"""Benchmark scripts (``python -m comparisons.benchmarks.<name>``): each prints ratios
against a baseline run in the same process; none is a timed test.

* :mod:`.speed` — the default estimator against LayerIntegratedGradients per workload
  (its parts: ``speed_workloads`` the models and states, ``speed_runs`` the timed runs,
  ``speed_accuracy`` the accuracy against the high-precision optimum, ``speed_meters``
  time and memory, ``speed_report`` the table);
* :mod:`.layers` — all layers in one call against the last layer alone;
* :mod:`.llm` — the LLM API against Captum's LLM attributions;
* :mod:`.convergence` — converged fraction and evaluations per workload;
* :mod:`.variance_probe` — variance-reduction levers per model evaluation;
* :mod:`.scaling` — throughput of ``explain_corpus`` on N processes.
"""
