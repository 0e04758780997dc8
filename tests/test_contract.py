"""Captum's contract, checked on both classes through the shared tester (``contract.py``).

Input-level cases use Captum's own toy models (``captum.testing.helpers.basic_models``),
single and tuple inputs, explaining the output or a hidden layer (``state_layer=``). Layer
cases: Captum's ``BasicModel_MultiLayer`` perturbed at its identity layer ``linear0`` (so
Captum's wrappers can perturb float inputs), an embedding + linear toy, and a tiny random
BERT classifier with a padded batch, explaining its logits or an encoder layer's output.
Every model holds a Dropout, so that the train-mode check can fail.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from captum.metrics import sensitivity_max
from captum.testing.helpers.basic_models import (
    BasicLinearModel,
    BasicLinearModel_Multilayer,
    BasicModel_MultiLayer,
    BasicModel_MultiLayer_MultiInput,
)
from contract import SE_FACTOR, ContractTester, Setup, assert_log_sigma_close, one_thread
from torch import Tensor, nn

from captum_perturb import (
    FixedPointConfig,
    LayerPerturbationEntropyAttribution,
    PerturbationEntropyAttribution,
    estimate_state_std,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ONE = torch.tensor(1.0)


class WithDropout(nn.Module):
    """``inner`` behind a Dropout on its floating-point positional inputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.inner = inner

    def forward(self, *args: Any) -> Tensor:
        args = tuple(
            self.drop(a) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args
        )
        return self.inner(*args)


