"""A peer's suite: our two classes through Captum's own test configurations.

Captum ships the case list its generic tests iterate over
(``captum.testing.attr.helpers.test_config.config``: Captum's ``basic_models`` with inputs,
targets, side inputs, layers and batching knobs). This module imports that list, builds our
class in the place of Captum's algorithms and checks, per configuration, the invariants
Captum's ``test_targets.py``, ``test_hook_removal.py`` and ``test_jit.py`` check for its own
methods:

(a) ``batch``: the batch with its targets == each example alone (with its own target; for
    per-example targets also as a one-element list / tensor, as ``test_targets`` does);
(b) ``hooks``: no hook on any module after a run, after an invalid target
    (``(9999,) * 20``, as ``test_hook_removal``), after the layer is replaced by a module
    that raises (``test_hook_removal``'s ``invalid_module``), and after a module raises at
    its 1st, 2nd, middle and last call;
(c) ``jit``: same result eagerly and on a ``torch.jit.trace``-d model; layer and neuron
    entries check the clear error instead (hooks never reach a traced model's submodules;
    Captum's ``test_jit`` runs input-level methods only, too);
(d) ``internal_batch_size``: the entry's own size (or 3, which divides no batch here)
    against None.

How a configuration becomes our call. Input entries -> ``PerturbationEntropyAttribution(model)``;
layer entries -> ``LayerPerturbationEntropyAttribution(model, layer)`` (noise on the layer's
output; for ``multi_relu``, whose output is a tuple, on ``out[0]`` — Captum's layer methods
attribute to both outputs); neuron entries with an index selector ->
``PerturbationEntropyAttribution(model)`` with ``layer=`` the neuron's layer and
``target=neuron_selector`` (our input class explaining one unit of a layer is a neuron
attribution; a slice selector explains the whole slice instead of its sum). Noise-tunnel
entries wrap our class in ``NoiseTunnel`` with the entry's arguments. Arguments we do not
take are mapped or dropped: ``perturbations_per_eval`` -> ``internal_batch_size`` (the same
memory knob), ``baselines`` dropped (our noise has no reference input). Every call passes
``seed=0`` and ``state_std`` = the RMS over elements of the explained state's std across the
entry's batch (1 where the state is the same for every example), so no fallback warning.
Layer entries pass ``sigma_max`` = 10 × the layer value's std over the batch: ReLU layers
are all zero for some of Captum's examples, where the per-example default (10 × that
example's std) is 0 and is refused with a clear error.

Tolerances. A Monte-Carlo comparison uses ``contract.assert_log_sigma_close``:
``|Δ log σ| <= 4 sqrt(se_a² + se_b²) + 1e-4`` per group, from the standard errors each run
reports (derivation in ``tests/contract.py``). Through ``NoiseTunnel`` only attributions come
back, so a recording subclass keeps what each inner call reported; with ``stdevs`` 0 each
example's attribution is the mean of its ``nt_samples`` copies' scores, and the std of a
mean is at most the mean of the stds, whatever the correlation. The score is log(σ_max/σ),
or the channel score, whose slope in log σ is in (0, 1): either way at most as uncertain
as log σ. So two noise-tunnel results differ by at most ``4 sqrt(sd_a² + sd_b²) + 1e-4``
per group, ``sd`` the mean over an example's copies of ``std_error``.

Results (measured 2026-11-29 on this tree; re-measure with ``pytest -rs``). Kind: I input
class, L layer class, N input class with ``layer=`` (neuron), +NT inside ``NoiseTunnel``.
(a), (c), (d): the largest |Δ log σ| (noise tunnel: |Δ score|) as a fraction of its bound,
``exact`` when identical; (c) ``error``: the clear "never ran" error on a traced model;
``xfail``: a known limit next to ReLU kinks (see ``RELU_KINK_BUG``).
39 configurations run, 38 skipped.

===================================================================== ==== ===== ==== ===== =====
configuration                                                         kind (a)   (b)  (c)   (d)
===================================================================== ==== ===== ==== ===== =====
basic_single_target                                                   I    0.30  pass exact exact
basic_multi_input                                                     I    0.84  pass exact exact
basic_multi_target                                                    I    0.29  pass exact exact
basic_multi_input_multi_target                                        I    0.48  pass exact exact
basic_multiple_tuple_target                                           I    0.41  pass exact exact
basic_tensor_single_target                                            I    0.19  pass exact exact
basic_tensor_multi_target                                             I    0.36  pass exact exact
basic_multiple_tuple_target_with_baselines                            I    0.91  pass exact exact
basic_tensor_single_target_with_baselines                             I    0.43  pass exact exact
basic_multiple_tuple_target_with_internal_batching                    I    0.41  pass exact exact
basic_multi_input_multi_target_nt                                     I+NT 0.08  pass exact exact
basic_multiple_target_with_baseline_nt                                I+NT 0.04  pass exact exact
basic_multiple_tuple_target_nt                                        I+NT 0.19  pass exact exact
basic_single_tensor_target_nt                                         I+NT 0.04  pass exact exact
basic_multi_tensor_target_nt                                          I+NT 0.65  pass exact exact
basic_multi_tensor_target_batched_nt                                  I+NT 0.22  pass exact exact
conv_with_perturbations_per_eval                                      I    exact pass exact exact
basic_multiple_tuple_target_with_perturbations_per_eval               I    0.34  pass exact exact
conv_layer_single_target                                              L    exact pass error exact
basic_layer_in_place                                                  L    0.31  pass error exact
basic_layer_multi_output                                              L    0.20  pass error exact
basic_layer_multi_input                                               L    0.11  pass error exact
basic_layer_multiple_target                                           L    0.15  pass error exact
basic_layer_tensor_multiple_target                                    L    0.25  pass error exact
basic_layer_multiple_tuple_target                                     L    0.22  pass error exact
basic_layer_multiple_tuple_target_with_internal_batching              L    0.12  pass error exact
basic_layer_multi_input_with_internal_batching                        L    0.13  pass error exact
basic_layer_multi_output_with_internal_batching                       L    0.22  pass error exact
basic_layer_multi_input_with_perturbations_per_eval                   L    0.13  pass error exact
basic_layer_multi_output_perturbations_per_eval                       L    0.33  pass error exact
conv_layer_with_perturbations_per_eval                                L    xfail pass error exact
basic_neuron                                                          N    0.09  pass error exact
conv_neuron                                                           N    xfail pass error <0.01
basic_neuron_multi_input                                              N    xfail pass error exact
conv_neuron_with_perturbations_per_eval                               N    0.23  pass error exact
basic_neuron_multiple_input_with_baselines_and_perturbations_per_eval N    xfail pass error exact
conv_neuron_slice_selector                                            N    xfail pass error 0.15
basic_layer_lrp                                                       L    0.03  pass error exact
basic_layer_lrp_multi_input                                           L    0.47  pass error exact
===================================================================== ==== ===== ==== ===== =====

Notes. (c) traces the model itself where every side input is a tensor (Captum's way) and
:class:`BoundArgs` around it where some are None / bool / int (``torch.jit.trace`` refuses
those); all input entries are bitwise equal on the trace. (d) is bitwise equal except for
``conv_neuron`` (|Δ log σ| 1.4e-6) and ``conv_neuron_slice_selector`` (6.6, inside a bound
of 44 that the ReLU-kink examples' standard errors make uninformative). The ``conv_*``
entries with ``100 * randn`` or ``arange`` inputs put (nearly) every group at σ_max, so
their (a) and (d) say little.

Skipped configurations (``pytest -rs`` gives the reasons in full):

- a baseline distribution (22): basic_dl_shap, basic_multi_input_dl_shap,
  basic_multiple_target_dl_shap, basic_multiple_tuple_target_dl_shap,
  basic_single_tensor_targe_dl_shap, basic_multi_tensor_target_dl_shap,
  basic_multi_inp_with_single_baseline_grad_shap,
  basic_multiple_target_with_single_baseline_grad_shap,
  basic_multiple_tuple_target_with_single_baseline_grad_shap,
  basic_single_tensor_target_with_single_baseline_grad_shap,
  basic_multi_tensor_target_with_single_baseline_grad_shap, relu_layer_multi_inp_dl_shap,
  basic_layer_multi_output_dl_shap, basic_layer_multi_inp_multi_target_dl_shap,
  basic_layer_multiple_target_dl_shap, relu_layer_multi_inp_grad_shap,
  basic_layer_multi_output_grad_shap, basic_layer_multi_inp_multi_target_grad_shap,
  basic_neuron_grad_shap, basic_neuron_multi_inp_grad_shap, basic_neuron_dl_shap,
  basic_neuron_multi_input_dl_shap.
- Occlusion's sliding windows (3): conv_occlusion_with_perturbations_per_eval,
  basic_multi_input_with_perturbations_per_eval_occlusion,
  basic_multiple_tuple_target_occlusion.
- NeuronConductance (8): basic_neuron_single_target, basic_neuron_multiple_target,
  conv_neuron_single_target, basic_neuron_multi_input_multi_target,
  basic_neuron_tensor_multiple_target, basic_neuron_multiple_tuple_target,
  basic_neuron_multiple_tuple_target_with_internal_batching,
  basic_neuron_multi_input_multi_target_with_internal_batching.
- a callable neuron_selector (1): basic_neuron_multi_input_function_selector.
- a list of layers (4): basic_activation_multi_layer_multi_output,
  basic_gradient_multi_layer_multi_output, basic_layer_ig_multi_layer_multi_output,
  basic_layer_ig_multi_layer_multi_output_with_input_wrapper.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from captum.attr import LayerActivation, NoiseTunnel
from captum.log import log_usage
from captum.testing.attr.helpers.gen_test_utils import get_target_layer
from captum.testing.attr.helpers.test_config import config
from contract import (
    ROUND_OFF,
    SE_FACTOR,
    LayerBoomError,
    assert_log_sigma_close,
    assert_no_hooks,
    failing_forward,
    one_thread,
)
from torch import Tensor, nn

from captum_perturb import LayerPerturbationEntropyAttribution, PerturbationEntropyAttribution

SEED = 0
#: Captum's ``test_hook_removal`` invalid target and neuron selector
INVALID_INDEX = (9999,) * 20
#: an internal batch size that divides none of the configurations' batches (4, 5, 6, 12)
ODD_BATCH = 3
#: a traced model's submodules are compiled graphs that forward hooks do not reach
JIT_NO_HOOKS = "never ran"


class RaisingModule(nn.Module):
    """Stands in for a layer and raises, like Captum's ``ErrorModule``."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Raising error on execution")


