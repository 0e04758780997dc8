"""Bad inputs fail early with a message that says how to fix them, and leave no hook.

Every case runs through both classes where it applies: the input-level class explaining
a hidden layer (``layer=``, so a capture hook is active) and the layer class (a replace
hook on the perturbed layer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from contract import assert_no_hooks, one_thread
from torch import Tensor, nn

from captum_perturb import LayerPerturbationEntropyAttribution, PerturbationEntropyAttribution

B, T, D = 2, 4, 5


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


class MaskedMean(nn.Module):
    def forward(self, out: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None:
            return out.mean(1)
        m = mask[..., None].to(out.dtype)
        return (out * m).sum(1) / m.sum(1).clamp_min(1.0)


class SeqModel(nn.Module):
    """(B, T, D) floats or (B, T) ids -> (B, 3), masked mean over tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, D)
        self.lin1 = nn.Linear(D, 8)
        self.lin2 = nn.Linear(8, 3)
        self.pool = MaskedMean()
        self.poison = False  # NaN on every call
        self.fragile = False  # NaN after the clean passes (on perturbed copies only)
        self.calls = 0

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.calls += 1
        if not x.is_floating_point():
            x = self.emb(x)
        h = torch.tanh(self.lin1(x))
        if self.poison or (self.fragile and self.calls > 3):
            h = h * float("nan")
        return self.pool(self.lin2(h), mask)


def make(kind: str) -> tuple[nn.Module, Any, dict[str, Any]]:
    """A model, an explainer and the extra kwargs of a valid call; the explained state
    is the (B, 3) output of ``model.pool`` either way."""
    model = SeqModel().eval()
    if kind == "input":
        return model, PerturbationEntropyAttribution(model), {"layer": model.pool}
    return model, LayerPerturbationEntropyAttribution(model, model.lin1), {}


def x_float() -> Tensor:
    return torch.randn(B, T, D, generator=torch.Generator().manual_seed(1)) * 0.5


KINDS = ["input", "layer"]
ONE = torch.tensor(1.0)


def check(
    kind: str,
    exc: type[Exception],
    match: str,
    call: Callable[[Any, dict[str, Any]], Any],
    prepare: Callable[[nn.Module], None] | None = None,
) -> None:
    model, explainer, kwargs = make(kind)
    if prepare is not None:
        prepare(model)
    with pytest.raises(exc, match=match):
        call(explainer, kwargs)
    assert_no_hooks(model)
    assert not any(m.training for m in model.modules())


def test_valid_call_runs() -> None:
    """The bad calls below differ from this one in one argument only."""
    for kind in KINDS:
        model, explainer, kwargs = make(kind)
        attr = explainer.attribute(x_float(), 0, state_std=ONE, **kwargs)
        assert bool(torch.isfinite(attr).all())
        assert_no_hooks(model)


