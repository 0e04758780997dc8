"""The ``Interpreter`` drop-in runs the authors' README example and solves it exactly.

The README's Φ(x) = W @ x is linear, so σ has a closed form (method.md): with
c̄ = mean_j 1/σ_S,j² and n words, σ_i* = min(scale, sqrt(rate / (2 n c̄)) / |W_i|). Without
a σ_S the reference code divides the squared error by mean(Φ(x)²) instead, i.e.
σ_S² = mean(Φ(x)²) for every element, so c̄ = 1 / mean(Φ(x)²).

Tolerance: 2 % on every σ, the project's accuracy target for the default estimator
(method.md); float32 round-off is negligible against it.
"""

from __future__ import annotations

import math
from dataclasses import replace

import matplotlib
import numpy as np
import pytest
import torch

from captum_perturb import REFERENCE, Interpreter, calculate_regularization
from captum_perturb.functional import estimate_sigma

matplotlib.use("Agg")

RTOL = 0.02
README_W = torch.tensor([10.0, 20.0, 5.0, -20.0, -10.0])

# the README's Phi reads a global `device`; its x is created on the CPU
device = torch.device("cpu")


def readme_phi(x: torch.Tensor) -> torch.Tensor:
    """The README's ``Phi`` (defined again, verbatim, inside the README test)."""
    W = torch.tensor([10.0, 20.0, 5.0, -20.0, -10.0]).to(device)
    return W @ x


def closed_form(W: torch.Tensor, c_bar: float, scale: float, rate: float) -> np.ndarray:
    n = len(W)
    free = math.sqrt(rate / (2 * n * c_bar)) / W.double().abs()
    return free.clamp(max=scale).numpy()


def test_readme_example() -> None:
    with torch.random.fork_rng():  # the README draws x from the global RNG
        torch.manual_seed(0)
        # --- the README, unchanged apart from the import ---
        x = torch.randn(5, 256) / 10
        words = ["1", "2", "3", "4", "5"]

        def Phi(x):  # noqa: N802 (the README's name)
            W = torch.tensor([10.0, 20.0, 5.0, -20.0, -10.0]).to(device)
            return W @ x

        interpreter = Interpreter(x=x, Phi=Phi, words=words)
        with pytest.warns(UserWarning, match="state_std"):  # the fallback normaliser
            interpreter.optimize(iteration=5000, lr=0.01, show_progress=True)
        fig, ax = interpreter.visualize()
        # --- end of the README ---

    assert [t.get_text() for t in ax.get_xticklabels()] == words
    assert ax.get_images()[0].get_array().shape == (1, 5)
    import matplotlib.pyplot as plt

    plt.close(fig)

    sigma = interpreter.get_sigma()
    assert isinstance(sigma, np.ndarray) and sigma.shape == (5,)
    c_bar = 1.0 / float(Phi(x).double().square().mean())
    expected = closed_form(README_W, c_bar, scale=0.5, rate=0.1)
    assert float(expected.max()) < 0.5  # no word is clamped at scale
    np.testing.assert_allclose(sigma, expected, rtol=RTOL, atol=0.0)
    # the README's reading: words 2 and 4 (|W| = 20) matter most
    assert set(np.argsort(sigma)[:2].tolist()) == {1, 3}


def test_readme_toy_with_corpus_regularization() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 256, generator=gen) / 100
    samples = [torch.randn(5, 256, generator=gen) / 100 for _ in range(100)]
    regularization = calculate_regularization(samples, readme_phi)
    assert regularization.shape == (256,)

    interpreter = Interpreter(x, readme_phi, scale=1.0, rate=0.1, regularization=regularization)
    interpreter.optimize()
    c_bar = float(np.mean(1.0 / regularization**2))
    expected = closed_form(README_W, c_bar, scale=1.0, rate=0.1)
    np.testing.assert_allclose(interpreter.get_sigma(), expected, rtol=RTOL, atol=0.0)

    # The closed form is ≈ 0.032/|W_i| (method.md): s_j = Σ_i W_i x_ij has variance
    # σ² = Σ W_i² / 100² = 0.1025, so sqrt(0.1 σ² / (2·5)) = 0.03202. From 100 samples
    # the population variance is σ² χ²_99 / 100, so E[1/σ̂²] = (100/97)/σ² (c̄ +3.1 %,
    # σ −1.5 %); each 1/σ̂_j² has relative sd ≈ sqrt(2/99) ≈ 14 % and the 256 elements
    # are independent, so c̄ has relative sd 0.9 % (σ: 0.45 %). 4 % covers bias + 5 sd.
    population = math.sqrt(0.1 * float(README_W.square().sum()) / 100**2 / (2 * 5))
    np.testing.assert_allclose(
        expected, population / README_W.abs().double().numpy(), rtol=0.04, atol=0.0
    )


