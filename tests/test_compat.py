"""Pins what ``captum_perturb/_compat.py`` takes from Captum's private modules.

Captum's underscore helpers may move or change between releases; each is imported in one
place and its behaviour that the package relies on is checked here, so that an upgrade
breaks this file first, with the name of the helper.
"""

from __future__ import annotations

import inspect

import captum
import torch
from llm_models import causal_lm, tokenizer

from captum_perturb import LLMPerturbationEntropyAttribution
from captum_perturb._utils import compat as _compat


def test_captum_version_is_in_the_supported_range() -> None:
    major, minor = (int(x) for x in captum.__version__.split(".")[:2])
    assert (major, minor) == (0, 9), "pyproject pins captum>=0.9,<0.10; re-check _compat"


def test_tensor_helpers() -> None:
    x = torch.zeros(2, 3)
    assert _compat.format_tensor_into_tuples(x) == (x,)
    assert _compat.format_additional_forward_args(x) == (x,)
    assert _compat.format_additional_forward_args(None) is None
    assert _compat.format_output(False, (x,)) is x
    assert _compat.format_output(True, (x, x)) == (x, x)
    assert _compat.is_mask_valid(torch.zeros(1, 3, dtype=torch.long), x)
    out = torch.arange(6.0).view(2, 3)
    assert _compat.select_targets(out, 1).tolist() == [1.0, 4.0]
    assert _compat.select_targets(out, torch.tensor([0, 2])).tolist() == [0.0, 5.0]
    assert _compat.select_targets(out, None) is out


def test_progress_is_a_context_bar() -> None:
    bar = _compat.progress(desc="x", total=2, disable=True)
    bar.update()
    bar.close()


def test_llm_helpers() -> None:
    """What LLMPerturbationEntropyAttribution takes from captum.attr._core.llm_attr."""
    tok = tokenizer()
    ids = torch.tensor(tok.encode(" charming ride", add_special_tokens=False))
    assert _compat.convert_ids_to_pretty_tokens(ids, tok) == ["charming", "ride"]
    assert _compat.DEFAULT_GEN_ARGS["max_new_tokens"] == 25
    assert _compat.DEFAULT_GEN_ARGS["do_sample"] is False
    params = inspect.signature(_compat.BaseLLMAttribution.__init__).parameters
    assert list(params)[1:] == ["attr_method", "tokenizer"]
    # the base sets model, tokenizer and device from the wrapped method's forward_func
    model = causal_lm("gpt2")
    llm_attr = LLMPerturbationEntropyAttribution(model, tok)
    assert isinstance(llm_attr, _compat.BaseLLMAttribution)
    assert llm_attr.model is model and llm_attr.tokenizer is tok
    assert llm_attr.device == torch.device("cpu")