def test_token_ids_to_input_level_class() -> None:
    ids = torch.randint(0, 10, (B, T))
    check(
        "input",
        TypeError,
        r"LayerPerturbationEntropyAttribution",
        lambda e, kw: e.attribute(ids, 0, state_std=ONE, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_inf_in_inputs(kind: str, bad: float) -> None:
    x = x_float()
    x[1, 2, 3] = bad
    check(kind, ValueError, r"NaN or Inf", lambda e, kw: e.attribute(x, 0, state_std=ONE, **kw))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flag", ["poison", "fragile"])
def test_model_output_with_nan(kind: str, flag: str) -> None:
    def prepare(model: nn.Module) -> None:
        setattr(model, flag, True)

    check(
        kind,
        ValueError,
        r"NaN or Inf.*(model|sigma_max)",
        lambda e, kw: e.attribute(x_float(), 0, state_std=ONE, sigma_max=50.0, **kw),
        prepare,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_with_different_batch_sizes(kind: str) -> None:
    x = x_float()
    if kind == "input":
        # a tuple of inputs whose second member has one row too few
        model = SeqModel().eval()
        pe = PerturbationEntropyAttribution(lambda a, b: model(a + b))
        with pytest.raises(ValueError, match=r"same first .batch. dimension"):
            pe.attribute((x, x[:1]), 0, state_std=ONE, state_layer=model.pool)
        assert_no_hooks(model)
    mask = torch.ones(B + 1, T)
    check(
        kind,
        ValueError,
        r"one row per example",
        lambda e, kw: e.attribute(x, 0, (mask,), state_std=ONE, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_feature_mask_that_does_not_broadcast(kind: str) -> None:
    name = "feature_mask" if kind == "input" else "layer_mask"
    width = D if kind == "input" else 8
    bad = torch.zeros(1, T + 1, width, dtype=torch.long)
    check(
        kind,
        ValueError,
        r"does not broadcast.*size or 1",
        lambda e, kw: e.attribute(x_float(), 0, state_std=ONE, **{name: bad}, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", [3, -4, (0, 5), [0, 7], torch.tensor([2, 3])])
def test_out_of_range_target(kind: str, target: Any) -> None:
    check(
        kind,
        ValueError,
        r"target .* does not select.*Use None",
        lambda e, kw: e.attribute(x_float(), target, state_std=ONE, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", [[0, 1, 2], torch.tensor([0, 1, 1]), [(0,), (1,), (2,)]])
def test_per_example_target_of_wrong_length(kind: str, target: Any) -> None:
    """Captum asserts one target per example; a longer list must not be cut silently."""
    check(
        kind,
        ValueError,
        r"target",
        lambda e, kw: e.attribute(x_float(), target, state_std=ONE, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_zero_length_sequences(kind: str) -> None:
    empty = torch.zeros(B, 0, D)
    check(
        kind,
        ValueError,
        r"empty sequence.*drop",
        lambda e, kw: e.attribute(empty, None, state_std=ONE, sigma_max=1.0, **kw),
    )


def test_zero_length_token_ids() -> None:
    model = SeqModel().eval()
    lpe = LayerPerturbationEntropyAttribution(model, model.emb)
    with pytest.raises(ValueError, match=r"empty sequence.*drop"):
        lpe.attribute(torch.zeros(B, 0, dtype=torch.long), None, state_std=ONE)
    assert_no_hooks(model)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sigma_max", [0.0, -1.0, float("nan"), torch.tensor([1.0, 0.0])])
def test_sigma_max_not_positive(kind: str, sigma_max: Any) -> None:
    check(
        kind,
        ValueError,
        r"sigma_max must be a positive",
        lambda e, kw: e.attribute(x_float(), 0, state_std=ONE, sigma_max=sigma_max, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [0.0, -0.1, float("nan")])
def test_rate_not_positive(kind: str, rate: float) -> None:
    check(
        kind,
        ValueError,
        r"rate must be a positive",
        lambda e, kw: e.attribute(x_float(), 0, state_std=ONE, rate=rate, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_state_std_of_wrong_shape(kind: str) -> None:
    check(
        kind,
        ValueError,
        r"state_std has shape .* does not broadcast.*Estimate it",
        lambda e, kw: e.attribute(x_float(), None, state_std=torch.ones(4), **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [0.0, float("nan"), -1.0])
def test_state_std_with_zeros_nan_or_negative(kind: str, bad: float) -> None:
    """σ_S must be > 0 (+inf is allowed: it leaves an element out of the loss)."""
    std = torch.ones(3)
    std[1] = bad
    check(
        kind,
        ValueError,
        r"strictly positive.*clamp",
        lambda e, kw: e.attribute(x_float(), None, state_std=std, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_attention_mask_with_an_all_zero_row(kind: str) -> None:
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1] = 0
    check(
        kind,
        ValueError,
        r"examples \[1\] have no element.*fix attention_mask",
        lambda e, kw: e.attribute(x_float(), 0, (mask,), attention_mask=mask, state_std=ONE, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_attention_mask_of_wrong_shape(kind: str) -> None:
    mask = torch.ones(B, T + 1, dtype=torch.long)
    check(
        kind,
        ValueError,
        r"attention_mask must be .batch, tokens.",
        lambda e, kw: e.attribute(x_float(), 0, attention_mask=mask, state_std=ONE, **kw),
    )


def raises_untouched(
    kind: str,
    exc: type[Exception],
    match: str,
    call: Callable[[Any, dict[str, Any], Tensor], Any],
    x: Tensor | None = None,
) -> None:
    """Like :func:`check`, and the caller's model and inputs are as they were: weights,
    requires_grad, .grad, a mix of train/eval flags, hooks, the input's value and flag."""
    model, explainer, kwargs = make(kind)
    model.lin1.weight.requires_grad_(False)
    modules = list(model.modules())
    for k, m in enumerate(modules):
        m.training = k % 2 == 1
    flags = [m.training for m in modules]
    params = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    x = x_float().requires_grad_(True) if x is None else x
    x_before = (x.detach().clone(), x.requires_grad) if x.device.type != "meta" else None
    with pytest.raises(exc, match=match):
        call(explainer, kwargs, x)
    assert_no_hooks(model)
    assert [m.training for m in modules] == flags
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), params[n][0]) and p.requires_grad == params[n][1], n
        assert p.grad is None, n
    if x_before is not None:
        assert torch.equal(x.detach(), x_before[0]) and x.requires_grad == x_before[1]
        assert x.grad is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rate", [float("inf"), float("nan"), -float("inf")])
def test_rate_not_finite(kind: str, rate: float) -> None:
    raises_untouched(
        kind,
        ValueError,
        r"rate must be a positive finite number, got .*0\.1",
        lambda e, kw, x: e.attribute(x, 0, state_std=ONE, rate=rate, **kw),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_empty_batch(kind: str) -> None:
    raises_untouched(
        kind,
        ValueError,
        r"batch is empty.*at least one example",
        lambda e, kw, x: e.attribute(x, 0, state_std=ONE, **kw),
        x=torch.zeros(0, T, D),
    )


def test_empty_batch_of_token_ids() -> None:
    model = SeqModel().eval()
    lpe = LayerPerturbationEntropyAttribution(model, model.emb)
    with pytest.raises(ValueError, match=r"batch is empty"):
        lpe.attribute(torch.zeros(0, T, dtype=torch.long), None, state_std=ONE)
    assert_no_hooks(model)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_on_another_device(kind: str) -> None:
    """CUDA is not available here: the ``meta`` device stands in for "another device"
    (the check compares devices, and a meta tensor cannot run the CPU model)."""
    raises_untouched(
        kind,
        ValueError,
        r"inputs\[0\] is on meta but the model's parameters are on cpu: move",
        lambda e, kw, x: e.attribute(x, 0, state_std=ONE, **kw),
        x=x_float().to("meta"),
    )


@pytest.mark.parametrize("kind", KINDS)
def test_side_input_on_another_device(kind: str) -> None:
    mask = torch.ones(B, T, device="meta")
    raises_untouched(
        kind,
        ValueError,
        r"additional_forward_args\[0\] is on meta but the model's parameters are on cpu",
        lambda e, kw, x: e.attribute(x, 0, (mask,), state_std=ONE, **kw),
    )


def test_device_check_skips_models_split_over_devices() -> None:
    """A model whose parameters live on several devices takes its inputs wherever its
    first layer is: the check cannot know where, and stays silent."""
    from captum_perturb.attr.checks import check_devices

    split = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2, device="meta")])
    check_devices((x_float(),), None, [split])  # no error
    with pytest.raises(ValueError, match=r"inputs\[0\] is on cpu .* on meta"):
        check_devices((x_float(),), None, [split[1]])


@pytest.mark.parametrize("kind", KINDS)
def test_unexpanded_attention_mask_under_noise_tunnel(kind: str) -> None:
    """NoiseTunnel expands the inputs, target and additional_forward_args but not the
    attention_mask keyword; when the model does not get the mask through
    additional_forward_args either, the expansion cannot be recognised."""
    from captum.attr import NoiseTunnel

    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -1] = 0
    raises_untouched(
        kind,
        ValueError,
        r"attention_mask has 2 rows but the inputs have 6 = 3 × 2.*NoiseTunnel.*"
        r"additional_forward_args",
        lambda e, kw, x: NoiseTunnel(e).attribute(
            x, nt_samples=3, stdevs=0.0, target=0, attention_mask=mask, state_std=ONE, **kw
        ),
        x=x_float(),
    )


def test_feature_mask_not_expanded_by_sensitivity_max() -> None:
    """sensitivity_max repeats the examples but passes feature_mask unchanged."""
    from captum.metrics import sensitivity_max

    model = SeqModel().eval()
    pe = PerturbationEntropyAttribution(model)
    per_example = torch.arange(B * T).reshape(B, T, 1)
    with pytest.raises(ValueError, match=r"sensitivity_max repeated the examples.*size 1"):
        sensitivity_max(
            pe.attribute,
            x_float(),
            n_perturb_samples=2,
            target=0,
            feature_mask=per_example,
            state_layer=model.pool,
            state_std=ONE,
        )
    assert_no_hooks(model)
