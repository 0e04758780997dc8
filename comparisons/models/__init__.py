"""Models and data of the harness: the text-model wrapper, the SST-2 classifier and
language model (trained once, cached), the packaged σ_S recipe and where data is read."""
