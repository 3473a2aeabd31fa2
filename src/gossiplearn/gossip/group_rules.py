"""What a secure group-averaging round accepts, and the arithmetic of a share
(docs/protocol.md 16.5; the state machines that apply these rules are in ``gossip.group``).

Each check raises ``GroupRefused``, a ``RemoteProtocolError`` whose ``reason`` is one of
``REFUSAL_REASONS``: a short stable key the node counts and charges as an offence (unless
``offence`` is False: a fault no single peer can be blamed for). Pure: no I/O, no clocks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import (
    STATS_FORMAT,
    Contribution,
    OutOfRange,
    VectorLayout,
    decode_sum,
)
from gossiplearn.crypto.identity import is_peer_id
from gossiplearn.crypto.masking import KeyAnnouncement, RoundContext
from gossiplearn.errors import RemoteProtocolError
from gossiplearn.gossip.aggregate import BadStatistics, SumsLayout, check_sum
from gossiplearn.gossip.exchange import LocalModel
from gossiplearn.gossip.group_messages import MAX_GROUP, MIN_GROUP, WordsMessage

REFUSAL_REASONS = frozenset(
    {
        "unexpected",  # a message of the wrong kind for the phase, or a second one
        "wrong-round",  # another round's id
        "bad-group",  # an invite's group: too small or large, duplicates, not us, not its sender
        "wrong-group",  # GroupKeys for other members than those invited, or in another order
        "bad-signature",  # a key not signed by its owner for this round, group, model and task
        "bad-key",  # our own entry changed, a key repeated, or a key with no shared secret
        "bad-samples",  # a sample count of 0, or the leader's differs from its invite
        "bad-share",  # a share of the wrong length
        "bad-sum",  # a sum of the wrong length, or beyond what honest members can add up to
        "bad-stats",  # a statistics sum that is no valid set of sums (docs/security.md 3.7)
    }
)


class GroupRefused(RemoteProtocolError):
    """A member or leader broke the group protocol; ``reason`` is in ``REFUSAL_REASONS``.
    ``offence``: False when no single peer can be blamed (a bad sum seen by the leader)."""

    def __init__(self, reason: str, detail: str, *, offence: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.offence = offence


def layout_of(local: LocalModel) -> VectorLayout:
    """The fixed-point layout of our model's tensors (the statistics are summed apart)."""
    specs = ((s.name, s.dtype, s.shape) for s in local.specs.values())
    return VectorLayout.of(specs, None)


def stats_layout_of(local: LocalModel) -> VectorLayout | None:
    """The layout of our statistics alone, summed in a phase of their own before the model;
    None for a task without statistics (a round of one phase)."""
    return None if local.stats is None else VectorLayout((), local.stats.size)


def group_problem(group: Sequence[str], *, max_group: int = MAX_GROUP) -> str | None:
    """What is wrong with an ordered group of peer IDs, or None."""
    if not MIN_GROUP <= len(group) <= max_group:
        return f"a group has {MIN_GROUP} to {max_group} members, not {len(group)}"
    if len(set(group)) != len(group):
        return "a member appears twice in the group"
    if not all(is_peer_id(p) for p in group):
        return "a member is not an Ed25519 peer ID"
    return None


def check_invite_group(group: Sequence[str], *, sender: str, me: str, max_group: int) -> None:
    """A member's check of an invite's group: valid, led by ``sender``, and ours to join."""
    problem = group_problem(group, max_group=max_group)
    if problem is None and group[0] != sender:
        problem = "the invite does not come from the group's leader"
    if problem is None and me not in group[1:]:
        problem = "we are not a member of the group"
    if problem is not None:
        raise GroupRefused("bad-group", problem)


def check_join(ann: KeyAnnouncement, ctx: RoundContext, seen: Collection[bytes]) -> None:
    """The leader's check of a member's announcement (``seen``: the keys announced so far)."""
    if ann.samples <= 0:
        raise GroupRefused("bad-samples", f"{ann.peer_id} joined with {ann.samples} samples")
    if not masking.verify(ann, ctx):
        raise GroupRefused("bad-signature", f"{ann.peer_id}'s key is not signed for this round")
    if ann.public_key in seen:
        raise GroupRefused("bad-key", f"{ann.peer_id} announced a key already in this round")


