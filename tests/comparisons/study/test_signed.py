"""The signed reading of our method (``ours-signed``): the sign of
:func:`comparisons.study.methods.noise_sign` on a model whose answer is known.

The toy classifier normalises each token (LayerNorm without weights, as a transformer's
blocks do), averages the tokens and reads out p_1 = sigmoid(w · mean). Noise of
σ_max = 10 × the embeddings' scale swamps the word it is put on, so the expected p_1
with that word drowned is the p_1 of the sentence without the word's direction: a word
along +w is evidence for class 1 (sign +1), one along −w against it (sign −1), and
specials get 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from comparisons.models.text_model import Example
from comparisons.study.methods import ExampleInputs, noise_sign

DIM = 16


def _inputs(directions: list[float], target: int) -> tuple[ExampleInputs, Tensor]:
    torch.manual_seed(0)
    w = torch.randn(DIM)
    w = w / w.norm()
    other = torch.randn(DIM)
    other = other - (other @ w) * w  # orthogonal to w: no evidence either way
    tokens = [other] + [c * w * 3 + 0.3 * other for c in directions] + [other]
    embeds = torch.stack(tokens).unsqueeze(0)
    special = torch.tensor([True] + [False] * len(directions) + [True])

    def forward(e: Tensor, mask: Tensor) -> Tensor:
        h = torch.nn.functional.layer_norm(e, (DIM,))
        logit = 4.0 * (h.mean(1) @ w)
        p1 = torch.sigmoid(logit)
        return torch.stack([1 - p1, p1], dim=1)

    n = embeds.shape[1]
    example = Example("toy", "", None, torch.arange(n), special, ["t"] * n)
    x = ExampleInputs(example, embeds, torch.ones(1, n), embeds * 0, forward, target, seed=3)
    return x, special


def test_the_sign_says_for_or_against_the_explained_class() -> None:
    directions = [1.0, -1.0, 0.8, -0.6]
    x, special = _inputs(directions, target=1)
    sign = noise_sign(x, sigma_max=30.0)
    assert sign[special].tolist() == [0.0, 0.0]
    assert sign[~special].tolist() == [1.0, -1.0, 1.0, -1.0]
    against = noise_sign(_inputs(directions, target=0)[0], sigma_max=30.0)
    assert against[~special].tolist() == [-1.0, 1.0, -1.0, 1.0]  # the other class: flipped


def test_the_sign_is_seeded_and_leaves_the_inputs_alone() -> None:
    x, _ = _inputs([1.0, -1.0, 0.5], target=1)
    before = x.embeds.clone()
    first = noise_sign(x, sigma_max=30.0)
    assert torch.equal(first, noise_sign(x, sigma_max=30.0))
    assert torch.equal(x.embeds, before)
