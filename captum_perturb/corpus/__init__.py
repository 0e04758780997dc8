"""A whole corpus explained, resumable and shared out over ``torch.distributed`` processes."""

from captum_perturb.corpus.explain import COLUMNS, explain_corpus, read_layer_information

__all__ = ["COLUMNS", "explain_corpus", "read_layer_information"]
