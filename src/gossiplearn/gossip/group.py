"""Secure group averaging as pure state machines: one ``LeaderRound`` (``gossip.group_leader``)
and one ``MemberRound`` (``gossip.group_member``) per member, h11-style (docs/protocol.md 16;
messages in ``gossip.group_messages``, the checks they apply in ``gossip.group_rules``, what
both roles share in ``gossip.group_round``). This module is their common entry.

A round averages the models of ``g ≥ 3`` members so that no one sees another's model, only the
group's sum: each member sends its fixed-point vector (``crypto.fixedpoint``) masked with one
pairwise mask per other member (``crypto.masking``); the leader adds the masked vectors, the
masks cancel, and every member (the leader included) adopts the same result: the
sample-weighted average of the tensors, so the group's weighted sum of models is conserved (as
the pairwise merge).

The leader invites, collects every member's signed ephemeral key, sends all the keys to every
member, collects the masked shares, and sends back their sum. A member checks every key: the
announcements are exactly the invited group, in order; each is signed by its owner for this
round, group, model and task; its own entry is the one it sent; every sample count is > 0.

A task with consortium statistics (tabular: each model is trained in the coordinates of its
own statistics vector) sums twice under the same keys, with seeds of another HKDF domain for
each phase: first the statistics vectors (the invite announces their length), whose plain
average ``s̄`` every member computes from the leader's ``GroupStatsSum`` (``StatsAverage``) and
checks as a set of sums; then every member rebases its snapshot to ``s̄`` (the driver:
``Learner.rebase``) and ``contribute``s it, and the models are summed. The result is the
weighted average of models in ``s̄``'s coordinates, with ``s̄``: the group's sum of statistics
is conserved too (as the pairwise exchange's plain average of two vectors).

Invariants:
- Both sides take their model snapshot (and statistics), and check that it can be encoded
  (finite, within the fixed-point bound: ``OutOfRange``), before they send anything; the
  rebased model is checked again before it is masked.
- There is no dropout recovery: a decline, an abort, a refusal or ``abandon`` (a dropout or a
  deadline, told by the driver) in any phase ends the round, and nothing is ever unmasked or
  merged. The round then holds no key or seed; every later ``receive`` raises
  ``LocalProtocolError``.
- A remote that breaks the protocol raises ``GroupRefused`` (a ``RemoteProtocolError`` with a
  stable ``reason``) and moves the round to ERROR.
- A member derives its seeds, and sends its shares, only after every signature checks out; it
  sends at most one share per phase and never answers a second ``GroupKeys``.
- Pure: no I/O, clocks or sleeps; the round id comes from the caller's ``rng``; ephemeral keys
  come from ``X25519PrivateKey.generate`` (the OS CSPRNG) unless the caller passes one.
"""

from __future__ import annotations

from gossiplearn.gossip.group_leader import LeaderRound
from gossiplearn.gossip.group_member import MemberRound
from gossiplearn.gossip.group_round import (
    ENDED,
    Completed,
    GroupResult,
    Phase,
    StatsAverage,
)

__all__ = [
    "ENDED",
    "Completed",
    "GroupResult",
    "LeaderRound",
    "MemberRound",
    "Phase",
    "StatsAverage",
]