class MaskedSequence(nn.Module):
    """(B, T, 4) floats and a (B, T) padding mask -> (B, 2): identity, tanh layer,
    dropout, linear, mean over the unpadded tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.entry = nn.Identity()
        self.lin1 = nn.Linear(4, 6)
        self.drop = nn.Dropout(0.3)
        self.lin2 = nn.Linear(6, 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.lin2(self.drop(torch.tanh(self.lin1(self.entry(x)))))
        m = mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1)


class EmbeddingLinear(nn.Module):
    """ids (B, T) -> embedding (B, T, 8) -> dropout -> tanh -> linear (B, T, 3) -> mean."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.drop = nn.Dropout(0.3)
        self.linear = nn.Linear(8, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.linear(torch.tanh(self.drop(self.emb(ids)))).mean(1)


X3 = [[1.0, 2.0, 3.0], [0.5, 1.5, 2.0], [3.0, 1.0, 2.0], [2.0, 0.5, 1.0]]


def per_example_targets(two_d: list[int]) -> dict[str, Any]:
    return {
        "none": None,
        "int": two_d[0],
        "tuple": (two_d[1],),
        "list_int": list(two_d),
        "tensor": torch.tensor(two_d),
        "list_tuple": [(t,) for t in two_d],
    }


def multilayer(device: torch.device) -> Setup:
    """BasicModel_MultiLayer, output (B, 2, 2, 2): tuple targets pick differently scaled
    copies of the two logits."""
    model = WithDropout(BasicModel_MultiLayer()).to(device)
    x = torch.tensor(X3, device=device)
    return Setup(
        attr=PerturbationEntropyAttribution(model),
        inputs=x,
        kwargs={"additional_forward_args": (None, True), "state_std": ONE.to(device)},
        model=model,
        target=[(0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 1)],
        targets={
            "none": None,
            "int": 1,
            "tuple": (1, 0, 1),
            "list_tuple": [(0, 0, 0), (1, 1, 0), (0, 1, 1), (1, 0, 1)],
        },
        bad_target=(2, 0, 0),
        feature_mask=torch.tensor([[0, 0, 1]], device=device),
        shapes=(x.shape,),
        raising_module=model.inner.linear1,
        metric_target=(1, 1, 1),
    )


def linear_multilayer(device: torch.device, dtype: torch.dtype = torch.float32) -> Setup:
    """BasicLinearModel_Multilayer with seeded weights: every feature and target differs."""
    torch.manual_seed(0)
    model = WithDropout(BasicLinearModel_Multilayer(3, 5, 2)).to(device, dtype)
    x = torch.tensor(X3, device=device, dtype=dtype)
    return Setup(
        attr=PerturbationEntropyAttribution(model),
        inputs=x,
        kwargs={"state_std": ONE.to(device, dtype), "sigma_max": 10.0},
        model=model,
        target=torch.tensor([0, 1, 1, 0], device=device),
        targets=per_example_targets([0, 1, 1, 0]),
        bad_target=5,
        feature_mask=torch.tensor([[0, 1, 1], [2, 2, 0], [0, 0, 0], [1, 2, 3]], device=device),
        shapes=(x.shape,),
        raising_module=model.inner.linear2,
        metric_target=1,
        linear_state=True,
    )


def hidden_state(device: torch.device) -> Setup:
    """Explain the hidden layer ``linear1`` (B, 5) of BasicLinearModel_Multilayer with
    ``state_layer=``: a capture hook is active and every target picks a different unit."""
    torch.manual_seed(5)
    model = WithDropout(BasicLinearModel_Multilayer(3, 5, 2)).to(device)
    x = torch.tensor(X3, device=device)
    return Setup(
        attr=PerturbationEntropyAttribution(model),
        inputs=x,
        kwargs={"layer": model.inner.linear1, "state_std": ONE.to(device), "sigma_max": 10.0},
        model=model,
        target=None,
        targets=per_example_targets([0, 3, 1, 4]),
        bad_target=5,
        feature_mask=torch.tensor([[1, 0, 1]], device=device),
        shapes=(x.shape,),
        raising_module=model.inner.linear1,
        metric_target=1,
    )


def tuple_multi_input(device: torch.device) -> Setup:
    """BasicModel_MultiLayer_MultiInput: three inputs and an int side input (scale)."""
    model = WithDropout(BasicModel_MultiLayer_MultiInput()).to(device)
    x = torch.tensor(X3, device=device)
    inputs = (x, 0.5 * x.flip(1), 0.1 * x + 0.2)
    mask = tuple(torch.tensor(m, device=device) for m in ([[0, 1, 2]], [[0, 0, 1]], [[3, 3, 3]]))
    return Setup(
        attr=PerturbationEntropyAttribution(model),
        inputs=inputs,
        kwargs={"additional_forward_args": (2,), "state_std": ONE.to(device), "sigma_max": 5.0},
        model=model,
        target=1,
        targets=per_example_targets([1, 0, 0, 1]),
        bad_target=[0, 1, 2, 0],
        feature_mask=mask,
        shapes=tuple(t.shape for t in inputs),
        raising_module=model.inner.model.linear2,
        metric_target=0,
    )


def tuple_linear(device: torch.device) -> Setup:
    """BasicLinearModel: inputs (B, 3) and (B, 4) concatenated into Linear(7, 1)."""
    torch.manual_seed(1)
    model = WithDropout(BasicLinearModel()).to(device)
    gen = torch.Generator().manual_seed(2)
    inputs = (
        torch.randn(3, 3, generator=gen).to(device),
        torch.randn(3, 4, generator=gen).to(device),
    )
    return Setup(
        attr=PerturbationEntropyAttribution(model),
        inputs=inputs,
        kwargs={"state_std": ONE.to(device)},
        model=model,
        target=0,
        targets=per_example_targets([0, 0, 0]),
        bad_target=1,
        feature_mask=(
            torch.tensor([[0, 1, 0]], device=device),
            torch.tensor([[1, 2, 2, 3]], device=device),
        ),
        shapes=tuple(t.shape for t in inputs),
        raising_module=model.inner.linear,
        metric_target=0,
    )


def layer_identity(device: torch.device) -> Setup:
    """Layer class on BasicModel_MultiLayer's identity layer ``linear0``: the layer value
    equals the input, so NoiseTunnel and the metrics apply."""
    model = WithDropout(BasicModel_MultiLayer()).to(device)
    x = torch.tensor(X3, device=device)
    return Setup(
        attr=LayerPerturbationEntropyAttribution(model, model.inner.linear0),
        inputs=x,
        kwargs={"state_std": ONE.to(device), "sigma_max": 10.0},
        model=model,
        target=0,
        targets=per_example_targets([0, 1, 1, 0]),
        bad_target=-3,
        feature_mask=torch.tensor([[0, 0, 1]], device=device),
        shapes=(x.shape,),
        raising_module=model.inner.linear0,
        metric_target=1,
    )


def embedding_linear(device: torch.device) -> Setup:
    """Layer class on an nn.Embedding: token ids in, one σ per token by default."""
    torch.manual_seed(3)
    model = EmbeddingLinear().to(device)
    ids = torch.tensor([[1, 5, 7, 2, 9], [4, 4, 11, 3, 0], [13, 2, 6, 8, 19]], device=device)
    return Setup(
        attr=LayerPerturbationEntropyAttribution(model, model.emb),
        inputs=ids,
        kwargs={"state_std": torch.tensor(0.05, device=device)},
        model=model,
        target=[2, 0, 1],
        targets=per_example_targets([2, 0, 1]),
        bad_target=3,
        feature_mask=torch.tensor([[0, 0, 1, 2, 2]], device=device).unsqueeze(-1),
        shapes=(torch.Size([3, 5, 8]),),
        raising_module=model.emb,
        float_inputs=False,
    )


def masked_tokens(device: torch.device, layer: bool = False) -> Setup:
    """A padded batch of float sequences with ``attention_mask=`` (also passed to the
    model) and one σ per token (``feature_mask="token"`` / the layer class's default
    ``layer_mask="token"`` on an identity layer): Captum's wrappers expand the inputs
    and ``additional_forward_args`` but not these keywords."""
    torch.manual_seed(6)
    model = MaskedSequence().to(device)
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(7)).to(device)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], device=device)
    kwargs: dict[str, Any] = {
        "additional_forward_args": (mask,),
        "attention_mask": mask,
        "state_std": torch.tensor(0.1, device=device),
    }
    if layer:
        attr: Any = LayerPerturbationEntropyAttribution(model, model.entry)
    else:
        attr = PerturbationEntropyAttribution(model)
        kwargs["feature_mask"] = "token"
    return Setup(
        attr=attr,
        inputs=x,
        kwargs=kwargs,
        model=model,
        target=torch.tensor([0, 1, 1], device=device),
        targets=per_example_targets([0, 1, 1]),
        bad_target=2,
        feature_mask=torch.tensor([[0, 1, 1, 2, 2]], device=device).unsqueeze(-1),
        shapes=(x.shape,),
        raising_module=model.lin1,
        metric_target=1,
    )