def check_keys(
    keys: Sequence[KeyAnnouncement], ctx: RoundContext, me: KeyAnnouncement, leader_samples: int
) -> None:
    """A member's check of GroupKeys: exactly the invited group in order, each key signed by
    its owner for this round, our own entry unchanged, the leader's count as invited, every
    count > 0, no key twice."""
    if tuple(k.peer_id for k in keys) != ctx.group:
        raise GroupRefused("wrong-group", "the keys are not those of the invited group")
    for ann in keys:
        if ann.samples <= 0:
            raise GroupRefused("bad-samples", f"{ann.peer_id} has {ann.samples} samples")
        if not masking.verify(ann, ctx):
            raise GroupRefused("bad-signature", f"{ann.peer_id}'s key is not signed for us")
    if keys[ctx.group.index(me.peer_id)] != me:
        raise GroupRefused("bad-key", "our own key entry was changed")
    if keys[0].samples != leader_samples:
        raise GroupRefused("bad-samples", "the leader's count differs from its invite")
    if len({k.public_key for k in keys}) != len(keys):
        raise GroupRefused("bad-key", "a key appears twice")


def seed_with(
    key: X25519PrivateKey,
    ctx: RoundContext,
    me: str,
    theirs: KeyAnnouncement,
    *,
    domain: bytes = masking.SEED_DOMAIN,
) -> bytes:
    """Our pair seed with ``theirs`` for the phase ``domain`` (``crypto.masking.pair_seed``);
    a key that gives no shared secret is refused ``bad-key``."""
    try:
        return masking.pair_seed(key, ctx, me, theirs.peer_id, theirs.public_key, domain=domain)
    except masking.BadKey as exc:
        raise GroupRefused("bad-key", str(exc)) from None


def statistics_problem(announced: int | None, ours: SumsLayout | None) -> str | None:
    """Why an invite's statistics phase (``stats``: the length it announces, None for none)
    does not fit our task, or None."""
    if announced is None and ours is not None:
        return "the round has no statistics phase; our task has statistics"
    if announced is not None and ours is None:
        return "the round has a statistics phase; our task has no statistics"
    if announced is not None and ours is not None and announced != ours.size:
        return f"the round's statistics have {announced} values, ours {ours.size}"
    return None


def average_statistics(
    layout: VectorLayout, sums: SumsLayout, words: np.ndarray, size: int, *, offence: bool
) -> np.ndarray:
    """The group's average statistics from the summed words of ``size`` members, checked as a
    set of sums (``gossip.aggregate.check_sum``). Refuses ``bad-sum`` (beyond the bound) or
    ``bad-stats`` (no valid set of sums), an offence as ``offence`` says."""
    try:
        _, stats = decode_sum(layout, words)
    except OutOfRange as exc:
        raise GroupRefused("bad-sum", exc.detail, offence=offence) from None
    assert stats is not None
    try:
        return check_sum(stats, sums, error=size * STATS_FORMAT.resolution)
    except BadStatistics as exc:
        raise GroupRefused("bad-stats", str(exc), offence=offence) from None


def average_model(
    layout: VectorLayout, words: np.ndarray, *, offence: bool
) -> dict[str, np.ndarray]:
    """The group's average tensors from the summed words; refuses ``bad-sum`` (beyond the
    bound), an offence as ``offence`` says."""
    try:
        tensors, _ = decode_sum(layout, words)
    except OutOfRange as exc:
        raise GroupRefused("bad-sum", exc.detail, offence=offence) from None
    return tensors


def check_length(msg: WordsMessage, layout: VectorLayout, reason: str) -> None:
    """A vector of any other length than the layout's is refused with ``reason``."""
    if msg.words.shape != (layout.length,):
        raise GroupRefused(reason, f"{msg.words.size} words, the layout has {layout.length}")


def masked_share(
    own: Contribution, keys: Sequence[KeyAnnouncement], me: str, seeds: Mapping[str, bytes]
) -> np.ndarray:
    """Our contribution weighted (samples / total for tensors, 1 / g for statistics), encoded
    and masked with one pair mask per other member."""
    total = sum(k.samples for k in keys)
    ours = next(k.samples for k in keys if k.peer_id == me)
    words = own.encode(weight=ours / total, stats_weight=1.0 / len(keys))
    return masking.apply_masks(words, me, seeds)
