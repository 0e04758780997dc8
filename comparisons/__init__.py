"""Side-by-side studies of captum_perturb on real models (not part of the library API).

Read the folders as the parts of the harness:

* :mod:`comparisons.study` — explain examples with every method, score, store, report;
* :mod:`comparisons.metrics` — the field's faithfulness metrics, one function each;
* :mod:`comparisons.stats` — the one bootstrap and the paired statistics;
* :mod:`comparisons.layers` — the paper's layer-by-layer analysis;
* :mod:`comparisons.llm` — language models through Captum's LLM API;
* :mod:`comparisons.models` — the models and data the harness runs on;
* :mod:`comparisons.benchmarks` — speed and convergence scripts;
* :mod:`comparisons.html` — the page helpers every HTML page is built with;
* :mod:`comparisons.main_job` — the README's main job; ``python -m comparisons`` the CLI.
"""