def _tiny_bert(device: torch.device) -> tuple[nn.Module, Tensor, Tensor]:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(4)
    config = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = BertForSequenceClassification(config).to(device)
    ids = torch.tensor([[2, 17, 45, 8, 3], [2, 61, 9, 3, 0], [2, 33, 3, 0, 0]], device=device)
    return model, ids, (ids != 0).long()


def _corpus_std(forward: Any, device: torch.device, **kwargs: Any) -> Tensor:
    """σ_S over 32 random unpadded sentences of 5 tokens, as one number (the RMS over the
    state's elements) so that it fits the state selected by every target form."""
    corpus = torch.randint(5, 100, (32, 5), generator=torch.Generator().manual_seed(0))
    corpus = corpus.to(device)
    std = estimate_state_std(forward, corpus, (torch.ones_like(corpus),), **kwargs)
    return std.square().mean().sqrt()


def tiny_bert(device: torch.device) -> Setup:
    """Layer class on a tiny random BERT classifier's embeddings, padded batch; the
    logits (a random BERT reads mostly [CLS]) are explained."""
    model, ids, mask = _tiny_bert(device)

    def forward(i: Tensor, m: Tensor) -> Tensor:
        return model(input_ids=i, attention_mask=m).logits

    return Setup(
        attr=LayerPerturbationEntropyAttribution(forward, model.bert.embeddings),
        inputs=ids,
        kwargs={
            "additional_forward_args": (mask,),
            "attention_mask": mask,
            "state_std": _corpus_std(forward, device),
        },
        model=model,
        target=[1, 0, 2],
        targets=per_example_targets([1, 0, 2]),
        bad_target=[0, 1, 3],
        feature_mask=torch.tensor([[0, 1, 1, 2, 2]], device=device).unsqueeze(-1),
        shapes=(torch.Size([3, 5, 16]),),
        raising_module=model.bert.encoder.layer[0],
        float_inputs=False,
    )


