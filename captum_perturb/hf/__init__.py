"""Hugging Face models in one line: :func:`explain` and its :class:`Explanation`.

Also the HTML helpers every page of this project uses for Captum's word table
(:func:`text_record`, :func:`text_table`) and the error bars beside it.
"""

from captum_perturb.hf.explain import explain
from captum_perturb.hf.explanation import Explanation
from captum_perturb.hf.html import error_bars, text_record, text_table

__all__ = ["Explanation", "error_bars", "explain", "text_record", "text_table"]
