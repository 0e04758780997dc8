"""One options object (issue 23): every entry point names each estimator setting the same
way, takes it as ``options=EstimatorOptions(...)`` or by keyword, and gives the same σ.

The closed forms here are equalities between two calls that must run the same estimator
with the same noise (``torch.equal``), and the exceptions the options raise.
"""

from __future__ import annotations

import inspect
import tempfile
import warnings
from dataclasses import fields
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch
import transformers
from captum.attr import TextTokenInput
from llm_models import BOS, causal_lm, tokenizer
from torch import nn

from captum_perturb import (
    DEFAULT,
    EstimatorOptions,
    EstimatorSettings,
    FixedPointConfig,
    LayerPerturbationEntropyAttribution,
    LLMPerturbationEntropyAttribution,
    PerturbationEntropyAttribution,
    estimate_state_std,
    explain_corpus,
    explain_layers,
)
from captum_perturb.options import SETTINGS

QUICK = FixedPointConfig(max_iter=4, n_samples=8)
#: settings that differ from every default, so that a dropped one changes σ
GIVEN: dict[str, Any] = {"rate": 0.3, "sigma_max": 2.0, "config": QUICK, "seed": 5}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def _bert() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    return transformers.BertModel(cfg).eval()


def _encoding() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor([[2, 7, 9, 3], [2, 8, 3, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
    }


def test_the_keyword_form_is_the_options_object() -> None:
    """``EstimatorSettings`` (what type checkers see for ``**settings``) has exactly
    ``EstimatorOptions``' fields with the same types: the two cannot drift apart."""
    assert tuple(EstimatorSettings.__annotations__) == SETTINGS
    for f in fields(EstimatorOptions):
        given = EstimatorSettings.__annotations__[f.name]  # a ForwardRef (postponed)
        assert getattr(given, "__forward_arg__", given) == f.type, f.name


#: every entry point: (callable, the names its own signature must not repeat)
ENTRY_POINTS = {
    "PerturbationEntropyAttribution.attribute": PerturbationEntropyAttribution.attribute,
    "PerturbationEntropyAttribution.explain": PerturbationEntropyAttribution.explain,
    "LayerPerturbationEntropyAttribution.attribute": LayerPerturbationEntropyAttribution.attribute,
    "LayerPerturbationEntropyAttribution.explain": LayerPerturbationEntropyAttribution.explain,
    "LLMPerturbationEntropyAttribution.attribute": LLMPerturbationEntropyAttribution.attribute,
    "explain_layers": explain_layers,
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_points_share_one_signature_for_the_settings(name: str) -> None:
    """No entry point lists a setting itself (each is defined and documented once, in
    ``EstimatorOptions``); each takes ``options`` and ``**settings``, and Captum's batch
    keyword under Captum's name."""
    params = inspect.signature(ENTRY_POINTS[name]).parameters
    assert not set(SETTINGS) & set(params), "settings belong to EstimatorOptions"
    assert "options" in params and params["options"].kind is inspect.Parameter.KEYWORD_ONLY
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert "internal_batch_size" in params
    if "state_layer" in params or "layer" in params:
        assert "state_layer" in params, "the explained state's layer is called state_layer"


@pytest.mark.parametrize("cls", ["input", "layer"])
def test_options_and_keywords_give_the_same_sigma(cls: str) -> None:
    model = _model()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    if cls == "input":
        pe: Any = PerturbationEntropyAttribution(model)
        inputs = x
    else:
        pe = LayerPerturbationEntropyAttribution(model, model[0])
        inputs = x
    std = torch.ones(3)
    by_keyword = pe.explain(inputs, state_std=std, **GIVEN)
    by_object = pe.explain(inputs, options=EstimatorOptions(state_std=std, **GIVEN))
    assert torch.equal(by_keyword.estimate.sigma, by_object.estimate.sigma)
    # a keyword overrides the same field of options
    mixed = pe.explain(inputs, options=EstimatorOptions(state_std=std, **GIVEN), seed=6)
    other_seed = pe.explain(inputs, state_std=std, **{**GIVEN, "seed": 6})
    assert torch.equal(mixed.estimate.sigma, other_seed.estimate.sigma)
    assert not torch.equal(mixed.estimate.sigma, by_object.estimate.sigma)
    # every given setting reaches the estimator: dropping one changes σ
    for key in GIVEN:
        dropped = pe.explain(inputs, state_std=std, **{k: v for k, v in GIVEN.items() if k != key})
        assert not torch.equal(dropped.estimate.sigma, by_keyword.estimate.sigma), key
    paper = pe.explain(inputs, state_std=std, score="paper", **GIVEN)
    assert paper.score == "paper" and by_keyword.score == "channel"


def test_explain_layers_and_explain_corpus_take_the_options() -> None:
    model, enc = _bert(), _encoding()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback σ_S and saturation warnings
        by_keyword = explain_layers(model, enc, [0, 2], **GIVEN)
        by_object = explain_layers(model, enc, [0, 2], options=EstimatorOptions(**GIVEN))
        path = explain_corpus(
            model, [enc], tempfile.mkdtemp(), seed=5, show_progress=False, layers=[0, 2],
            options=EstimatorOptions(**{k: v for k, v in GIVEN.items() if k != "seed"}),
        )  # fmt: skip
    assert torch.equal(by_keyword.sigma.nan_to_num(), by_object.sigma.nan_to_num())
    assert by_object.rate == GIVEN["rate"] and by_object.sigma_max == GIVEN["sigma_max"]
    table = pq.read_table(path).to_pydict()
    assert sorted(set(table["layer"])) == [0, 2]
    # batch 0 of the corpus is explained with seed 5 + 0: the same σ as the direct call
    from_corpus = sorted(v for v in table["sigma"] if v is not None and v == v)
    direct = sorted(by_object.sigma[by_object.sigma.isfinite()].tolist())
    assert torch.equal(torch.tensor(from_corpus), torch.tensor(direct))


def test_the_llm_class_takes_the_options() -> None:
    tok, model = tokenizer(), causal_lm("gpt2")
    llm_attr = LLMPerturbationEntropyAttribution(model, tok, state_std=torch.ones(1))
    inp = TextTokenInput("the film is a", tok, skip_tokens=[BOS])
    std = torch.ones(model.config.vocab_size)
    kw = {k: v for k, v in GIVEN.items() if k != "sigma_max"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = llm_attr.attribute(inp, target="charming", state_std=std, **kw)
        b = llm_attr.attribute(
            inp, target="charming", options=EstimatorOptions(state_std=std, **kw)
        )
    assert torch.equal(a.seq_attr, b.seq_attr) and torch.equal(a.estimate.sigma, b.estimate.sigma)


def test_bad_options_get_clear_errors() -> None:
    pe = PerturbationEntropyAttribution(_model())
    x = torch.randn(2, 4)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['rte'\].*rate"):
        pe.attribute(x, rte=0.1)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"options must be a captum_perturb\.EstimatorOptions"):
        pe.attribute(x, options={"rate": 0.1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rate must be a positive finite number"):
        EstimatorOptions(rate=float("inf"))
    with pytest.raises(ValueError, match="score must be 'channel' or 'paper'"):
        pe.attribute(x, score="nats")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"\{layer: σ_S\} mapping is for explain_layers"):
        pe.attribute(x, state_std={0: torch.ones(3)})
    model, enc = _bert(), _encoding()
    with pytest.raises(ValueError, match="explain_layers reports the paper's information"):
        explain_layers(model, enc, score="channel")
    with pytest.raises(TypeError, match=r"state_std as \{layer: σ_S\}"):
        explain_layers(model, enc, state_std=torch.ones(16))
    with pytest.raises(ValueError, match="seed= to explain_corpus"):
        explain_corpus(model, [enc], tempfile.mkdtemp(), options=EstimatorOptions(seed=3))


def test_former_names_still_work_with_a_warning() -> None:
    """``layer=`` → ``state_layer=`` and ``batch_size=`` → ``internal_batch_size=``: the
    same result, a FutureWarning; both names at once is an error."""
    model = _model()
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    pe = PerturbationEntropyAttribution(model)
    new = pe.attribute(x, state_layer=model[1], state_std=torch.ones(6), config=QUICK)
    with pytest.warns(FutureWarning, match="layer= is now called state_layer="):
        old = pe.attribute(x, layer=model[1], state_std=torch.ones(6), config=QUICK)
    assert torch.equal(new, old)
    with pytest.raises(TypeError, match="pass state_layer= only"):
        pe.attribute(x, layer=model[1], state_layer=model[1])
    with pytest.warns(FutureWarning, match="layer= is now called state_layer="):
        s_old = estimate_state_std(model, torch.randn(8, 4), layer=model[1])
    assert s_old.shape == (6,)
    bert, enc = _bert(), _encoding()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        a = explain_layers(bert, enc, [1], config=QUICK, internal_batch_size=3)
        with pytest.warns(FutureWarning, match="batch_size= is now called internal_batch_size="):
            b = explain_layers(bert, enc, [1], config=QUICK, batch_size=3)
    assert torch.equal(a.sigma.nan_to_num(), b.sigma.nan_to_num())


def test_options_default_is_the_documented_default() -> None:
    """``EstimatorOptions()`` is what a call without settings runs: σ is the same."""
    pe = PerturbationEntropyAttribution(_model())
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    plain = pe.explain(x, state_std=torch.ones(3))
    boxed = pe.explain(x, options=EstimatorOptions(state_std=torch.ones(3), config=DEFAULT))
    assert torch.equal(plain.estimate.sigma, boxed.estimate.sigma)


def test_warnings_point_at_the_callers_line() -> None:
    """Every warning of a call is attributed to the caller's line (here: this file), not
    to a line inside the package or Captum's ``log_usage`` wrapper, however deep the call
    chain: that is where a user reads it and where warning filters match it."""
    model = _model()
    pe = PerturbationEntropyAttribution(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pe.attribute(torch.randn(2, 4), config=FixedPointConfig(max_iter=2, tol=1e-6))
        pe.attribute(torch.randn(2, 4), layer=model[1], state_std=torch.ones(6))
        explain_layers(_bert(), _encoding(), [1], config=QUICK)
    kinds = {type(w.message) for w in caught}
    assert kinds == {UserWarning, FutureWarning}, kinds
    assert len(caught) >= 4  # fallback σ_S ×2, unconverged, renamed keyword, ...
    assert {w.filename for w in caught} == {__file__}, [(w.filename, w.lineno) for w in caught]