def tiny_bert_hidden(device: torch.device) -> Setup:
    """As ``tiny_bert``, explaining the (B, T, 16) output of the second encoder layer
    (``state_layer``): every token is encoded, padded states are not counted."""
    model, ids, mask = _tiny_bert(device)

    def forward(i: Tensor, m: Tensor) -> Tensor:
        return model(input_ids=i, attention_mask=m).logits

    block = model.bert.encoder.layer[1]
    return Setup(
        attr=LayerPerturbationEntropyAttribution(forward, model.bert.embeddings),
        inputs=ids,
        kwargs={
            "additional_forward_args": (mask,),
            "attention_mask": mask,
            "state_layer": block,
            "state_std": _corpus_std(forward, device, state_layer=block),
        },
        model=model,
        target=None,
        targets={
            "none": None,
            "int": 1,
            "tuple": (0, 3),
            "list_tuple": [(0, 1), (1, 2), (2, 0)],
        },
        bad_target=(5,),
        feature_mask=torch.tensor([[0, 1, 1, 2, 2]], device=device).unsqueeze(-1),
        shapes=(torch.Size([3, 5, 16]),),
        raising_module=block,
        float_inputs=False,
    )


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


CASES = {
    "multilayer": multilayer,
    "linear_multilayer": linear_multilayer,
    "linear_multilayer_f64": lambda d: linear_multilayer(d, torch.float64),
    "hidden_state": hidden_state,
    "tuple_multi_input": tuple_multi_input,
    "tuple_linear": tuple_linear,
    "layer_identity": layer_identity,
    "masked_tokens": masked_tokens,
    "layer_masked_tokens": lambda d: masked_tokens(d, layer=True),
    "layer_embedding_linear": embedding_linear,
    "layer_tiny_bert": tiny_bert,
    "layer_tiny_bert_hidden": tiny_bert_hidden,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("check", ContractTester.CHECKS)
@pytest.mark.parametrize("case", list(CASES))
def test_contract(case: str, check: str, device: str) -> None:
    ContractTester(CASES[case], device).run(check)


def test_model_state_with_reference_adam_config() -> None:
    """The reference (Adam) estimator must not leave gradients on the model either."""
    from captum_perturb import AdamConfig

    tester = ContractTester(linear_multilayer)
    tester.check_model_state(config=AdamConfig(steps=3, n_samples=2))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_jit_traced_model_matches_eager() -> None:
    s = linear_multilayer(torch.device("cpu"))
    s.model.eval()
    traced = torch.jit.trace(s.model, (s.inputs,))
    eager = s.explain()
    res = PerturbationEntropyAttribution(traced).explain(s.inputs, **s.call_kwargs())
    torch.testing.assert_close(res.attributions, eager.attributions)
    for i in range(s.batch):
        assert_log_sigma_close(eager, i, res, i)


@pytest.mark.parametrize("case", ["linear_multilayer", "hidden_state", "layer_embedding_linear"])
def test_targets_select_different_states(case: str) -> None:
    """Sanity of the cases: different targets give different σ, so the per-example
    comparisons above would catch a target applied to the wrong example."""
    s = CASES[case](torch.device("cpu"))
    a = s.explain(target=0).estimate.log_sigma
    b = s.explain(target=1).estimate.log_sigma
    assert bool(((a - b).abs() > 0.05).any(1).all())


@pytest.mark.parametrize("kind", ["layer", "input"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_matches_float32(dtype: torch.dtype, kind: str) -> None:
    """A half-precision model gives the σ of the same weights in float32.

    The values are perturbed and the state compared in float32 and the model runs in
    ``dtype`` (``_checks.working_dtype``). The two runs differ by (1) Monte-Carlo error,
    bounded as in ``contract.py`` by ``SE_FACTOR sqrt(se_h² + se_f²)`` (the runs draw the
    same float32 noise, so this is conservative), and (2) rounding inside the model: each
    of the ~24 rounded operations on the path from the perturbed value to the state (12
    per BERT layer: LayerNorm, Q, K, V, softmax, attention·V, output, residual, LayerNorm,
    FFN in, GELU, FFN out) changes the state and its gradient by a relative u at most
    (unit roundoff, eps / 2), so ``n u`` bounds their relative error to first order
    (Higham's gamma_n); the curvature a_g is a squared gradient norm (relative error <= 2 n u)
    and log σ_g = -½ log a_g + const moves by <= n u: 0.094 in bfloat16, 0.012 in float16.
    The issue's bug (bfloat16: every σ at σ_max, 0 nats, against 114-157 nats in float32)
    and a crash in half-precision linear algebra both fail this.
    """
    import copy

    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    half = BertModel(config).eval().to(dtype)
    full = copy.deepcopy(half).float()  # the same rounded weights, float32 arithmetic
    ids = torch.tensor([[2, 17, 45, 8, 3, 9, 11], [2, 61, 9, 3, 0, 0, 0]])
    mask = (ids != 0).long()
    results = []
    for model in (half, full):
        if kind == "layer":

            def fwd(i: Tensor, m: Tensor, model: nn.Module = model) -> Tensor:
                return model(input_ids=i, attention_mask=m).last_hidden_state

            explainer: Any = LayerPerturbationEntropyAttribution(fwd, model.embeddings)
            inputs, mask_kw = ids, {}
        else:

            def fwd(e: Tensor, m: Tensor, model: nn.Module = model) -> Tensor:
                return model(inputs_embeds=e, attention_mask=m).last_hidden_state

            explainer = PerturbationEntropyAttribution(fwd)
            inputs = model.embeddings.word_embeddings(ids).detach()
            mask_kw = {"feature_mask": "token", "sigma_max": 0.5}
        res = explainer.explain(
            inputs, None, (mask,), attention_mask=mask, state_std=torch.tensor(0.2), **mask_kw
        )
        results.append(res)
    res_h, res_f = results
    assert res_h.attributions.dtype == dtype and res_h.sigma.dtype == dtype
    assert res_h.estimate.log_sigma.dtype == torch.float32
    assert bool(res_h.estimate.converged.all() and res_f.estimate.converged.all())
    assert bool((res_h.estimate.log_ratio.nan_to_num(0).sum(1) > 1.0).all()), "no σ at σ_max"
    n_ops, u = 24, torch.finfo(dtype).eps / 2
    ls_h, ls_f = res_h.estimate.log_sigma, res_f.estimate.log_sigma
    se_h, se_f = res_h.estimate.std_error, res_f.estimate.std_error
    present = ~ls_f.isnan()
    assert torch.equal(present, ~ls_h.isnan())
    tol = SE_FACTOR * (se_h.square() + se_f.square()).sqrt() + n_ops * u
    diff = (ls_h - ls_f).abs()
    assert bool((diff[present] <= tol[present]).all()), (diff, tol)


class _ShapeDependent(nn.Module):
    """A linear state plus an offset that grows with the number of rows in the call: the
    worst case of a BLAS kernel whose round-off depends on the batch's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.w = nn.Parameter(torch.linspace(0.5, 2.0, 6))

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(x * self.w) + 1e-6 * x.shape[0]


@pytest.mark.parametrize("shape_dependent", [False, True])
def test_batch_dependence_is_flagged_and_warned(shape_dependent: bool) -> None:
    """The clean copies of the Jacobian pass (4 projections x 3 examples, in chunks of 2)
    reproduce the clean pass (3 rows) bit for bit exactly when the model's output does not
    depend on the call's shape; the chunked result says so in its flag and its warning,
    and an unchunked call flags it without a warning (the caller chose no batching)."""
    model = _ShapeDependent().eval()
    if not shape_dependent:
        model.forward = lambda x: model.dropout(x * model.w)  # type: ignore[method-assign]
    x = torch.linspace(-1.0, 1.0, 18).reshape(3, 6)
    attr = PerturbationEntropyAttribution(model)
    cfg = FixedPointConfig(n_projections=4, max_iter=3)
    for size in (2, None):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = attr.explain(x, state_std=torch.ones(6), config=cfg, internal_batch_size=size)
        warned = any("internal_batch_size" in str(w.message) for w in caught)
        assert res.estimate.batch_dependent.tolist() == [shape_dependent] * 3
        assert res.diagnostics["batch_dependent"].tolist() == [shape_dependent] * 3
        assert warned == (shape_dependent and size is not None)


def test_sensitivity_max_needs_the_layer_by_name() -> None:
    """Captum's ``sensitivity_max`` deep-copies its keyword arguments: a ``state_layer=`` module
    arrives as a copy that the model never runs, which raises the error that names the
    workaround; the module's name works (``check_captum_metrics`` runs it)."""
    s = hidden_state(torch.device("cpu"))
    s.model.eval()
    kwargs = s.call_kwargs(target=1)

    def explain_func(inp: Any, **kw: Any) -> Any:
        return s.attr.attribute(inp, **kw)

    with pytest.raises(RuntimeError, match="deep copy"):
        sensitivity_max(explain_func, s.inputs, n_perturb_samples=2, **kwargs)
    kwargs["layer"] = "inner.linear1"
    sens = sensitivity_max(explain_func, s.inputs, n_perturb_samples=2, **kwargs)
    assert sens.shape == (s.batch,)
    with pytest.raises(ValueError, match=r"no module named 'inner\.nope'"):
        s.attr.attribute(s.inputs, state_layer="inner.nope", state_std=ONE)
    with pytest.raises(TypeError, match="pass the module itself"):
        PerturbationEntropyAttribution(lambda x: s.model(x)).attribute(
            s.inputs, state_layer="inner"
        )


def test_callable_target_is_captums_neuron_selector() -> None:
    """A callable target (Captum's ``neuron_selector`` function) explains what it returns:
    ``lambda s: s[:, 1]`` is ``target=1`` bit for bit (same state, same draws); one that
    does not keep a row per copy is refused with the rule it broke."""
    s = linear_multilayer(torch.device("cpu"))
    s.model.eval()
    by_index = s.explain(target=1)
    by_callable = s.explain(target=lambda state: state[:, 1])
    assert torch.equal(by_index.attributions, by_callable.attributions)
    with pytest.raises(ValueError, match="one row per copy"):
        s.explain(target=lambda state: state.sum())


def test_round_off_is_not_mistaken_for_a_stochastic_model() -> None:
    """The "stochastic model" check compares each copy's whole state: a deterministic
    model whose near-zero element rounds differently at another batch shape (here 5e-6
    per row of the call, 4.5e-5 between the 3-row clean pass and a 12-row one, far above
    an elementwise 1e-5) passes and is flagged as batch-dependent; dropout of rate 0.001
    in train mode, which moves the state by about 3 % of its norm, still raises."""
    w = torch.linspace(0.5, 2.0, 6)

    def deterministic(x: Tensor) -> Tensor:
        big = 100.0 * x * w
        return torch.cat([big, 5e-6 * x.shape[0] + 0 * x[:, :1]], dim=1)

    x = torch.linspace(-1.0, 1.0, 18).reshape(3, 6)
    kw: dict[str, Any] = {"state_std": torch.ones(7), "config": FixedPointConfig(max_iter=3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3 iterations: unconverged, and said so
        res = PerturbationEntropyAttribution(deterministic).explain(x, **kw)
    assert bool(res.estimate.batch_dependent.all())

    def stochastic(x: Tensor) -> Tensor:
        return nn.functional.dropout(100.0 * x.repeat(1, 200), p=0.001, training=True)

    with pytest.raises(RuntimeError, match="stochastic"):
        PerturbationEntropyAttribution(stochastic).explain(x, state_std=torch.ones(1200))
