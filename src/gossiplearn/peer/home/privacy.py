"""Privacy in the peer's home: the ``[privacy]`` section of peer.toml, and the ledger file.

``PrivacyConfig`` declares the settings (``settings.setting``, as every section in
``config.py``); ``check_privacy`` holds the rules that tie them to ``[training]``.

``privacy.json`` holds the privacy ledger (``crypto.privacy.Ledger``: the (σ, q, steps) history
of this peer's DP-SGD) as JSON, so a person can read what was spent. It is written ahead of
training: the trainer saves a ledger that already counts a block of steps before it takes them
(``peer/learning/private.py``), so whatever the moment a peer is killed, the file counts at
least every step whose effect any model sent could carry. Checkpoints carry the exact ledger
too; a resume takes the larger of the two.

Invariants: ``load_ledger`` returns a valid ``Ledger`` or raises ``UserError`` naming the file
(never a silent reset to zero); ``save_ledger`` writes with ``files.write_atomic``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gossiplearn.crypto.privacy import ACCOUNTANTS, DEFAULT_ACCOUNTANT, Ledger
from gossiplearn.errors import CheckpointError, UserError
from gossiplearn.gossip.group_messages import MAX_GROUP
from gossiplearn.peer.home.files import write_atomic
from gossiplearn.peer.home.settings import OneOf, Range, setting

LEDGER_FILE_NAME = "privacy.json"
EPSILON = Range(0, low_open=True, finite=True)


@dataclass(frozen=True)
class PrivacyConfig:
    dp: bool = setting(
        False,
        "train with differential privacy (DP-SGD): each record's gradient is clipped and "
        "noise is added, so the models this peer sends reveal at most `target_epsilon` about "
        "any one training record; training stops when that budget is spent, gossip goes on "
        '(README, "Privacy")',
    )
    target_epsilon: float = setting(
        8.0,
        "the privacy budget ε this peer's training may spend, over all its runs in this home",
        check=EPSILON,
    )
    delta: float = setting(
        0.0,
        "the δ of (ε, δ): the probability that the ε guarantee fails outright; it must be "
        "below 1/n for n local training records",
        check=Range(0, 1, zero="1/(10·n) for n local training records"),
    )
    max_grad_norm: float = setting(
        1.0,
        "the clipping bound C: each record's gradient is scaled down to at most this L2 norm",
        check=EPSILON,
    )
    noise_multiplier: float = setting(
        0.0,
        "the noise σ added to each step's summed gradients, in units of `max_grad_norm`; "
        "more noise spends the budget more slowly, and learns more slowly",
        check=Range(
            0,
            finite=True,
            zero="the least noise that fits `training.max_steps` steps in `target_epsilon`",
        ),
    )
    accountant: str = setting(
        DEFAULT_ACCOUNTANT,
        "how ε is computed from the steps taken: `rdp` (Rényi DP, quick, a valid upper bound) "
        "or `prv` (tighter by a few percent, seconds per query on long runs)",
        check=OneOf(ACCOUNTANTS),
    )
    secure_averaging: bool = setting(
        False,
        "average models in groups of `group_size` peers under pairwise masks, so that no peer "
        "sees another's model (nor, for a tabular contract, its statistics), only the group's "
        "sum; this peer then never exchanges its model pairwise",
    )
    group_size: int = setting(
        3,
        "peers in one secure-averaging round (3 to 16), this one included (with "
        "`secure_averaging`)",
        check=Range(3, MAX_GROUP + 1),
    )


def check_privacy(privacy: PrivacyConfig, max_steps: int) -> None:
    """The rules between ``[privacy]`` and ``training.max_steps``. Raises ``UserError``."""
    if privacy.dp and privacy.noise_multiplier == 0 and max_steps == 0:
        raise UserError(
            "privacy.noise_multiplier = 0 derives the noise from privacy.target_epsilon spread "
            "over training.max_steps, but max_steps is 0 (train forever): set "
            "training.max_steps (--max-steps N) or privacy.noise_multiplier (--noise-multiplier "
            "SIGMA; training then stops when the budget is spent)"
        )


def load_ledger(path: Path) -> Ledger | None:
    """The ledger saved at ``path``, or None when there is no file. Raises ``UserError`` when
    the file cannot be read or is not a ledger: the privacy spent so far is then unknown."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise _unusable(path, str(exc)) from None
    try:
        state = json.loads(text)
        if not isinstance(state, dict):
            raise CheckpointError("not a JSON object")
        return Ledger.from_state(state)
    except (ValueError, CheckpointError) as exc:
        raise _unusable(path, str(exc)) from None


def _unusable(path: Path, why: str) -> UserError:
    return UserError(
        f"the privacy ledger {path} is unusable ({why}), so the privacy this peer has spent "
        "is unknown. Restore the file, or delete it to continue from the ledger in the newest "
        "checkpoint (steps taken after that checkpoint would then go uncounted)"
    )


def save_ledger(path: Path, ledger: Ledger) -> None:
    """Write ``ledger`` to ``path`` (JSON, atomically). Blocking; raises ``OSError``."""
    text = json.dumps(ledger.to_state(), indent=1) + "\n"
    write_atomic(path, text.encode("utf-8"))
