"""Adebayo et al.'s cascading model randomisation (:class:`ModelRandomization`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn


class ModelRandomization:
    """Adebayo et al. (2018) cascading model randomisation, in place.

    Iterating yields ``(stage_name, stage_index)`` once the modules of that stage have
    been re-initialised; earlier stages stay randomised, so at stage ``i`` the modules
    of stages ``0..i`` all hold random weights (stages are ordered from the classifier
    head down). Each module of a stage, and each of its submodules, is re-initialised
    with its own ``reset_parameters()`` (PyTorch's default initialisation, not Hugging
    Face's ``_init_weights``); a submodule without one gets ``normal(0, 0.02)`` on each
    of its direct parameters. Stage ``i`` is drawn from the global RNG seeded with
    ``seed + i`` inside ``torch.random.fork_rng``, so it is reproducible and the
    caller's RNG is untouched.

    No copy of the model is made: a copy of its ``state_dict`` is taken when iteration
    starts and loaded back when the iteration ends, raises, or is closed (the
    generator's ``finally``; a ``for`` loop left by ``break`` or an exception closes
    it). Do not nest two iterations over the same model. A parameter shared with a
    module outside the stages (tied embeddings) is randomised there too.

    Args:
        model: The model; every stage module must be one of its submodules.
        stages: ``(name, modules)`` pairs, top (classifier head) first.
        seed: Seed of the re-initialisation.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> before = model[1].weight.clone()
        >>> for name, i in ModelRandomization(model, [("head", [model[1]])], seed=0):
        ...     changed = not torch.equal(model[1].weight, before)
        >>> changed, torch.equal(model[1].weight, before)
        (True, True)
    """

    def __init__(
        self,
        model: nn.Module,
        stages: Sequence[tuple[str, Sequence[nn.Module]]],
        seed: int,
    ) -> None:
        members = {id(m) for m in model.modules()}
        for name, modules in stages:
            for module in modules:
                if id(module) not in members:
                    raise ValueError(f"stage {name!r} holds a module that is not in the model")
        self.model = model
        self.stages = [(name, list(modules)) for name, modules in stages]
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        saved = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        try:
            for index, (name, modules) in enumerate(self.stages):
                self._reinitialise(modules, self.seed + index)
                yield name, index
        finally:
            self.model.load_state_dict(saved)

    def _reinitialise(self, modules: Sequence[nn.Module], seed: int) -> None:
        cuda = sorted(
            {p.device.index or 0 for p in self.model.parameters() if p.device.type == "cuda"}
        )
        kwargs: dict[str, Any] = {"devices": cuda}
        if cuda:
            kwargs["device_type"] = "cuda"
        with torch.random.fork_rng(**kwargs), torch.no_grad():
            torch.manual_seed(seed)
            for module in modules:
                for sub in module.modules():
                    reset = getattr(sub, "reset_parameters", None)
                    if callable(reset):
                        reset()
                    else:
                        for param in sub.parameters(recurse=False):
                            param.normal_(0.0, 0.02)
