r"""The signed reading of a classifier's explanation: is a word evidence for the class?

The information a prediction keeps about a word is unsigned. Its direction is read from
what happens when the word is drowned in the largest noise the method allows:

.. math::

    d_w = f_t(x) - \mathbb{E}_{\varepsilon \sim N(0, \sigma_{max}^2 I)}
          \big[f_t(x_1, \dots, x_w + \varepsilon, \dots, x_n)\big],

with :math:`f_t` the target logit and :math:`\varepsilon` on the word's token embeddings.
:math:`d_w > 0`: removing the word's information lowers the logit, the word is evidence
*for* the class; :math:`d_w < 0`: *against*. The expectation is estimated from
:data:`SIGN_DRAWS` seeded draws, and the direction is reported only where :math:`|d_w|`
exceeds two standard errors of that mean (else 0: not told apart).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from captum_perturb.functional.moments import embedding_sigma_max
from captum_perturb.hf.models import HFModel
from captum_perturb.hf.words import Words

#: noise draws per word for the sign
SIGN_DRAWS = 16


def signed_reading(
    hf: HFModel,
    enc: dict[str, Tensor],
    words: Words,
    targets: list[int],
    sigma_max: Any,
    seed: Any,
    draws: int = SIGN_DRAWS,
) -> Tensor:
    """``(N, W)`` +1 / −1 / 0 per word of each text (0 also past a text's last word)."""
    ids = enc["input_ids"]
    smax = float(sigma_max) if sigma_max is not None else embedding_sigma_max(hf.embeddings.weight)
    gen = torch.Generator(device=ids.device).manual_seed(seed if isinstance(seed, int) else 0)
    n_words = max(len(w) for w in words.words)
    out = torch.zeros(len(ids), n_words)
    with torch.no_grad():
        embeds = hf.embeddings(ids)
        for b, spelled in enumerate(words.words):
            side = {k: v[b : b + 1] for k, v in enc.items() if k not in ("input_ids",)}
            side = {k: v for k, v in side.items() if k in ("attention_mask", "token_type_ids")}
            clean = _logit(hf, embeds[b : b + 1], side, targets[b])[0]
            for w in range(len(spelled)):
                at = (words.groups[b] == w).to(ids.device)
                copies = embeds[b : b + 1].expand(draws, -1, -1).clone()
                noise = torch.randn(copies.shape, generator=gen, device=ids.device) * smax
                copies[:, at] += noise[:, at].to(copies.dtype)
                noisy = _logit(
                    hf, copies, {k: v.expand(draws, -1) for k, v in side.items()}, targets[b]
                )
                d = clean - noisy.mean()
                se = noisy.std() / draws**0.5
                out[b, w] = float(torch.sign(d)) if bool(d.abs() > 2 * se) else 0.0
    return out


def _logit(hf: HFModel, embeds: Tensor, side: dict[str, Tensor], target: int) -> Tensor:
    logits = hf.model(inputs_embeds=embeds, **side).logits
    return logits[:, target].float()
