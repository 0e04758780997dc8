"""One contract tester that every attribution class goes through (torchmetrics'
``MetricTester``): a factory builds a fresh :class:`Setup` (attribution object, inputs,
call kwargs, model) and :class:`ContractTester` checks Captum's contract on it
(``captum-contract.md``).

Tolerance of Monte-Carlo comparisons (:func:`assert_log_sigma_close`): the estimator
reports ``res.estimate.std_error``, the standard error of each group's log σ from its
own pooled samples. Two runs with different noise (another seed, another batch
composition) estimate the same log σ with independent errors, so their difference has
standard deviation ``sqrt(se_a² + se_b²)``, and 4 of those bound a Gaussian deviation
with probability 1 - 6e-5 per group: ``|Δ log σ| <= 4 sqrt(se_a² + se_b²) + 1e-4``.
``1e-4`` absorbs float32 round-off for groups whose standard error is ~0 (a linear state,
where the default estimator is near-exact, so the bound is tight there). Groups clamped
at σ_max are equal in both runs.

The bound rests on the reported standard error, so that error is itself tested from both
sides: ``test_calibration.py`` checks, over 40 seeds against a quadrature truth, that the
z-scores' spread is inside its χ² interval, so an inflated standard error (which would
widen these bounds) fails its lower end and an understated one its upper end.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from captum.attr import LayerAttribution, NoiseTunnel
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor, nn

from captum_perturb import AdamConfig, FixedPointConfig

#: the default algorithm run to the tighter stopping rule closed-form tests need
#: (test_closed_form.py's docstring derives tol = 0.005 from the 2 % target)
PRECISE = FixedPointConfig(tol=0.005, max_iter=1000)
#: With at least as many projections as state elements the first-order start uses the
#: standard basis, so the Jacobian norms are exact; for a linear state the control variate
#: ("auto" keeps it there) then makes every draw exact, and so is σ. Used where the
#: blocks J_g have low rank (down to 1), whose plain Monte-Carlo error per draw is large.
EXACT = FixedPointConfig(n_projections=100_000)
SE_FACTOR = 4.0
ROUND_OFF = 1e-4
HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")


class LayerBoomError(RuntimeError):
    """Raised by a module made to fail inside its forward pass."""


@dataclass
class Setup:
    """A ready-to-call attribution problem.

    ``kwargs`` holds every call kwarg but ``target``; ``model`` is the root module behind
    ``attr.forward_func`` (holding a Dropout); ``targets`` maps target-form names to
    targets valid for this batch; ``bad_target`` selects nothing; ``shapes`` are the
    expected attribution shapes (the layer value's for the layer class);
    ``raising_module`` is made to raise in the hook check; ``float_inputs`` says whether
    Captum's wrappers can perturb the inputs; ``metric_target`` selects one scalar per
    example (for ``infidelity``); ``linear_state`` says that σ does not depend on the
    inputs' values (a state linear in them and a fixed ``sigma_max``), so that noisy
    copies of an example have the plain example's σ.
    """

    attr: Any
    inputs: Tensor | tuple[Tensor, ...]
    kwargs: dict[str, Any]
    model: nn.Module
    target: Any
    targets: dict[str, Any]
    bad_target: Any
    feature_mask: Any
    shapes: tuple[torch.Size, ...]
    raising_module: nn.Module
    float_inputs: bool = True
    metric_target: Any = None
    linear_state: bool = False

    @property
    def tuple_inputs(self) -> tuple[Tensor, ...]:
        return _as_tuple(self.inputs)

    @property
    def batch(self) -> int:
        return self.tuple_inputs[0].shape[0]

    @property
    def mask_kw(self) -> str:
        return "layer_mask" if isinstance(self.attr, LayerAttribution) else "feature_mask"

    def call_kwargs(self, **override: Any) -> dict[str, Any]:
        return {**self.kwargs, "target": self.target, **override}

    def explain(self, **override: Any) -> Any:
        return self.attr.explain(self.inputs, **self.call_kwargs(**override))

    def attribute(self, **override: Any) -> Any:
        return self.attr.attribute(self.inputs, **self.call_kwargs(**override))

    def explain_alone(self, i: int, target: Any) -> Any:
        """Explain example ``i`` alone (tensors with the batch as dim 0 are sliced)."""

        def cut(v: Any) -> Any:
            if isinstance(v, tuple):
                return tuple(cut(a) for a in v)
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == self.batch:
                return v[i : i + 1]
            return v

        kwargs = {k: v if k == "state_std" else cut(v) for k, v in self.kwargs.items()}
        return self.attr.explain(cut(self.inputs), **kwargs, target=target)


Factory = Callable[[torch.device], Setup]


def assert_log_sigma_close(res_a: Any, row_a: int, res_b: Any, row_b: int) -> None:
    """log σ of example ``row_a`` of ``res_a`` and of ``row_b`` of ``res_b`` agree."""
    ids_a, ids_b = res_a.group_ids[row_a], res_b.group_ids[row_b]
    n = int((ids_a >= 0).sum())
    assert n > 0
    torch.testing.assert_close(ids_a[:n], ids_b[:n])
    assert bool((ids_b[n:] < 0).all()), "the two runs see different groups"
    ls_a, ls_b = res_a.estimate.log_sigma[row_a, :n], res_b.estimate.log_sigma[row_b, :n]
    se_a, se_b = res_a.estimate.std_error[row_a, :n], res_b.estimate.std_error[row_b, :n]
    assert bool(torch.isfinite(se_a).all() and torch.isfinite(se_b).all()), "no standard error"
    # the tolerance derived in the module docstring
    tol = SE_FACTOR * (se_a.square() + se_b.square()).sqrt() + ROUND_OFF
    diff = (ls_a - ls_b).abs()
    w = int((diff - tol).argmax())
    assert bool((diff <= tol).all()), (
        f"log σ of group {w} differ by {diff[w].item():.3g} > {tol[w].item():.3g} "
        f"(standard errors {se_a[w].item():.3g}, {se_b[w].item():.3g})\n{ls_a}\n{ls_b}"
    )


def assert_copies_close(res_k: Any, k: int, res: Any) -> None:
    """Row ``b·k + j`` of ``res_k`` is the ``j``-th of ``k`` copies of example ``b`` of
    ``res`` (Captum's ``repeat_interleave`` expansion): their log σ agree within the
    standard-error bound of :func:`assert_log_sigma_close`."""
    assert res_k.group_ids.shape[0] == k * res.group_ids.shape[0]
    for b in range(res.group_ids.shape[0]):
        for j in range(k):
            assert_log_sigma_close(res_k, b * k + j, res, b)


def change_bound(res_a: Any, row_a: int, res_b: Any, row_b: int) -> Tensor:
    """Largest Frobenius norm of the difference of two runs' attributions of one example
    that the per-group bound of :func:`assert_log_sigma_close` allows: every element of
    group ``g`` carries the group's score, so ``|Δ|² <= Σ_g m_g tol_g²``."""
    size = res_a.estimate.group_size[row_a]
    se_a, se_b = res_a.estimate.std_error[row_a], res_b.estimate.std_error[row_b]
    present = size > 0
    assert bool(torch.isfinite(se_a[present]).all() and torch.isfinite(se_b[present]).all())
    tol = SE_FACTOR * (se_a.square() + se_b.square()).sqrt() + ROUND_OFF
    return (size * torch.where(present, tol, torch.zeros_like(tol)).square()).sum().sqrt()


@contextmanager
def recording(attr: Any) -> Iterator[list[Any]]:
    """Record the result of every ``attr.explain`` call (``attribute`` goes through it),
    e.g. the expanded batches that Captum's wrappers pass."""
    calls: list[Any] = []
    original = attr.explain

    def explain(*args: Any, **kwargs: Any) -> Any:
        res = original(*args, **kwargs)
        calls.append(res)
        return res

    attr.explain = explain
    try:
        yield calls
    finally:
        del attr.explain


def token_mask_tensor(kwargs: dict[str, Any], inputs: tuple[Tensor, ...]) -> dict[str, Any]:
    """``kwargs`` with ``feature_mask="token"`` replaced by the same groups as a tensor of
    dim 0 = 1: Captum's NoiseTunnel expands ``feature_mask`` and asserts it is a tensor."""
    if kwargs.get("feature_mask") != "token":
        return kwargs
    masks = []
    offset = 0
    for x in inputs:
        ids = torch.arange(x[0, ..., 0].numel(), device=x.device).reshape(1, *x.shape[1:-1], 1)
        masks.append(ids + offset)
        offset += x[0, ..., 0].numel()
    return {**kwargs, "feature_mask": masks[0] if len(masks) == 1 else tuple(masks)}


def hook_snapshot(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every hook on any submodule, and torch's global module hooks."""
    snap = [(n, k, tuple(getattr(m, k))) for n, m in model.named_modules() for k in HOOK_DICTS]
    glob = nn.modules.module
    return snap + [("<global>", k, tuple(getattr(glob, k))) for k in GLOBAL_HOOKS]


def assert_no_hooks(model: nn.Module) -> None:
    left = [(n, k, h) for n, k, h in hook_snapshot(model) if h]
    assert not left, f"hooks left behind: {left}"


@contextmanager
def failing_forward(module: nn.Module, fail_at: int) -> Iterator[None]:
    """Make ``module.forward`` raise :class:`LayerBoomError` from its ``fail_at``-th call."""
    original, count = module.forward, [0]

    def boom(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        if count[0] >= fail_at:
            raise LayerBoomError(f"forward call {count[0]}")
        return original(*args, **kwargs)

    module.forward = boom  # type: ignore[method-assign]
    try:
        yield
    finally:
        del module.forward


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: for these tiny models intra-op threads cost more than
    they save on a loaded 2-core machine (a (2800, 32) @ (32, 64) matmul: 0.25 ms on one
    thread, 1 ms on two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def row_invariant_kernels() -> Iterator[None]:
    """Make ``nn.Linear`` and ``nn.Conv1d/2d/3d`` compute each row the same way whatever
    the batch's shape.

    BLAS and convolution kernels pick their summation order by the problem's shape: on
    some x86 CPUs a ``(2, K) @ (K, N)`` product rounds differently from the same rows
    inside a ``(4, K)`` one. Here a linear layer is an elementwise product summed over the
    last dimension, which reduces every row alone in the same order for any number of
    rows, and a convolution runs one example at a time; both on one thread, so that no
    reduction is split across threads. Under it a model of such layers gives bit-identical
    outputs and gradients for a row in any batch.
    """
    functional = nn.functional
    saved = {name: getattr(functional, name) for name in ("linear", "conv1d", "conv2d", "conv3d")}

    def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        out = (x.unsqueeze(-2) * weight).sum(-1)
        return out if bias is None else out + bias

    def one_at_a_time(conv: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def run(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            return torch.cat([conv(x[i : i + 1], *args, **kwargs) for i in range(len(x))])

        return run

    functional.linear = linear  # type: ignore[assignment]
    for name in ("conv1d", "conv2d", "conv3d"):
        setattr(functional, name, one_at_a_time(saved[name]))
    try:
        with one_thread():
            yield
    finally:
        for name, fn in saved.items():
            setattr(functional, name, fn)


def _name_in(model: nn.Module, module: nn.Module) -> str:
    """The name of ``module`` inside ``model``."""
    return next(name for name, m in model.named_modules() if m is module)


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return x if isinstance(x, tuple) else (x,)


def _target_of(target: Any, i: int) -> Any:
    """Example ``i``'s target when ``target`` has one per example, else ``target`` itself."""
    if isinstance(target, list):
        return [target[i]]
    return target[i : i + 1] if isinstance(target, Tensor) and target.numel() > 1 else target


class ContractTester:
    """Runs the contract checks on setups built by ``factory`` (fresh for every check)."""

    #: the ``check_*`` methods, in the contract's order
    CHECKS = (
        *("structure", "target_forms", "feature_mask_groups", "batch_invariance", "seeding"),
        *("hooks_after_success", "hooks_after_invalid_target", "hooks_after_layer_raises"),
        *("model_state", "train_mode", "internal_batch_size", "noise_tunnel", "captum_metrics"),
    )

    def __init__(self, factory: Factory, device: torch.device | str = "cpu") -> None:
        self.factory = factory
        self.device = torch.device(device)

    def run(self, check: str) -> None:
        """Run one of :attr:`CHECKS`."""
        getattr(self, f"check_{check}")()

    def setup(self) -> Setup:
        s = self.factory(self.device)
        s.model.eval()
        assert any(isinstance(m, nn.Dropout) for m in s.model.modules()), "needs a Dropout"
        assert_no_hooks(s.model)
        return s

    def check_structure(self) -> None:
        s = self.setup()
        attrs = s.attribute()
        assert isinstance(attrs, tuple) == isinstance(s.inputs, tuple)
        # dtype of the perturbed values: the inputs', or the model's for token ids
        ref = s.tuple_inputs[0] if s.float_inputs else next(s.model.parameters())
        assert len(_as_tuple(attrs)) == len(s.shapes)
        for a, shape in zip(_as_tuple(attrs), s.shapes, strict=True):
            assert isinstance(a, Tensor) and a.shape == shape and a.dtype == ref.dtype
            assert a.device.type == self.device.type
            assert bool(torch.isfinite(a).all())
            assert bool((a >= 0).all()), "log(σ_max/σ) is non-negative"
        res = s.explain()
        assert isinstance(res.sigma, tuple) == isinstance(s.inputs, tuple)
        for a, r, sig in zip(*map(_as_tuple, (attrs, res.attributions, res.sigma)), strict=True):
            assert sig.shape == a.shape and sig.dtype == a.dtype
            assert torch.equal(a, r), "attribute() and explain().attributions differ"

    def check_target_forms(self) -> None:
        s = self.setup()
        for name, target in s.targets.items():
            res = s.explain(target=target)
            for a, shape in zip(_as_tuple(res.attributions), s.shapes, strict=True):
                assert a.shape == shape, name
            # every form, per-example or shared (int, tuple, None), selects the same state
            # of example i in the batch as alone
            for i in range(s.batch):
                assert_log_sigma_close(res, i, s.explain_alone(i, _target_of(target, i)), 0)

    def check_feature_mask_groups(self) -> None:
        s = self.setup()
        res = s.explain(**{s.mask_kw: s.feature_mask})
        masks, attrs = _as_tuple(s.feature_mask), _as_tuple(res.attributions)
        for b in range(s.batch):
            full = [torch.broadcast_to(m, a.shape) for m, a in zip(masks, attrs, strict=True)]
            ids = torch.cat([m[b if m.shape[0] > 1 else 0].reshape(-1) for m in full])
            scores = torch.cat([a[b].reshape(-1) for a in attrs])
            sig = torch.cat([g[b].reshape(-1) for g in _as_tuple(res.sigma)])
            padded = sig.isnan()  # attention_mask 0: not perturbed, score 0
            assert bool((scores[padded] == 0).all())
            uniq = ids[~padded].unique()
            assert int((res.group_ids[b] >= 0).sum()) == len(uniq)
            for g in uniq:
                sel = (ids == g) & ~padded
                assert bool((scores[sel] == scores[sel][0]).all()), f"group {int(g)} split"
                assert bool((sig[sel] == sig[sel][0]).all())
                col = int((res.group_ids[b] == g).nonzero())
                torch.testing.assert_close(sig[sel][0], res.estimate.sigma[b, col])

    def check_batch_invariance(self) -> None:
        s = self.setup()
        res = s.explain()
        for i in range(s.batch):
            assert_log_sigma_close(res, i, s.explain_alone(i, _target_of(s.target, i)), 0)

    def check_seeding(self) -> None:
        s = self.setup()
        a, b = s.explain(seed=7), s.explain(seed=7)
        g = s.explain(seed=torch.Generator(device=self.device).manual_seed(7))
        for x, y, z in zip(*(_as_tuple(r.attributions) for r in (a, b, g)), strict=True):
            assert torch.equal(x, y) and torch.equal(x, z)
        other = s.explain(seed=123)
        for i in range(s.batch):
            assert_log_sigma_close(a, i, other, i)

    def check_hooks_after_success(self) -> None:
        s = self.setup()
        calls: list[int] = []
        handle = s.raising_module.register_forward_hook(lambda m, i, o: calls.append(1))
        before = hook_snapshot(s.model)
        s.attribute()
        assert calls, "the user's own hook must keep working"
        assert hook_snapshot(s.model) == before
        handle.remove()
        assert_no_hooks(s.model)

    def check_hooks_after_invalid_target(self) -> None:
        s = self.setup()
        with pytest.raises(ValueError, match="target"):
            s.attribute(target=s.bad_target)
        assert_no_hooks(s.model)

    def check_hooks_after_layer_raises(self) -> None:
        # count the module's calls in a clean run, then fail at the first, second, middle
        # and last of them (clean passes, Jacobian pass, perturbed passes)
        s, seen = self.setup(), []
        handle = s.raising_module.register_forward_pre_hook(lambda m, a: seen.append(1))
        s.attribute()
        handle.remove()
        calls = len(seen)
        assert calls >= 1, "the raising module never ran"
        for fail_at in sorted({1, min(2, calls), (calls + 1) // 2, calls}):
            s = self.setup()
            with failing_forward(s.raising_module, fail_at), pytest.raises(LayerBoomError):
                s.attribute()
            assert_no_hooks(s.model)
            assert not any(m.training for m in s.model.modules())

    def check_model_state(self, **override: Any) -> None:
        s = self.setup()
        params = dict(s.model.named_parameters())
        first, *_, last = params.values()
        first.requires_grad_(False)
        last.grad = torch.full_like(last, 0.25)
        modules = list(s.model.modules())
        for k, m in enumerate(modules):
            m.training = k % 2 == 0  # a mix of flags, to be restored exactly
        flags = [m.training for m in modules]
        before = {
            n: (p.detach().clone(), p.requires_grad, None if p.grad is None else p.grad.clone())
            for n, p in params.items()
        }
        for x in s.tuple_inputs:
            if x.is_floating_point():
                x.requires_grad_(True)
        inputs = [(x.detach().clone(), x.requires_grad) for x in s.tuple_inputs]
        s.attribute(**override)
        assert [m.training for m in modules] == flags
        for n, p in s.model.named_parameters():
            value, requires_grad, grad = before[n]
            assert torch.equal(p.detach(), value) and p.requires_grad == requires_grad, n
            # a None .grad stays None, a set one is untouched
            assert p.grad is None if grad is None else torch.equal(p.grad, grad), f"{n}.grad"
        for x, (value, requires_grad) in zip(s.tuple_inputs, inputs, strict=True):
            assert torch.equal(x.detach(), value) and x.requires_grad == requires_grad
            assert x.grad is None

    def check_train_mode(self) -> None:
        s = self.setup()
        expected = s.attribute()
        s.model.train()
        got = s.attribute()
        for e, g in zip(_as_tuple(expected), _as_tuple(got), strict=True):
            assert torch.equal(e, g), "train mode (dropout) changed the result"
        assert all(m.training for m in s.model.modules()), "train mode must be restored"

    def check_internal_batch_size(self) -> None:
        # The contract: the noise is drawn before chunking and every step of the estimator
        # is the same for any chunking, so only the model's own round-off may depend on
        # internal_batch_size. (1) With kernels that round each row alike in any batch
        # (row_invariant_kernels), every chunking gives the same σ bit for bit: a chunking
        # bug (misaligned noise, rows or targets) cannot pass. (2) With the machine's own
        # kernels, whose round-off may depend on the batch's shape, the chunked result's
        # flag (estimate.batch_dependent) and its warning say the same thing.
        s = self.setup()
        configs = (
            None,
            FixedPointConfig(n_projections=4, n_samples=2, min_iter=2, max_iter=2),
            AdamConfig(steps=3, n_samples=2),
        )
        with row_invariant_kernels():
            for config in configs:
                ref = s.explain(internal_batch_size=None, config=config)
                assert not bool(ref.estimate.batch_dependent.any())
                for size in (1, 2, 3):
                    got = s.explain(internal_batch_size=size, config=config)
                    assert not bool(got.estimate.batch_dependent.any())
                    pairs = (_as_tuple(ref.attributions), _as_tuple(got.attributions))
                    for r, g in zip(*pairs, strict=True):
                        assert torch.equal(g, r), f"internal_batch_size={size}, {config}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = s.explain(internal_batch_size=2)
        warned = any("internal_batch_size" in str(w.message) for w in caught)
        assert warned == bool(got.estimate.batch_dependent.any())

    def check_noise_tunnel(self) -> None:
        # NoiseTunnel repeats every example k times (repeat_interleave, with target and
        # additional_forward_args) and averages the k attributions. With stdevs=0 the k
        # copies are the example itself, so (1) the output is exactly the mean of the k
        # rows of the one batch it explains (recorded), and (2) each row's log σ is the
        # plain example's within the standard-error bound (assert_log_sigma_close): the
        # copies differ from it only by the Monte-Carlo noise of their own draws.
        s = self.setup()
        if not s.float_inputs:
            pytest.skip("NoiseTunnel adds noise to the inputs, which are token ids here")
        kwargs = token_mask_tensor(s.call_kwargs(), s.tuple_inputs)
        plain = s.explain()
        k = 3
        with recording(s.attr) as calls:
            out = NoiseTunnel(s.attr).attribute(s.inputs, nt_samples=k, stdevs=0.0, **kwargs)
        assert isinstance(out, tuple) == isinstance(s.inputs, tuple)
        assert len(calls) == 1, "NoiseTunnel explains all copies in one batch"
        for a, r, shape in zip(
            _as_tuple(out), _as_tuple(calls[0].attributions), s.shapes, strict=True
        ):
            assert a.shape == shape and bool(torch.isfinite(a).all())
            mean = r.reshape(s.batch, k, *shape[1:]).mean(1)
            # only the order of the k-term float sum may differ: <= k eps max|r|
            atol = k * torch.finfo(r.dtype).eps * float(r.abs().max())
            torch.testing.assert_close(a, mean, rtol=0.0, atol=atol)
        assert_copies_close(calls[0], k, plain)
        if s.linear_state:
            # σ of a linear state does not depend on where the inputs are: noisy copies
            # (stdevs far from 0) must still give the plain σ, within the same bound
            torch.manual_seed(0)  # NoiseTunnel draws from the global RNG
            with recording(s.attr) as calls:
                NoiseTunnel(s.attr).attribute(s.inputs, nt_samples=k, stdevs=0.5, **kwargs)
            assert_copies_close(calls[0], k, plain)

    def _check_infidelity(self, s: Setup, attrs: Any, args: Any) -> None:
        """``captum.metrics.infidelity`` of our attributions against the same definition
        computed here: mean over draws of (Iᵀa - (f(x) - f(x - I)))², with the perturbations
        I recorded as Captum draws them. It checks that our output has the structure
        Captum's metrics expect and that the value they report is the definition's (with a
        non-zero I the value depends on a, unlike the zero perturbation this replaced); it
        does not judge the attribution itself (the closed-form tests do). Captum evaluates f
        on a batch of another size, so the tolerance is relative: 1e-4 against float32's
        1.2e-7 rounding per operation."""
        gen = torch.Generator().manual_seed(0)
        drawn: list[tuple[Tensor, ...]] = []

        def perturb_fn(inputs: Any) -> Any:
            xs = _as_tuple(inputs)
            noise = tuple(0.1 * torch.randn(x.shape, generator=gen).to(x) for x in xs)
            drawn.append(noise)
            pert = tuple(x - n for x, n in zip(xs, noise, strict=True))
            return (noise, pert) if isinstance(inputs, tuple) else (noise[0], pert[0])

        k = 4
        infid = infidelity(
            s.attr.forward_func,
            perturb_fn,
            s.inputs,
            attrs,
            additional_forward_args=args,
            target=s.metric_target,
            n_perturb_samples=k,
            normalize=False,
        )
        assert infid.shape == (s.batch,)
        side = _as_tuple(args if args is not None else ())

        def f(xs: tuple[Tensor, ...]) -> Tensor:
            rows = xs[0].shape[0] // s.batch
            rep = tuple(a.repeat_interleave(rows, 0) if isinstance(a, Tensor) else a for a in side)
            with torch.no_grad():
                out = s.attr.forward_func(*xs, *rep)
            if s.metric_target is not None:
                out = out[(slice(None), *_as_tuple(s.metric_target))]
            return out.reshape(len(xs[0]))

        # Captum stacks the k draws of each example together (repeat_interleave)
        noise = tuple(torch.cat(parts) for parts in zip(*drawn, strict=True))
        x_rep = tuple(x.repeat_interleave(k, 0) for x in s.tuple_inputs)
        a_rep = tuple(a.repeat_interleave(k, 0) for a in _as_tuple(attrs))
        dot = sum((n * a).reshape(len(n), -1).sum(1) for n, a in zip(noise, a_rep, strict=True))
        pert = tuple(x - n for x, n in zip(x_rep, noise, strict=True))
        expected = ((dot - (f(x_rep) - f(pert))) ** 2).reshape(s.batch, k).mean(1)
        torch.testing.assert_close(infid, expected.to(infid.dtype), rtol=1e-4, atol=1e-6)
        assert bool((expected > 0).any()), "the perturbations must move something"

    def check_captum_metrics(self) -> None:
        s = self.setup()
        if not s.float_inputs:
            pytest.skip("captum.metrics perturb the inputs, which are token ids here")
        kwargs = s.call_kwargs(target=s.metric_target)
        if isinstance(kwargs.get("layer"), nn.Module):
            # sensitivity_max deep-copies its kwargs, and a copied module never runs: the
            # documented workaround is the module's name (checked: the copy raises)
            kwargs["layer"] = _name_in(s.model, kwargs["layer"])
        args = kwargs.get("additional_forward_args")
        attrs = s.attr.attribute(s.inputs, **kwargs)
        self._check_infidelity(s, attrs, args)

        def explain_func(inp: Any, **kw: Any) -> Any:
            # sensitivity_max passes a tuple and iterates over the result as a tuple; a
            # layer attribution (like Captum's own layer methods) is a single tensor
            out = s.attr.attribute(inp, **kw)
            return _as_tuple(out) if isinstance(s.attr, LayerAttribution) else out

        # sensitivity_max with a perturbation of radius 0 explains k exact copies of
        # each example (expanding target and additional_forward_args): its value is the
        # largest |attr(copy) - attr(x)|_F / |attr(x)|_F, which only the Monte-Carlo
        # noise of the two runs can make non-zero: bounded by change_bound / |attr(x)|_F
        # For a linear state with a fixed sigma_max σ does not depend on the inputs' values
        # at all, so the same bound holds for Captum's default perturbation (radius 0.02)
        radii: list[Any] = [lambda x: x]
        if s.linear_state:
            radii.append(None)
        k = 3
        for perturb in radii:
            extra = {} if perturb is None else {"perturb_func": perturb}
            with recording(s.attr) as calls:
                sens = sensitivity_max(
                    explain_func, s.inputs, n_perturb_samples=k, **extra, **kwargs
                )
            assert sens.shape == (s.batch,) and bool(torch.isfinite(sens).all())
            assert len(calls) == 2, "one clean call, then the k copies in one batch"
            clean, copies = calls
            for b in range(s.batch):
                parts = [a[b].reshape(-1) for a in _as_tuple(clean.attributions)]
                norm = torch.cat(parts).norm()
                norm = norm if norm > 0 else torch.ones_like(norm)  # as sensitivity_max does
                bound = max(change_bound(copies, b * k + j, clean, b) for j in range(k)) / norm
                assert float(sens[b]) <= float(bound), (b, float(sens[b]), float(bound))


def model_snapshot(model: nn.Module) -> dict[str, Any]:
    """What a caller owns of a model: weights, ``requires_grad``, train/eval mode, hooks."""
    return {
        "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
    }


def assert_model_untouched(model: nn.Module, before: dict[str, Any]) -> None:
    """Everything :func:`model_snapshot` recorded is as it was."""
    after = model_snapshot(model)
    assert after["grad"] == before["grad"] and after["training"] == before["training"]
    assert after["hooks"] == before["hooks"]
    for k, v in before["params"].items():
        assert torch.equal(after["params"][k], v), k
