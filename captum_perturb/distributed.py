"""Helpers for a script run by ``torchrun``: the process group, who does what, waiting.

What :func:`~captum_perturb.explain_corpus` and :func:`~captum_perturb.layer_state_std`
use to share out a corpus, for scripts of your own around them (the comparison harness's
``torchrun`` commands are such scripts). Every helper is a no-op in a single process, so
a script runs the same with and without ``torchrun``. Sharding follows
:class:`torch.utils.data.DistributedSampler` without shuffling or padding: process ``r``
of ``N`` takes items ``r, r + N, r + 2N, …``.
"""

from captum_perturb._utils.distributed import (
    all_succeeded,
    is_shard,
    on_first,
    process_0_first,
    process_group_from_env,
    rank_and_world,
)

__all__ = [
    "all_succeeded",
    "is_shard",
    "on_first",
    "process_0_first",
    "process_group_from_env",
    "rank_and_world",
]
