"""The trainer's state: everything its next SGD step depends on, as plain arrays and numbers.

``Trainer.state`` takes it and ``Trainer.restore`` reinstates it (``peer/learning/trainer.py``);
the checkpoint file format (``peer/home/checkpoint.py``) writes and reads it. Kept free of torch
(and of Opacus), so reading a checkpoint does not import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from gossiplearn.crypto.privacy import Spend


@dataclass(frozen=True, slots=True)
class TrainerState:
    """Everything that determines the trainer's next SGD step."""

    fingerprint: bytes  # of the model's exchanged tensors (gossip.messages.fingerprint)
    steps: int
    samples_seen: int
    tensors: Mapping[str, np.ndarray] = field(repr=False)  # floating state_dict entries
    momentum: Mapping[str, np.ndarray] = field(repr=False)  # SGD momentum buffer per parameter
    rng_state: bytes = field(repr=False)  # the batch-order generator (torch.Generator state)
    order: np.ndarray = field(repr=False)  # the current epoch's permutation (int64)
    position: int = 0  # next index into ``order``
    task: bytes = b""  # the task identity's digest (absent in checkpoints before contracts)
    stats: np.ndarray | None = field(default=None, repr=False)  # statistics the model is under
    local_stats: np.ndarray | None = field(default=None, repr=False)  # our own rows' sums then
    # the privacy ledger (crypto.privacy): DP-SGD steps as (σ, q, steps); None in checkpoints
    # from before privacy. DP-SGD's own momentum travels in ``momentum``; its generator never
    # (peer/learning/private.py)
    ledger: tuple[Spend, ...] | None = None
    plain_steps: int | None = None  # steps trained without DP; None: not known (older files)
