r"""Exact weighted least-squares surrogates for Captum's ``Lime`` and ``KernelShap``.

Captum's defaults fit the surrogate with scikit-learn (``SkLearnLasso`` for Lime,
``SkLearnLinearRegression`` for KernelShap), which is not a dependency here, and its
SGD alternatives only approximate the fit. With a few dozen tokens the weighted
(ridge) least-squares problem is solved exactly in closed form:

.. math::
    \hat w = \arg\min_w \sum_s \pi_s (y_s - b - w^\top z_s)^2 + \alpha \lVert w \rVert^2 .
"""

from __future__ import annotations

from typing import Any

import torch
from captum._utils.models.linear_model import LinearModel
from torch.utils.data import DataLoader


def _fit(
    model: LinearModel, dataloader: DataLoader, construct_kwargs: dict[str, Any], **_: Any
) -> dict[str, float]:
    xs, ys, ws = [], [], []
    for batch in dataloader:
        x, y = batch[0], batch[1]
        w = batch[2] if len(batch) > 2 and batch[2] is not None else torch.ones(len(x))
        xs.append(x.double().reshape(len(x), -1))
        ys.append(y.double().reshape(len(x), -1))
        ws.append(w.double().reshape(-1))
    x, y, w = torch.cat(xs), torch.cat(ys), torch.cat(ws)
    alpha = float(construct_kwargs.get("alpha", 0.0))
    design = torch.cat([torch.ones(len(x), 1, dtype=x.dtype), x], dim=1)
    sw = w.clamp_min(0).sqrt().unsqueeze(1)
    gram = (design * sw).T @ (design * sw)
    ridge = torch.full((design.shape[1],), alpha + 1e-9, dtype=x.dtype)
    ridge[0] = 1e-9  # the intercept is not penalised
    rhs = (design * sw).T @ (y * sw)
    coef = torch.linalg.solve(gram + torch.diag(ridge), rhs)  # (1 + F, outputs)
    model._construct_model_params(
        weight_values=coef[1:].T.float().squeeze(0), bias_value=coef[0].float().squeeze(0)
    )
    return {"train_time": 0.0}


class WeightedLeastSquares(LinearModel):
    """Captum interpretable model fitted exactly (``alpha``: ridge penalty, 0 = OLS)."""

    def __init__(self, alpha: float = 0.0) -> None:
        super().__init__(train_fn=_fit, alpha=alpha)