class RecordingAttribution(PerturbationEntropyAttribution):
    """Our input class, keeping every :meth:`explain` result that ``attribute`` returned
    (the standard errors behind ``NoiseTunnel``'s mean)."""

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)
        self.results: list[Any] = []

    @log_usage(part_of_slo=False)
    def attribute(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        res = self.explain(inputs, *args, **kwargs)
        self.results.append(res)
        return res.attributions


class BoundArgs(nn.Module):
    """``model`` with its non-tensor side inputs fixed, so that ``torch.jit.trace`` (which
    accepts tensors only) can trace it; its forward takes the inputs, then the tensor side
    inputs in their order."""

    def __init__(self, model: nn.Module, n_inputs: int, args: tuple[Any, ...]) -> None:
        super().__init__()
        self.model = model
        self.n_inputs = n_inputs
        self.args = args

    def forward(self, *tensors: Tensor) -> Tensor:
        inputs, rest = list(tensors[: self.n_inputs]), iter(tensors[self.n_inputs :])
        side = [next(rest) if isinstance(a, Tensor) else a for a in self.args]
        return self.model(*inputs, *side)


def _skip_reason(entry: dict[str, Any]) -> str | None:
    """Why a configuration does not fit our method, or None when it does."""
    args = entry["attribute_args"]
    if isinstance(entry.get("layer"), list):
        return (
            "a list of layers (multi-layer LayerActivation / LayerGradientXActivation / "
            "LayerIntegratedGradients): our layer class perturbs one module"
        )
    if entry.get("baseline_distr"):
        return (
            "a baseline distribution (the SHAP family; n_samples/stdevs are GradientShap's "
            "sampling knobs): our noise has no reference input, and without baselines the "
            "entry repeats a generic one"
        )
    if "sliding_window_shapes" in args:
        return "Occlusion's sliding windows: our groups come from feature_mask / layer_mask"
    if "neuron_selector" in args and "target" in args:
        return (
            "NeuronConductance: a target on the output *and* a neuron of a layer; our method "
            "explains one state (a unit of a layer is covered by the neuron entries)"
        )
    if callable(args.get("neuron_selector")):
        return "a callable neuron_selector: our target takes indices (int / tuple / lists)"
    return None


@dataclass
class Case:
    """One configuration, mapped onto our classes (a fresh deep copy per check)."""

    name: str
    kind: str  # "input", "layer" or "neuron"
    model: nn.Module
    layer_name: str | None
    inputs: Tensor | tuple[Tensor, ...]
    target: Any
    args: tuple[Any, ...] | None
    internal_batch_size: int | None
    nt_kwargs: dict[str, Any] | None
    state_std: Tensor = field(init=False)
    sigma_max: Tensor | None = field(init=False)

    def __post_init__(self) -> None:
        self.model.eval()
        state = self._state_values()
        std = state.std(0, unbiased=False).square().mean().sqrt()
        self.state_std = std if float(std) > 0 else torch.tensor(1.0)
        self.sigma_max = None
        if self.kind == "layer":
            value = self._layer_values()
            self.sigma_max = 10 * value.std(unbiased=False)

    @property
    def layer(self) -> nn.Module:
        assert self.layer_name is not None
        return get_target_layer(self.model, self.layer_name)

    @property
    def batch(self) -> int:
        return _as_tuple(self.inputs)[0].shape[0]

    def _layer_values(self) -> Tensor:
        act = LayerActivation(self.model, self.layer).attribute(
            self.inputs, additional_forward_args=self.args
        )
        return _as_tuple(act)[0].detach()

    def _state_values(self) -> Tensor:
        if self.kind == "neuron":
            return self._layer_values().reshape(self.batch, -1)
        with torch.no_grad():
            out = self.model(*_as_tuple(self.inputs), *(self.args or ()))
        return out.reshape(self.batch, -1)

    def layer_of(self, model: nn.Module | None, prefix: str = "") -> nn.Module:
        """The entry's layer in ``model`` (default: the case's model); ``prefix`` is the
        path of the case's model inside ``model`` (``"model."`` in :class:`BoundArgs`)."""
        assert self.layer_name is not None
        return get_target_layer(self.model if model is None else model, prefix + self.layer_name)

    def method(self, model: nn.Module | None = None, prefix: str = "") -> Any:
        """Our attribution object for ``model`` (default: the case's model)."""
        forward = self.model if model is None else model
        if self.kind == "layer":
            return LayerPerturbationEntropyAttribution(forward, self.layer_of(model, prefix))
        return PerturbationEntropyAttribution(forward)

    def kwargs(self, model: nn.Module | None, prefix: str, **override: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "target": self.target,
            "additional_forward_args": self.args,
            "state_std": self.state_std,
            "seed": SEED,
            "internal_batch_size": self.internal_batch_size,
        }
        if self.sigma_max is not None:
            kw["sigma_max"] = self.sigma_max
        if self.kind == "neuron":
            kw["layer"] = self.layer_of(model, prefix)
        return {**kw, **override}

    def explain(
        self, model: nn.Module | None = None, prefix: str = "", inputs: Any = None, **override: Any
    ) -> Any:
        """Our ``explain`` on the entry (``override`` replaces call arguments)."""
        inputs = self.inputs if inputs is None else inputs
        return self.method(model, prefix).explain(inputs, **self.kwargs(model, prefix, **override))

    def attribute(
        self, model: nn.Module | None = None, prefix: str = "", inputs: Any = None, **override: Any
    ) -> Any:
        """Our ``attribute`` on the entry (``override`` replaces call arguments)."""
        inputs = self.inputs if inputs is None else inputs
        return self.method(model, prefix).attribute(
            inputs, **self.kwargs(model, prefix, **override)
        )

    def run(self, **override: Any) -> Any:
        """``attribute``, through ``NoiseTunnel`` for noise-tunnel entries."""
        return (
            self.attribute(**override) if self.nt_kwargs is None else self.noise_tunnel(**override)
        )

    def noise_tunnel(
        self, model: nn.Module | None = None, inputs: Any = None, **override: Any
    ) -> tuple[Tensor, Tensor]:
        """``NoiseTunnel`` over our class with the entry's arguments, as ``(B, G)`` scores
        (the NoiseTunnel output, flattened per example: with one group per scalar, group
        ``g`` is element ``g``) and their bound's ``(B, G)`` standard deviation: the mean
        over the example's copies of the standard errors our class reported."""
        assert self.nt_kwargs is not None and self.kind == "input"
        inputs = self.inputs if inputs is None else inputs
        method = RecordingAttribution(self.model if model is None else model)
        torch.manual_seed(SEED)  # NoiseTunnel draws from the global RNG (stdevs is 0 anyway)
        out = NoiseTunnel(method).attribute(
            inputs, **self.nt_kwargs, **self.kwargs(model, "", **override)
        )
        batch = _as_tuple(inputs)[0].shape[0]
        scores = _flat(out, batch)
        total = torch.zeros_like(scores, dtype=torch.float64)
        se_sum, count = torch.zeros_like(total), torch.zeros(batch, 1, dtype=torch.float64)
        for res in method.results:
            assert bool((res.group_ids >= 0).all()), "no padding: every group is perturbed"
            rows = res.group_ids.shape[0]
            # NoiseTunnel stacks each example's copies together (repeat_interleave)
            example = torch.arange(rows) // (rows // batch)
            total.index_add_(0, example, _flat(res.attributions, rows).double())
            se_sum.index_add_(0, example, res.estimate.std_error.double())
            count.index_add_(0, example, torch.ones(rows, 1, dtype=torch.float64))
        # the copies we recorded are the ones NoiseTunnel averaged
        torch.testing.assert_close(scores.double(), total / count, rtol=0, atol=1e-5)
        return scores, (se_sum / count).to(scores.dtype)

    def alone(self, i: int) -> tuple[Any, tuple[Any, ...] | None]:
        """Example ``i``'s inputs and side inputs (tensors with the batch as dim 0 sliced)."""

        def cut(v: Any) -> Any:
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.batch:
                return v[i : i + 1]
            return v

        inputs = (
            tuple(cut(x) for x in self.inputs)
            if isinstance(self.inputs, tuple)
            else cut(self.inputs)
        )
        args = None if self.args is None else tuple(cut(a) for a in self.args)
        return inputs, args

    def targets_alone(self, i: int) -> list[Any]:
        """Example ``i``'s target forms, as Captum's ``test_targets`` builds them."""
        t = self.target
        if isinstance(t, (list, Tensor)) and len(t) == self.batch:
            return [t[i], t[i : i + 1]]
        return [t]


def build(entry: dict[str, Any]) -> Case:
    """Map one configuration onto our classes (see the module docstring)."""
    args = copy.deepcopy(dict(entry["attribute_args"]))
    model = copy.deepcopy(entry["model"])
    args.pop("baselines", None)
    ibs = args.pop("internal_batch_size", None)
    ibs = args.pop("perturbations_per_eval", ibs)
    nt = None
    if entry.get("noise_tunnel"):
        nt = {
            k: args.pop(k) for k in ("nt_samples", "stdevs", "nt_samples_batch_size") if k in args
        }
    layer = entry.get("layer")
    kind = "input" if layer is None else "layer"
    target = args.pop("target", None)
    if "neuron_selector" in args:
        kind, target = "neuron", args.pop("neuron_selector")
    side = args.pop("additional_forward_args", None)
    inputs = args.pop("inputs")
    assert not args, f"unmapped arguments {sorted(args)} in {entry['name']}"
    return Case(
        name=entry["name"],
        kind=kind,
        model=model,
        layer_name=layer,
        inputs=inputs,
        target=target,
        args=None if side is None else _as_tuple(side),
        internal_batch_size=ibs,
        nt_kwargs=nt,
    )


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return x if isinstance(x, tuple) else (x,)


def _flat(attrs: Any, batch: int) -> Tensor:
    """``(B, G)``: each example's attributions in order; with one group per scalar (the
    default mask), column ``g`` is group ``g``."""
    return torch.cat([a.reshape(batch, -1) for a in _as_tuple(attrs)], 1)


def _log_sigma_gap(res_a: Any, row_a: int, res_b: Any, row_b: int) -> tuple[float, float]:
    """The largest |Δ log σ| of one example in two runs, and the bound at that group."""
    n = int((res_a.group_ids[row_a] >= 0).sum())
    ls_a, ls_b = res_a.estimate.log_sigma[row_a, :n], res_b.estimate.log_sigma[row_b, :n]
    se_a, se_b = res_a.estimate.std_error[row_a, :n], res_b.estimate.std_error[row_b, :n]
    diff = (ls_a - ls_b).abs()
    tol = SE_FACTOR * (se_a.square() + se_b.square()).sqrt() + ROUND_OFF
    w = int(diff.argmax())
    return float(diff[w]), float(tol[w])


def _assert_nt_close(
    a: tuple[Tensor, Tensor], row_a: int, b: tuple[Tensor, Tensor], row_b: int
) -> tuple[float, float]:
    """Two noise-tunnel scores of one example agree within ``4 sqrt(sd_a² + sd_b²) + 1e-4``
    per group (module docstring); returns the largest gap and the bound there."""
    diff = (a[0][row_a] - b[0][row_b]).abs()
    tol = SE_FACTOR * (a[1][row_a].square() + b[1][row_b].square()).sqrt() + ROUND_OFF
    w = int((diff - tol).argmax())
    assert bool((diff <= tol).all()), (
        f"noise-tunnel scores of group {w} differ by {diff[w]:.3g} > {tol[w]:.3g}\n"
        f"{a[0][row_a]}\n{b[0][row_b]}"
    )
    w = int(diff.argmax())
    return float(diff[w]), float(tol[w])


Gap = list[tuple[float, float]]


def check_batch(case: Case) -> Gap:
    """(a) The batch with its targets == every example alone, with each of its target forms."""
    gaps: Gap = []
    nt = case.nt_kwargs is not None
    res = case.noise_tunnel() if nt else case.explain()
    for i in range(case.batch):
        inputs, args = case.alone(i)
        for t in case.targets_alone(i):
            if nt:
                alone = case.noise_tunnel(inputs=inputs, additional_forward_args=args, target=t)
                gaps.append(_assert_nt_close(res, i, alone, 0))
            else:
                alone = case.explain(inputs=inputs, additional_forward_args=args, target=t)
                # the claim holds for estimates that met the stopping rule; an unconverged
                # one says so in its result and warning instead
                if bool(res.converged[i]) and bool(alone.converged[0]):
                    assert_log_sigma_close(res, i, alone, 0)
                    gaps.append(_log_sigma_gap(res, i, alone, 0))
    return gaps


def _calls(module: nn.Module, run: Callable[[], Any]) -> int:
    seen: list[int] = []
    handle = module.register_forward_pre_hook(lambda m, a: seen.append(1))
    try:
        run()
    finally:
        handle.remove()
    return len(seen)


def _first_leaf(case: Case) -> nn.Module:
    """The first leaf module the model calls (the module made to raise for input entries)."""
    order: list[nn.Module] = []
    leaves = [m for m in case.model.modules() if not list(m.children())]
    handles = [m.register_forward_pre_hook(lambda m, a: order.append(m)) for m in leaves]
    try:
        with torch.no_grad():
            case.model(*_as_tuple(case.inputs), *(case.args or ()))
    finally:
        for h in handles:
            h.remove()
    return order[0]


def check_hooks(case: Case) -> None:
    """(b) No hook left after success, an invalid target, a raising layer or module."""
    case.run()
    assert_no_hooks(case.model)
    with pytest.raises(ValueError, match="target"):
        case.run(target=INVALID_INDEX)
    assert_no_hooks(case.model)
    if case.kind != "input":  # test_hook_removal's invalid_module
        fresh = copy.deepcopy(case)
        assert fresh.layer_name is not None
        parent, _, child = fresh.layer_name.rpartition(".")
        setattr(fresh.model.get_submodule(parent), child, RaisingModule())
        with pytest.raises(AssertionError, match="Raising error on execution"):
            fresh.run()
        assert_no_hooks(fresh.model)
    module = _first_leaf(case) if case.kind == "input" else case.layer
    calls = _calls(module, case.run)
    assert calls >= 1
    for fail_at in sorted({1, min(2, calls), (calls + 1) // 2, calls}):
        with failing_forward(module, fail_at), pytest.raises(LayerBoomError):
            case.run()
        assert_no_hooks(case.model)


def _traced(case: Case) -> tuple[nn.Module, str, tuple[Tensor, ...] | None]:
    """The model traced on the entry's inputs and side inputs (as Captum's ``test_jit``),
    with non-tensor side inputs bound first (:class:`BoundArgs`, which holds the case's
    model at ``"model."``); returns the trace, that prefix and the side inputs to pass."""
    inputs = _as_tuple(case.inputs)
    args = case.args or ()
    tensors = tuple(a for a in args if isinstance(a, Tensor))
    bound = len(tensors) < len(args)
    model = BoundArgs(case.model, len(inputs), args) if bound else case.model
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.trace", category=DeprecationWarning
        )
        traced = torch.jit.trace(model, (*inputs, *tensors))
    return traced, "model." if bound else "", tensors or None


def check_jit(case: Case) -> Gap:
    """(c) Same result on the traced model; the clear error for layer and neuron entries."""
    traced, prefix, args = _traced(case)
    if case.kind != "input":
        with pytest.raises(RuntimeError, match=JIT_NO_HOOKS):
            case.attribute(model=traced, prefix=prefix, additional_forward_args=args)
        assert_no_hooks(traced)
        return []
    if case.nt_kwargs is not None:
        eager = case.noise_tunnel()
        jit_nt = case.noise_tunnel(model=traced, additional_forward_args=args)
        return [_assert_nt_close(eager, i, jit_nt, i) for i in range(case.batch)]
    eager = case.explain()
    jit = case.explain(model=traced, prefix=prefix, additional_forward_args=args)
    for i in range(case.batch):
        assert_log_sigma_close(eager, i, jit, i)
    return [_log_sigma_gap(eager, i, jit, i) for i in range(case.batch)]


def check_internal_batch_size(case: Case) -> Gap:
    """(d) The entry's internal batch size (or 3) against None."""
    size = case.internal_batch_size or ODD_BATCH
    if case.nt_kwargs is not None:
        ref_nt = case.noise_tunnel(internal_batch_size=None)
        got_nt = case.noise_tunnel(internal_batch_size=size)
        return [_assert_nt_close(ref_nt, i, got_nt, i) for i in range(case.batch)]
    ref = case.explain(internal_batch_size=None)
    got = case.explain(internal_batch_size=size)
    for i in range(case.batch):
        assert_log_sigma_close(ref, i, got, i)
    return [_log_sigma_gap(ref, i, got, i) for i in range(case.batch)]


CHECKS: dict[str, Callable[[Case], Any]] = {
    "batch": check_batch,
    "hooks": check_hooks,
    "jit": check_jit,
    "internal_batch_size": check_internal_batch_size,
}
ENTRIES = {entry["name"]: entry for entry in config}
#: checks that took over 0.8 s of CPU time (single-threaded; 2-4x that in wall time
#: on the shared 2-core machine)
SLOW: set[tuple[str, str]] = {
    ("basic_layer_lrp_multi_input", "batch"),
    ("basic_layer_lrp_multi_input", "internal_batch_size"),
    ("basic_multi_input", "internal_batch_size"),
    ("basic_multi_input_multi_target_nt", "internal_batch_size"),
    ("basic_multi_tensor_target_batched_nt", "batch"),
    ("basic_multi_tensor_target_batched_nt", "hooks"),
    ("basic_multi_tensor_target_batched_nt", "internal_batch_size"),
    ("basic_multi_tensor_target_batched_nt", "jit"),
    ("basic_multi_tensor_target_nt", "internal_batch_size"),
    ("basic_multiple_tuple_target", "batch"),
    ("basic_multiple_tuple_target_nt", "batch"),
    ("basic_multiple_tuple_target_nt", "hooks"),
    ("basic_multiple_tuple_target_nt", "internal_batch_size"),
    ("basic_multiple_tuple_target_nt", "jit"),
    ("basic_multiple_tuple_target_with_internal_batching", "batch"),
    ("basic_multiple_tuple_target_with_internal_batching", "hooks"),
    ("basic_multiple_tuple_target_with_internal_batching", "internal_batch_size"),
    ("basic_multiple_tuple_target_with_internal_batching", "jit"),
    ("basic_multiple_tuple_target_with_perturbations_per_eval", "batch"),
    ("basic_multiple_tuple_target_with_perturbations_per_eval", "hooks"),
    ("basic_multiple_tuple_target_with_perturbations_per_eval", "internal_batch_size"),
    ("basic_multiple_tuple_target_with_perturbations_per_eval", "jit"),
    ("basic_neuron_multiple_input_with_baselines_and_perturbations_per_eval", "batch"),
    ("basic_neuron_multiple_input_with_baselines_and_perturbations_per_eval", "hooks"),
    ("basic_single_tensor_target_nt", "internal_batch_size"),
    ("conv_layer_with_perturbations_per_eval", "hooks"),
    ("conv_neuron", "internal_batch_size"),
    ("conv_neuron_slice_selector", "internal_batch_size"),
    ("conv_neuron_with_perturbations_per_eval", "batch"),
    ("conv_neuron_with_perturbations_per_eval", "hooks"),
}
#: examples next to a ReLU kink: where the state's Jacobian is exact (a few outputs) every
#: draw is paired with its linearised twin, and while no draw has crossed the kink the twin
#: matches exactly, so the reported standard error is ~0 although the next draws may cross
#: it; batch and alone then differ by more than their reported errors. (They no longer land
#: at sigma_max: test_relu_kink_is_not_sent_to_the_bound.)
RELU_KINK_BUG = (
    "known limit: next to a ReLU kink the control variate reports a near-zero standard error "
    "until some draw crosses the kink, so two runs can differ by more than their errors"
)
#: (configuration, check) pairs that can fail for the known limit next to ReLU kinks: both
#: estimates met the stopping rule, one of them with a control-variate standard error of
#: ~1e-6 because no draw had crossed the kink (the batch check compares only converged
#: estimates, see check_batch). Not strict: which seeds hit it moves with any change.
KNOWN_BUG: set[tuple[str, str]] = {
    ("basic_multiple_tuple_target_with_internal_batching", "batch"),
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


def _params() -> list[Any]:
    out = []
    for name in ENTRIES:
        for check in CHECKS:
            marks: list[Any] = [pytest.mark.slow] if (name, check) in SLOW else []
            if (name, check) in KNOWN_BUG:
                # not strict: whether a given seed hits the bug moves with any estimator change
                marks.append(pytest.mark.xfail(reason=RELU_KINK_BUG, strict=False))
            out.append(pytest.param(name, check, id=f"{name}-{check}", marks=marks))
    return out


@pytest.mark.parametrize(("name", "check"), _params())
def test_captum_config(name: str, check: str) -> None:
    entry = ENTRIES[name]
    reason = _skip_reason(entry)
    if reason is not None:
        pytest.skip(reason)
    case = build(entry)
    assert_no_hooks(case.model)
    CHECKS[check](case)


def test_configurations_are_mapped() -> None:
    """Every configuration either runs or is skipped for a stated reason, and the runs cover
    the three mappings, per-example targets, noise tunnel and internal batching."""
    kinds: set[str] = set()
    per_example = nt = batching = 0
    for entry in config:
        if _skip_reason(entry) is None:
            case = build(entry)
            kinds.add(case.kind)
            per_example += isinstance(case.target, (list, Tensor)) and len(case.target) > 1
            nt += case.nt_kwargs is not None
            batching += case.internal_batch_size is not None
    assert kinds == {"input", "layer", "neuron"}
    assert per_example > 0 and nt > 0 and batching > 0


@pytest.mark.slow
def test_relu_kink_is_not_sent_to_the_bound() -> None:
    """The bug behind the ``KNOWN_BUG`` entries, reduced to one unit: Φ(x) = relu(5 Σx + 16)
    on x = 0 in R^6 (Captum's ``basic_neuron_multi_input``, example 8, relu unit 3).

    The state moves under any noise (the unit is alive, gradient 5 per element), so σ at
    σ_max = 112 costs the objective ``E((Φ(x+ε) - Φ(x)) / 52)^2 - 0.1 log(σ/σ_max)`` about
    349, against 0.52 at log σ ≈ 0 (Monte Carlo, 2e5 draws: 0.520 at log σ = -0.05, 0.516
    at 0.20, 348.7 at log 112). A sound estimate never puts every group at the bound here,
    and certainly not with ``converged`` True; 30 seeds leave no room for luck: the bug hit
    4 of them at c2a0396. Fixed since: a group whose pooled curvature estimate is not
    positive (noise on a kink) keeps its σ and pools more draws instead of jumping to σ_max,
    and is not called converged.
    """
    pe = PerturbationEntropyAttribution(lambda x: torch.relu(5 * x.sum(1, keepdim=True) + 16.0))
    at_bound = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the estimator's own convergence/bound warnings
        for seed in range(30):
            res = pe.explain(
                torch.zeros(1, 6), sigma_max=112.0, state_std=torch.tensor(52.0), seed=seed
            )
            if float(res.estimate.log_ratio.max()) == 0.0:
                at_bound.append(seed)
    assert not at_bound, f"every group at sigma_max for seeds {at_bound}"