def test_adam_config_honours_iteration_and_lr() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 16, generator=gen)
    reg = torch.ones(16)
    interpreter = Interpreter(x, readme_phi, regularization=reg, config=REFERENCE, seed=3)
    interpreter.optimize(iteration=100, lr=0.1)
    assert interpreter.estimate.n_iter == 100

    # the same run through the functional core with steps=100, lr=0.1, seed 3
    groups = torch.arange(5)[:, None].expand(5, 16)[None]
    direct = estimate_sigma(
        lambda inputs, rows: torch.stack([readme_phi(c) for c in inputs[0]]),
        (x[None],),
        (groups,),
        sigma_max=0.5,
        rate=0.1,
        state_std=reg,
        config=replace(REFERENCE, steps=100, lr=0.1),
        generator=torch.Generator().manual_seed(3),
    )
    np.testing.assert_array_equal(interpreter.get_sigma(), direct.sigma[0].numpy())

    interpreter.optimize(iteration=100, lr=0.01)  # a different lr gives a different σ
    assert not np.allclose(interpreter.get_sigma(), direct.sigma[0].numpy(), rtol=0.01)


def test_default_config_ignores_iteration_and_lr() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 16, generator=gen)
    interpreter = Interpreter(x, readme_phi, regularization=torch.ones(16))
    interpreter.optimize()
    first = interpreter.get_sigma()
    interpreter.optimize(iteration=3, lr=100.0)
    np.testing.assert_array_equal(interpreter.get_sigma(), first)


def test_scalar_state() -> None:
    # Φ(x) = Σ_ij W_i x_ij (one number, M = 1): J_i = W_i·1ᵀ_K, so with σ_S = s
    # a_i = K W_i² / s² and σ_i = sqrt(rate / (2 n K)) · s / |W_i|
    K, s = 8, 3.0
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, K, generator=gen)
    interpreter = Interpreter(x, lambda x: (README_W @ x).sum(), scale=10.0, regularization=s)
    interpreter.optimize()
    expected = math.sqrt(0.1 / (2 * 5 * K)) * s / README_W.abs().double().numpy()
    np.testing.assert_allclose(interpreter.get_sigma(), expected, rtol=RTOL, atol=0.0)


def test_calculate_regularization_matches_numpy() -> None:
    gen = torch.Generator().manual_seed(6)
    samples = [torch.randn(5, 12, generator=gen) for _ in range(30)]
    states = np.stack([readme_phi(x).numpy().astype(np.float64) for x in samples])
    np.testing.assert_allclose(
        calculate_regularization(samples, readme_phi), np.std(states, axis=0), rtol=1e-6, atol=0.0
    )


def test_calculate_regularization_reduced_axes() -> None:
    # states of different lengths [L, 3] are averaged over the token axis, keeping it
    gen = torch.Generator().manual_seed(7)
    samples = [torch.randn(length, 3, generator=gen) for length in (2, 5, 3, 7)]
    std = calculate_regularization(samples, lambda x: 2 * x, reduced_axes=[0])
    means = np.stack([(2 * x).mean(dim=0, keepdim=True).double().numpy() for x in samples])
    assert std.shape == (1, 3)
    np.testing.assert_allclose(std, np.std(means, axis=0), rtol=1e-6, atol=0.0)
    with pytest.raises(ValueError, match="shapes"):
        calculate_regularization(samples, lambda x: 2 * x)
    with pytest.raises(ValueError, match="out of range"):
        calculate_regularization(samples, lambda x: 2 * x, reduced_axes=[2])
    with pytest.raises(ValueError, match="empty"):
        calculate_regularization([], readme_phi)


def test_validation() -> None:
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="one instance"):
        Interpreter(torch.randn(1, 5, 4), readme_phi)
    with pytest.raises(TypeError, match="floating"):
        Interpreter(torch.ones(5, 4, dtype=torch.long), readme_phi)
    with pytest.raises(ValueError, match="words"):
        Interpreter(x, readme_phi, words=["a", "b"])
    with pytest.raises(RuntimeError, match="optimize"):
        Interpreter(x, readme_phi).get_sigma()
