r"""A drop-in for the authors' reference ``Interpreter``, backed by :func:`estimate_sigma`.

Users of the reference code (Guan et al., ICML 2019) explain one sentence at a time, as
its README does::

    regularization = calculate_regularization(sampled_x, Phi, device=device)
    interpreter = Interpreter(
        x=x, Phi=Phi, regularization=regularization, scale=10 * 0.1, words=words
    ).to(device)
    interpreter.optimize(iteration=5000, lr=0.5, show_progress=True)
    interpreter.get_sigma()
    interpreter.visualize()

The same lines work with ``from captum_perturb import Interpreter, calculate_regularization``
(``tests/test_reference_dropin.py`` runs the README's snippets so). The objective is the
reference code's (σ_i = ``scale`` · sigmoid(ρ_i), means instead of sums, one noise scale per
word), but it is solved by the package's default estimator, which converges to the optimum
instead of keeping the lowest single-sample loss of 5,000 Adam steps. Pass
``config=captum_perturb.REFERENCE`` to run the reference algorithm itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from captum_perturb._utils.common import make_generator
from captum_perturb.config import AdamConfig, EstimatorConfig, FixedPointConfig
from captum_perturb.functional.estimate import SigmaEstimate, estimate_sigma

#: The drop-in's default: the fixed-point estimator stopped at a root-mean-square
#: standard error of 0.005 in log σ (``DEFAULT`` stops at 0.02).
PRECISE = FixedPointConfig(tol=0.005, max_iter=1000)


def calculate_regularization(
    sampled_x: Sequence[Tensor],
    Phi: Callable[[Tensor], Tensor],
    reduced_axes: Sequence[int] | None = None,
    device: torch.device | str | None = None,
) -> np.ndarray:
    r"""σ_S: the element-wise population std of the explained state over sampled inputs.

    .. math::

        \sigma_{S,j} = \sqrt{\tfrac1N \textstyle\sum_n (s^{(n)}_j - \bar s_j)^2},
        \qquad s^{(n)} = \operatorname{mean}_{\text{reduced\_axes}} \Phi(x^{(n)}),

    the reference code's ``regularization`` (the paper's normaliser). Pass it to
    :class:`Interpreter` as ``regularization``.

    Args:
        sampled_x: ``N`` input embeddings, each ``[length, dim]``; the lengths may differ
            when ``reduced_axes`` removes the axes that depend on them.
        Phi: maps one input to the explained hidden state (a tensor of any shape).
        reduced_axes: axes of ``Phi(x)`` that vary between inputs (e.g. the token axis);
            each is averaged out, keeping it with size 1.
        device: move every input there before calling ``Phi``.

    Returns:
        σ_S as a float64 array of the shape of one (reduced) state.

    Raises:
        ValueError: no samples, an axis out of range, or states of different shapes.

    Example:
        >>> import torch
        >>> from captum_perturb import calculate_regularization
        >>> W = torch.tensor([1.0, -2.0])
        >>> xs = [torch.randn(2, 3) for _ in range(4)]
        >>> std = calculate_regularization(xs, lambda x: W @ x)
        >>> std.shape, std.dtype
        ((3,), dtype('float64'))
        >>> per_token = calculate_regularization(xs, lambda x: 2 * x, reduced_axes=[0])
        >>> per_token.shape
        (1, 3)
    """
    if len(sampled_x) == 0:
        raise ValueError("sampled_x is empty: pass at least one input to estimate σ_S from")
    states: list[Tensor] = []
    with torch.no_grad():
        for x in sampled_x:
            s = Phi(x if device is None else x.to(device))
            if reduced_axes is not None:
                for axis in reduced_axes:
                    if not -s.dim() <= axis < s.dim():
                        raise ValueError(
                            f"reduced axis {axis} is out of range for a state of shape "
                            f"{tuple(s.shape)}"
                        )
                    s = s.mean(dim=axis, keepdim=True)
            if states and s.shape != states[0].shape:
                raise ValueError(
                    f"Phi gave states of shapes {tuple(states[0].shape)} and {tuple(s.shape)}; "
                    "average the axes that depend on the input length with reduced_axes"
                )
            states.append(s.detach().to("cpu", torch.float64))
    stacked = torch.stack(states)
    return stacked.std(dim=0, correction=0).numpy()


class Interpreter:
    r"""Explain one hidden state of one sentence: the reference code's ``Interpreter``.

    Each word ``i`` (row of ``x``) gets noise :math:`\varepsilon_i \sim N(0, \sigma_i^2 I)`
    with :math:`0 < \sigma_i \le` ``scale``, and σ minimises (paper Eq. 7 in the
    reference code's units, ``n`` words, ``M`` elements of the state)

    .. math::

        L(\sigma) = \mathbb{E}_\varepsilon\,\frac1M\sum_j
        \frac{(\Phi(x + \varepsilon)_j - \Phi(x)_j)^2}{\sigma_{S,j}^2}
        \;-\; \frac{rate}{n}\sum_i \log\frac{\sigma_i}{scale}.

    A small σ_i means the state keeps much of word ``i``.

    Args:
        x: ``[length, dim]`` the input word embeddings of one sentence, floating point.
        Phi: maps an input like ``x`` to the explained hidden state (any shape). It must
            be differentiable and deterministic (call ``model.eval()``).
        scale: σ_max, the largest noise scale; the authors recommend 10 × the std of the
            model's word-embedding matrix.
        rate: weight of the entropy term; larger values give larger σ.
        regularization: σ_S broadcastable to ``Phi(x)`` (e.g. from
            :func:`calculate_regularization`). ``None`` divides by mean(Φ(x)²) instead, as
            the reference code does (with a warning: a corpus σ_S is the sound choice).
        words: the ``length`` words, used as tick labels by :meth:`visualize`.
        config: the estimator; default :data:`PRECISE`, the package's fixed-point
            estimator run to a 4× tighter stopping rule than ``DEFAULT`` (a reference-code
            user asked for 5,000 steps on one sentence, so precision is affordable: every
            σ lands within 2 % of the optimum on the reference README example).
            With an :class:`~captum_perturb.AdamConfig` (e.g. ``REFERENCE``) the
            ``iteration`` and ``lr`` of :meth:`optimize` set its steps and learning rate.
        seed: an int, a ``torch.Generator`` or ``None`` (torch's global RNG); an int makes
            every :meth:`optimize` call give the same σ.

    Raises:
        TypeError: ``x`` is not a floating-point tensor.
        ValueError: ``x`` is not 2-D, or ``words`` does not have one word per row of ``x``.

    Example:
        >>> import torch
        >>> from captum_perturb import Interpreter
        >>> W = torch.tensor([4.0, 1.0, 0.0])
        >>> x = torch.randn(3, 8)
        >>> interpreter = Interpreter(x, lambda x: W @ x, regularization=torch.ones(8))
        >>> interpreter.optimize()
        >>> sigma = interpreter.get_sigma()
        >>> sigma.shape, [int(i) for i in sigma.argsort()]
        ((3,), [0, 1, 2])
        >>> float(sigma[2])  # the state ignores word 2: σ reaches scale
        0.5
    """

    def __init__(
        self,
        x: Tensor,
        Phi: Callable[[Tensor], Tensor],
        scale: float = 0.5,
        rate: float = 0.1,
        regularization: Tensor | np.ndarray | float | None = None,
        words: Sequence[str] | None = None,
        *,
        config: EstimatorConfig | None = None,
        seed: int | torch.Generator | None = 0,
    ) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(
                f"x must be a floating-point torch.Tensor of shape [length, dim], got "
                f"{getattr(x, 'dtype', type(x).__name__)}"
            )
        if x.dim() != 2:
            raise ValueError(
                f"x must be one instance of shape [length, dim], got shape {tuple(x.shape)}"
            )
        if words is not None and len(words) != x.shape[0]:
            raise ValueError(
                f"words has {len(words)} entries but x has {x.shape[0]} rows; give one word "
                "per row of x"
            )
        self.x = x
        self.Phi = Phi
        self.scale = scale
        self.rate = rate
        self.regularization = regularization
        self.words = None if words is None else list(words)
        self.config = PRECISE if config is None else config
        self.seed = seed
        self._estimate: SigmaEstimate | None = None

    def to(
        self,
        device: torch.device | str | int | torch.dtype | Tensor | None = None,
        dtype: torch.dtype | None = None,
        non_blocking: bool = False,
    ) -> Interpreter:
        """Move (and optionally cast) what the interpreter holds; the reference's ``.to``.

        The reference ``Interpreter`` is an ``nn.Module``, so its README writes
        ``Interpreter(...).to(device)``. Like ``nn.Module.to`` this works in place and
        returns ``self``, accepting ``to(device)``, ``to(dtype)``, ``to(tensor)`` (its
        device and dtype) and ``to(device, dtype)``. It moves ``x`` and a tensor or array
        ``regularization`` (which becomes a tensor; a Python number stays a number). The
        tensors the caller passed in are not modified: the interpreter keeps moved copies
        (the same tensor where nothing changes, as ``Tensor.to`` does). ``Phi`` is the
        caller's and is not touched: it must accept inputs on the new device, as in the
        README, where ``Phi`` builds its weights on the global ``device``. σ is learned
        on ``x``'s device and in its dtype; a result of an earlier :meth:`optimize`
        stays as it is. An integer ``seed`` then draws the noise on the new device
        (a different stream from the CPU's); a ``torch.Generator`` seed must be on it.

        Args:
            device: the target device (``torch.device``, ``"cuda:0"``, a CUDA index), or,
                when ``dtype`` is not given, a floating ``torch.dtype`` or a tensor whose
                device and dtype to take. ``None`` keeps the device.
            dtype: a floating-point dtype to cast ``x`` and ``regularization`` to;
                ``None`` keeps their dtypes.
            non_blocking: passed to ``Tensor.to``.

        Returns:
            ``self``.

        Raises:
            TypeError: ``dtype`` is not a floating-point ``torch.dtype``, or a dtype or
                tensor is given both positionally and as ``dtype``.

        Example:
            >>> import torch
            >>> from captum_perturb import Interpreter
            >>> x = torch.randn(3, 8)
            >>> interpreter = Interpreter(x, lambda x: x.sum(0), regularization=torch.ones(8))
            >>> interpreter.to("cpu") is interpreter
            True
            >>> interpreter.to(torch.float64).x.dtype, x.dtype
            (torch.float64, torch.float32)
        """
        target: torch.device | str | int | None
        if isinstance(device, (torch.dtype, Tensor)):
            if dtype is not None:
                raise TypeError(
                    f"to() got a {type(device).__name__} positionally and dtype={dtype}; "
                    "call to(device, dtype) or to(dtype)"
                )
            if isinstance(device, Tensor):
                target, dtype = device.device, device.dtype
            else:
                target, dtype = None, device
        else:
            target = device
        if dtype is not None and (
            not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
        ):
            raise TypeError(
                f"Interpreter.to only casts to a floating-point torch.dtype, got {dtype!r}; "
                "x must stay floating point"
            )
        self.x = self.x.to(device=target, dtype=dtype, non_blocking=non_blocking)
        reg = self.regularization
        if isinstance(reg, (Tensor, np.ndarray)):
            self.regularization = torch.as_tensor(reg).to(
                device=target, dtype=dtype, non_blocking=non_blocking
            )
        return self

    def _state_fn(self, perturbed: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        # Phi explains one instance; apply it to each stacked copy (in the gradient path)
        return torch.stack([self.Phi(copy) for copy in perturbed[0]])

    def optimize(
        self, iteration: int = 5000, lr: float = 0.01, show_progress: bool = False
    ) -> None:
        """Learn σ; afterwards read it with :meth:`get_sigma`.

        Args:
            iteration: optimisation steps when ``config`` is an
                :class:`~captum_perturb.AdamConfig`; ignored by the fixed-point estimator,
                which stops once σ is known to its tolerance.
            lr: Adam's learning rate, as ``iteration``; ignored by the fixed-point estimator.
            show_progress: show a progress bar.
        """
        config = self.config
        if isinstance(config, AdamConfig):
            config = replace(config, steps=iteration, lr=lr)
        x = self.x.detach()
        state_std = (
            None
            if self.regularization is None
            else torch.as_tensor(self.regularization, dtype=x.dtype, device=x.device)
        )
        groups = torch.arange(x.shape[0], device=x.device)[:, None].expand(x.shape)
        self._estimate = estimate_sigma(
            self._state_fn,
            (x.unsqueeze(0),),
            (groups.unsqueeze(0),),
            sigma_max=self.scale,
            rate=self.rate,
            state_std=state_std,
            config=config,
            generator=make_generator(self.seed, x.device),
            show_progress=show_progress,
            progress_desc="Interpreter",
        )

    @property
    def estimate(self) -> SigmaEstimate:
        """The full :class:`~captum_perturb.functional.SigmaEstimate` of the last run."""
        if self._estimate is None:
            raise RuntimeError("call optimize() before reading the result")
        return self._estimate

    def get_sigma(self) -> np.ndarray:
        """The learned noise scale of every word.

        Returns:
            ``[length]`` σ_i in ``(0, scale]``; small = important to the state. A numpy
            array in ``x``'s dtype (``float32`` for a float32 ``x``, as the reference
            code printed).

        Raises:
            RuntimeError: :meth:`optimize` has not run.
        """
        return self.estimate.sigma[0].detach().cpu().numpy()

    def visualize(self) -> tuple[Any, Any]:
        """Show σ of every word as a one-row image (dark = small σ = important).

        Needs matplotlib. The figure is shown only when the backend is interactive.

        Returns:
            The matplotlib ``(figure, axes)``.
        """
        import matplotlib
        import matplotlib.pyplot as plt

        sigma = self.get_sigma()
        fig, ax = plt.subplots()
        ax.imshow(sigma[None, :], cmap="GnBu_r")
        ax.set_xticks(range(len(sigma)))
        if self.words is not None:
            ax.set_xticklabels(self.words)
        ax.set_yticks([0])
        ax.set_yticklabels([""])
        fig.tight_layout()
        if _interactive_backend(matplotlib.get_backend()):
            plt.show()
        return fig, ax


#: matplotlib's built-in backends that only render to files (before its registry, 3.9)
_NON_INTERACTIVE = ("agg", "cairo", "pdf", "pgf", "ps", "svg", "template")


def _interactive_backend(name: str) -> bool:
    """Whether matplotlib's backend ``name`` can show a window (or notebook output)."""
    try:
        from matplotlib.backends import BackendFilter, backend_registry
    except ImportError:  # matplotlib < 3.9
        return name.lower() not in _NON_INTERACTIVE
    return name.lower() not in backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE)
