"""The metrics of one explanation of one example (:class:`ExampleScorer`).

The study (:mod:`comparisons.study.run`) explains; this module scores: the removal
metrics of a classifier or a hidden state for one ranking (its own, or ``|abs``), the
leave-one-out reference they are compared with, and Captum's infidelity and
sensitivity. Every ranking metric averages over the orders of tied scores
(:func:`comparisons.metrics.tie_orders`), and every ranking reports whether it abstains.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import torch
from torch import Tensor

from comparisons import metrics as mt
from comparisons.models.text_model import Example, TextModel
from comparisons.study.methods import AttributeFn, ExampleInputs, MethodContext


class ExampleScorer:
    """Scores explanations of one model's examples.

    Args:
        tm: the model.
        ctx: the methods' shared context (σ_S of the explained state).
        tie_orders: random orders of tied scores each ranking metric averages over.
        noise_scale: infidelity noise std and sensitivity radius, as a fraction of the
            std of each example's embedding output.
    """

    def __init__(
        self, tm: TextModel, ctx: MethodContext, tie_orders: int, noise_scale: float
    ) -> None:
        self.tm = tm
        self.ctx = ctx
        self.tie_orders = tie_orders
        self.noise_scale = noise_scale
        self.removers: dict[str, mt.Remover] = {}
        if tm.tokenizer.mask_token_id is not None:
            self.removers["mask"] = mt.MaskRemover(int(tm.tokenizer.mask_token_id))
        self.removers["delete"] = mt.DeleteRemover(tm.tokenizer)

    def classifier_metrics(
        self,
        ex: Example,
        scores: Tensor,
        signed: bool,
        target: int,
        loo: dict[str, Tensor],
        seed: int,
        curves_too: bool = True,
    ) -> tuple[list[tuple[str, float]], dict[str, list[float]]]:
        """The classifier metrics of one ranking, and its curves (``curves_too``)."""
        rows: list[tuple[str, float]] = []
        curves: dict[str, list[float]] = {}
        prob_fn = self.tm.probabilities
        n_orders = self.tie_orders
        for rname, remover in self.removers.items():
            for bins in ("eraser", "ferret"):
                res = mt.aopc(
                    prob_fn, ex.input_ids, ex.special, scores, remover,
                    target=target, bins=bins, signed=signed, n_orders=n_orders, seed=seed,
                )  # fmt: skip
                rows.append((f"aopc_comprehensiveness/{bins}/{rname}", res.comprehensiveness))
                rows.append((f"aopc_sufficiency/{bins}/{rname}", res.sufficiency))
            ranked = scores if signed else scores.abs()
            rows.append((f"tau_loo/{rname}", mt.kendall_tau_b(ranked, loo[rname])))
        if "mask" in self.removers and curves_too:
            orders = mt.tie_orders(scores, ex.special, signed, n_orders, seed)
            r = self.removers["mask"]
            for kind, fn in (("deletion", mt.deletion_curve), ("insertion", mt.insertion_curve)):
                # the expected curve over the orders of the ties
                runs = [fn(prob_fn, ex.input_ids, ex.special, o, r, target=target) for o in orders]
                curve = torch.stack(runs).mean(0)
                curves[f"{kind}/mask"] = curve.tolist()
                rows.append((f"{kind}_area/mask", mt.curve_area(curve)))
        rows.append(("abstained", float(mt.abstains(scores, ex.special, signed))))
        return rows, curves

    def state_metrics(
        self, ex: Example, scores: Tensor, signed: bool, loo: dict[str, Tensor], seed: int
    ) -> list[tuple[str, float]]:
        """The hidden-state metrics of one ranking."""
        rows: list[tuple[str, float]] = []
        pooled = self.tm.state == "pooled"
        std = self.ctx.state_std("state", self.tm.forward_embeds)
        reference = self.tm.states([ex.input_ids])[0]
        orders = mt.tie_orders(scores, ex.special, signed, self.tie_orders, seed)
        n = len(orders[0])
        fractions = (0.1, 0.2, 0.5)
        ks = [max(1, math.ceil(f * n)) for f in fractions]
        for rname, remover in self.removers.items():
            if rname == "delete" and not pooled:
                continue
            per_order = [
                mt.state_shift(
                    self.tm.states,
                    ex.input_ids,
                    ex.special,
                    order,
                    remover,
                    ks=ks,
                    reference=reference,
                    std=std,
                    pooled=pooled,
                )
                for order in orders
            ]
            shifts = [sum(s) / len(s) for s in zip(*per_order, strict=True)]  # over the orders
            for f, d in zip(fractions, shifts, strict=True):
                rows.append((f"state_shift/{rname}@{int(100 * f)}%", d))
            rows.append((f"state_shift/{rname}", sum(shifts) / len(shifts)))
            ranked = scores if signed else scores.abs()
            rows.append((f"tau_loo/{rname}", mt.kendall_tau_b(ranked, loo[rname])))
        rows.append(("abstained", float(mt.abstains(scores, ex.special, signed))))
        return rows

    def loo(self, ex: Example, target: int) -> dict[str, Tensor]:
        """Leave-one-out reference per remover (the drop of p_ŷ, or the state shift)."""
        out: dict[str, Tensor] = {}
        for rname, remover in self.removers.items():
            if self.tm.is_classifier:
                out[rname] = mt.leave_one_out(
                    self.tm.probabilities, ex.input_ids, ex.special, remover, target=target
                )
            else:
                pooled = self.tm.state == "pooled"
                if rname == "delete" and not pooled:
                    continue
                std = self.ctx.state_std("state", self.tm.forward_embeds)
                reference = self.tm.states([ex.input_ids])[0]
                drops = torch.full((len(ex.input_ids),), float("nan"))
                for i in torch.nonzero(~ex.special).flatten().tolist():
                    drops[i] = mt.state_shift(
                        self.tm.states, ex.input_ids, ex.special, torch.tensor([i]), remover,
                        ks=[1], reference=reference, std=std, pooled=pooled,
                    )[0]  # fmt: skip
                out[rname] = drops
        return out

    def captum_metrics(self, fn: AttributeFn, x: ExampleInputs) -> list[tuple[str, float]]:
        """Captum's infidelity and sensitivity_max of ``fn``'s explanation of ``x``."""
        scale = self.noise_scale * float(x.embeds.std())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attributions = fn(x).detach()
            infd = mt.infidelity_score(
                x.forward, x.embeds, (x.mask,), attributions, target=x.target,
                noise_std=scale, special=x.example.special, seed=x.seed,
            )  # fmt: skip

            def explain_embeds(
                e: Tensor, additional_forward_args: Any = None, target: Any = None
            ) -> Tensor:
                # Captum stacks the perturbed copies: explain them one at a time
                rows = [fn(dataclasses.replace(x, embeds=e[i : i + 1])) for i in range(len(e))]
                return torch.cat(rows).detach()

            sens = mt.sensitivity_score(
                explain_embeds, x.embeds, (x.mask,), target=x.target,
                perturb_radius=scale, seed=x.seed,
            )  # fmt: skip
        return [("infidelity", infd), ("sensitivity_max", sens)]
