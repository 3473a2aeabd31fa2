"""The group-round state machines: complete rounds, what a curious leader sees, dropouts at
every step, and every refusal. Every message crosses the codec on its way."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import Contribution, OutOfRange
from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.masking import KeyAnnouncement
from gossiplearn.errors import LocalProtocolError
from gossiplearn.gossip.aggregate import SumsLayout
from gossiplearn.gossip.exchange import LocalModel
from gossiplearn.gossip.group import Completed, GroupResult, LeaderRound, MemberRound, Phase
from gossiplearn.gossip.group_messages import (
    GroupAbort,
    GroupDecline,
    GroupInvite,
    GroupJoin,
    GroupKeys,
    GroupLimits,
    GroupMessage,
    GroupShare,
    GroupSum,
    decode,
    encode,
    words_limits,
)
from gossiplearn.gossip.group_rules import REFUSAL_REASONS, GroupRefused, layout_of
from gossiplearn.gossip.messages import TensorSpec

IDS = [Identity(bytes([i + 1]) * 32) for i in range(9)]
PEERS = [i.peer_id for i in IDS]
TASK = b"t" * 32
B = np.arange(1.0, 5.0)
SPECS = [TensorSpec("w", "float32", (2, 3)), TensorSpec("b", "float64", (4,))]


def local(samples: int = 10, *, stats: bool = False, task: bytes = TASK) -> LocalModel:
    return LocalModel.of(SPECS, samples, 10_000, task, SumsLayout(3) if stats else None)


def snapshot(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), value, np.float32), "b": B * value}


def wire(msg: GroupMessage, length: int = 10) -> GroupMessage:
    """``msg`` as the other side decodes it (a vector of ``length`` words)."""
    limits = words_limits(length) if isinstance(msg, GroupShare | GroupSum) else GroupLimits()
    return decode(encode(msg), limits=limits)


class Group:
    """One round in memory: a leader (IDS[0]) and ``n - 1`` members, driven step by step."""

    def __init__(
        self, n: int = 3, samples: Sequence[int] | None = None, values: Sequence[float] = ()
    ) -> None:
        self.samples = list(samples or [10 * (i + 1) for i in range(n)])
        self.values = list(values or [float(i) for i in range(n)])
        self.stats: list[np.ndarray | None] = [None] * n  # a task without statistics
        self.leader = LeaderRound(
            local(self.samples[0]),
            IDS[0],
            PEERS[1:n],
            rng=random.Random(),
            tensors=snapshot(self.values[0]),
            stats=self.stats[0],
        )
        self.members = [MemberRound(local(self.samples[i]), IDS[i]) for i in range(1, n)]
        self.invite = wire(self.leader.invite())

    def join(self, i: int) -> GroupJoin | GroupDecline:
        """Member ``i`` (1-based, as in IDS) answers the invite."""
        return self.members[i - 1].receive_invite(  # type: ignore[return-value]
            self.invite, sender=PEERS[0], tensors=snapshot(self.values[i]), stats=self.stats[i]
        )

    def join_all(self) -> GroupKeys:
        out = None
        for i in range(1, len(self.samples)):
            out = self.leader.receive(PEERS[i], wire(self.join(i)))
        assert isinstance(out, GroupKeys)
        return out

    def shares(self, keys: GroupMessage) -> list[GroupShare]:
        out = [m.receive(wire(keys)) for m in self.members]
        assert all(isinstance(s, GroupShare) for s in out)
        return out  # type: ignore[return-value]

    def complete(self) -> tuple[GroupResult, list[GroupResult]]:
        done = None
        for i, share in enumerate(self.shares(self.join_all()), start=1):
            done = self.leader.receive(PEERS[i], wire(share))
        assert isinstance(done, Completed)
        results = [m.receive(wire(done.sum)) for m in self.members]
        assert all(isinstance(r, GroupResult) for r in results)
        return done.result, results  # type: ignore[return-value]


def assert_over(*rounds: LeaderRound | MemberRound, phase: Phase) -> None:
    """Each round ended in ``phase`` and refuses anything more."""
    for r in rounds:
        assert r.phase is phase
        with pytest.raises(LocalProtocolError):
            if isinstance(r, LeaderRound):
                r.receive(PEERS[1], GroupAbort(bytes(16), "x"))
            else:
                r.receive(GroupAbort(bytes(16), "x"))


# ---------------------------------------------------------------------------- complete rounds


def test_every_member_adopts_the_weighted_average() -> None:
    g = Group(4, samples=[10, 20, 30, 40])
    assert isinstance(g.invite, GroupInvite) and g.invite.stats is None  # one phase
    ours, theirs = g.complete()
    for r in (ours, *theirs):
        assert (r.samples, r.size) == (100, 4)
        assert r.tensors["w"].dtype == np.float32
        assert np.array_equal(r.tensors["w"], np.full((2, 3), 2.0, np.float32))  # 200 / 100
        assert np.allclose(r.tensors["b"], B * 2.0, atol=1e-9)
        assert r.stats is None
    assert_over(g.leader, *g.members, phase=Phase.DONE)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(3, 8),
    data=st.data(),
)
def test_a_round_yields_the_weighted_average_to_fixed_point_precision(
    n: int, data: st.DataObject
) -> None:
    samples = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n))
    values = data.draw(st.lists(st.floats(-1e4, 1e4, width=32), min_size=n, max_size=n))
    ours, theirs = Group(n, samples, values).complete()
    expected = sum(w * v for w, v in zip(samples, values, strict=True)) / sum(samples)
    for r in (ours, *theirs):
        assert np.allclose(r.tensors["b"], B * expected, rtol=0, atol=1e-6)
        assert np.array_equal(r.tensors["b"], ours.tensors["b"])


# ---------------------------------------------------------------------------- privacy


P_FLOOR = 1e-6  # a uniform source fails a check once in a million runs


def looks_uniform(data: bytes) -> bool:
    """Whether ``data`` passes two uniformity checks at ``P_FLOOR``: chi-square over its byte
    values (the tail by Wilson–Hilferty's approximation, within a few % at 255 degrees of
    freedom) and a two-sided z-test of each of the 64 bit positions of its words (Bonferroni)."""
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    expected = len(data) / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    k = 255
    z = ((chi2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    p_bytes = 0.5 * math.erfc(z / math.sqrt(2))
    words = np.frombuffer(data, np.uint64)
    ones = np.array([int(((words >> np.uint64(b)) & np.uint64(1)).sum()) for b in range(64)])
    zs = np.abs(ones - words.size / 2) / math.sqrt(words.size / 4)
    p_bits = 64 * min(math.erfc(float(z) / math.sqrt(2)) for z in zs)
    return min(p_bytes, p_bits) >= P_FLOOR


def test_a_curious_leader_sees_a_uniformly_random_share_but_would_see_the_encoding() -> None:
    """200 fresh rounds of one member's fixed model in a group of 3: what the leader holds of
    the member's vector — its share with the leader's own pair mask taken off — passes a
    uniformity test (``looks_uniform``); its unmasked encodings fail it."""
    specs = [TensorSpec("w", "float64", (512,))]
    model = {"w": np.random.default_rng(7).normal(size=512)}
    zero = {"w": np.zeros(512)}
    masked, plain = [], []
    for _ in range(200):
        curious = X25519PrivateKey.generate()
        leader = LeaderRound(
            LocalModel.of(specs, 5, 0, TASK),
            IDS[0],
            PEERS[1:3],
            rng=random.Random(),
            tensors=zero,
            key=curious,
        )
        members = [MemberRound(LocalModel.of(specs, 5, 0, TASK), IDS[i]) for i in (1, 2)]
        keys = None
        for i, m in enumerate(members, start=1):
            join = m.receive_invite(leader.invite(), sender=PEERS[0], tensors=model)
            keys = leader.receive(PEERS[i], join)
        assert isinstance(keys, GroupKeys)
        share = members[0].receive(keys)
        assert isinstance(share, GroupShare)
        assert leader.ctx is not None
        seed = masking.pair_seed(curious, leader.ctx, PEERS[0], PEERS[1], keys.keys[1].public_key)
        known = masking.apply_masks(np.zeros(512, np.uint64), PEERS[1], {PEERS[0]: seed})
        seen = share.words - known  # uint64: modulo 2^64
        assert not np.array_equal(seen, share.words)
        masked.append(seen.tobytes())
        own = Contribution.of(layout_of(LocalModel.of(specs, 5, 0, TASK)), model, None)
        plain.append(own.encode(weight=1 / 3, stats_weight=1 / 3).tobytes())
    assert looks_uniform(b"".join(masked))
    assert not looks_uniform(b"".join(plain))
    # and fresh models, not just one: the high bytes of small values give them away
    fresh = [np.random.default_rng(i).normal(size=512) for i in range(200)]
    words = [
        Contribution.of(own.layout, {"w": f}, None).encode(weight=1 / 3, stats_weight=0)
        for f in fresh
    ]
    assert not looks_uniform(b"".join(w.tobytes() for w in words))


# ---------------------------------------------------------------------------- dropouts


@pytest.mark.parametrize("step", ["before-join", "after-join", "after-keys", "after-shares"])
def test_a_dropout_at_any_step_abandons_the_round_for_everyone(step: str) -> None:
    g = Group(4)
    if step == "before-join":  # member 1 joined; members 2 and 3 never answer
        g.leader.receive(PEERS[1], wire(g.join(1)))
        waiting = g.members[:1]
    elif step == "after-join":  # all joined; the leader vanishes before the keys arrive
        g.join_all()
        for m in g.members:
            assert m.abandon("timeout") == GroupAbort(g.leader.round_id, "timeout")
        assert_over(*g.members, phase=Phase.ABANDONED)
        return
    else:  # the keys are out; member 1 (and 2) shared; member 3 never does
        keys = g.join_all()
        waiting = g.members[: 1 if step == "after-keys" else 2]
        for i, m in enumerate(waiting, start=1):
            share = m.receive(wire(keys))
            assert isinstance(share, GroupShare)
            assert g.leader.receive(PEERS[i], wire(share)) is None
    abort = g.leader.abandon("dropout")
    assert abort == GroupAbort(g.leader.round_id, "dropout")
    for m in waiting:
        assert m.receive(wire(abort)) is None
    assert_over(g.leader, *waiting, phase=Phase.ABANDONED)
    assert g.leader.abandon("again") == abort  # idempotent: the first reason stands


def test_the_sum_is_the_point_of_no_return() -> None:
    """Once the leader has every share it has the result; a member that misses the sum
    abandons alone (as one side of a failed pairwise exchange, docs/protocol.md 8.2)."""
    g = Group(3)
    done = None
    for i, share in enumerate(g.shares(g.join_all()), start=1):
        done = g.leader.receive(PEERS[i], wire(share))
    assert isinstance(done, Completed) and g.leader.phase is Phase.DONE
    assert isinstance(g.members[0].receive(wire(done.sum)), GroupResult)
    g.members[1].abandon("timeout")
    assert g.members[1].phase is Phase.ABANDONED


def test_a_member_that_gives_up_ends_the_round_and_the_leader_tells_the_others() -> None:
    g = Group(3)
    keys = g.join_all()
    share = g.members[0].receive(wire(keys))
    assert isinstance(share, GroupShare)
    g.leader.receive(PEERS[1], wire(share))
    abort = g.members[1].abandon("timeout")  # waited too long for... its own training, say
    to_others = g.leader.receive(PEERS[2], wire(abort))
    assert isinstance(to_others, GroupAbort) and to_others.reason == "aborted"
    assert g.members[0].receive(wire(to_others)) is None
    assert_over(g.leader, *g.members, phase=Phase.ABANDONED)


def test_a_decline_abandons_the_round() -> None:
    g = Group(3)
    g.leader.receive(PEERS[1], wire(g.join(1)))
    decline = g.members[1].receive_invite(
        g.invite, sender=PEERS[0], tensors=snapshot(0), stats=g.stats[0], busy=True
    )
    assert decline == GroupDecline(g.leader.round_id, "busy")
    to_others = g.leader.receive(PEERS[2], wire(decline))
    assert to_others == GroupAbort(g.leader.round_id, "declined")
    assert g.leader.decline == (PEERS[2], decline)
    g.members[0].receive(wire(to_others))
    assert_over(g.members[0], g.leader, phase=Phase.ABANDONED)
    assert g.members[1].phase is Phase.DECLINED
    with pytest.raises(LocalProtocolError):
        g.members[1].abandon("x")


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        ({"task": b"u" * 32}, "task contract differs"),
        ({"fingerprint": b"f" * 32}, "model fingerprint differs"),
    ],
)
def test_a_member_declines_an_invite_for_another_task_or_model(
    change: dict[str, bytes], detail: str
) -> None:
    g = Group(3)
    assert isinstance(g.invite, GroupInvite)
    invite = GroupInvite(
        g.invite.round_id,
        g.invite.group,
        change.get("fingerprint", g.invite.fingerprint),
        change.get("task", g.invite.task),
        g.invite.samples,
    )
    answer = g.members[0].receive_invite(invite, sender=PEERS[0], tensors=snapshot(1))
    assert answer == GroupDecline(invite.round_id, "incompatible", detail)


# ---------------------------------------------------------------------------- out of range


@pytest.mark.parametrize("value", [2.0**31, -np.inf, np.nan])
def test_a_member_whose_model_cannot_be_encoded_abandons_before_sending(value: float) -> None:
    g = Group(3)
    g.values[1] = value
    with pytest.raises(OutOfRange):
        g.join(1)
    assert g.members[0].phase is Phase.ABANDONED
    abort = g.members[0].abandon("ignored")
    assert abort.reason in ("out-of-range", "non-finite")
    assert isinstance(g.leader.receive(PEERS[1], wire(abort)), GroupAbort)


def test_a_leader_whose_model_cannot_be_encoded_invites_nobody() -> None:
    with pytest.raises(OutOfRange):
        LeaderRound(
            local(stats=False), IDS[0], PEERS[1:3], rng=random.Random(), tensors=snapshot(1e12)
        )
    with pytest.raises(OutOfRange):
        LeaderRound(
            local(stats=True),
            IDS[0],
            PEERS[1:3],
            rng=random.Random(),
            tensors=snapshot(1),
            stats=np.array([np.nan, 0, 0]),
        )


# ---------------------------------------------------------------------------- refusals


def refused(reason: str, call: object, *args: object, **kwargs: object) -> GroupRefused:
    assert callable(call)
    with pytest.raises(GroupRefused) as info:
        call(*args, **kwargs)
    assert info.value.reason == reason, info.value
    assert reason in REFUSAL_REASONS
    return info.value


def with_entry(keys: GroupKeys, i: int, entry: KeyAnnouncement) -> GroupKeys:
    return GroupKeys(keys.round_id, (*keys.keys[:i], entry, *keys.keys[i + 1 :]))


def test_a_key_swapped_by_the_leader_is_refused() -> None:
    g = Group(3)
    keys = g.join_all()
    real = keys.keys[2]
    mine = masking.public_bytes(X25519PrivateKey.generate())  # the leader would know its secret
    swapped = with_entry(keys, 2, KeyAnnouncement(real.peer_id, mine, real.samples, real.signature))
    refused("bad-signature", g.members[0].receive, wire(swapped))
    assert_over(g.members[0], phase=Phase.ERROR)


def test_a_key_replayed_from_another_round_is_refused_by_members_and_leader() -> None:
    old, new = Group(3), Group(3)
    old_keys, new_keys = old.join_all(), new.join_all()
    replay = with_entry(new_keys, 2, old_keys.keys[2])
    refused("bad-signature", new.members[0].receive, wire(replay))
    # a join replayed into a new round: under its own round id, or relabelled
    fresh = Group(3)
    join = GroupJoin(old_keys.round_id, old_keys.keys[1].public_key, 20, old_keys.keys[1].signature)
    refused("wrong-round", fresh.leader.receive, PEERS[1], wire(join))
    fresh = Group(3)
    relabelled = GroupJoin(fresh.leader.round_id, join.public_key, 20, join.signature)
    refused("bad-signature", fresh.leader.receive, PEERS[1], wire(relabelled))
    assert_over(fresh.leader, phase=Phase.ERROR)


@pytest.mark.parametrize("variant", ["missing", "reordered", "impostor"])
def test_keys_for_another_group_are_refused(variant: str) -> None:
    g = Group(4)
    keys = g.join_all()
    k = keys.keys
    ctx = g.members[0].ctx
    assert ctx is not None
    if variant == "missing":
        bad = GroupKeys(keys.round_id, k[:3])
    elif variant == "reordered":
        bad = GroupKeys(keys.round_id, (k[0], k[2], k[1], k[3]))
    else:  # signed by its owner for this round, but its owner was not invited
        bad = with_entry(keys, 3, masking.announce(IDS[5], ctx, X25519PrivateKey.generate(), 9))
    refused("wrong-group", g.members[0].receive, wire(bad))


def test_a_second_answer_to_the_same_invite_cannot_be_used_against_a_member() -> None:
    """A leader that invites a member twice and hands one answer's round the other's key
    (signed by the member for this very round) is caught: the member's own entry changed."""
    g = Group(3)
    twin = MemberRound(local(20), IDS[1])
    twin_join = twin.receive_invite(
        g.invite, sender=PEERS[0], tensors=snapshot(1), stats=g.stats[1]
    )
    keys = g.join_all()
    assert isinstance(twin_join, GroupJoin)
    own = keys.keys[1]
    other = KeyAnnouncement(own.peer_id, twin_join.public_key, own.samples, twin_join.signature)
    refused("bad-key", g.members[0].receive, wire(with_entry(keys, 1, other)))


def test_a_key_announced_twice_is_refused() -> None:
    shared = X25519PrivateKey.generate()
    g = Group(3)
    g.members = [MemberRound(local(10 * (i + 1)), IDS[i], key=shared) for i in (1, 2)]
    g.leader.receive(PEERS[1], wire(g.join(1)))
    refused("bad-key", g.leader.receive, PEERS[2], wire(g.join(2)))


def test_bad_sample_counts_are_refused() -> None:
    g = Group(3)
    g.join(1)
    ctx = g.members[0].ctx
    assert ctx is not None
    ann = masking.announce(IDS[1], ctx, X25519PrivateKey.generate(), 0)
    join = GroupJoin(ctx.round_id, ann.public_key, 0, ann.signature)
    refused("bad-samples", g.leader.receive, PEERS[1], wire(join))
    # in GroupKeys: a colluding member's zero, or a leader whose count differs from its invite
    for i, owner, samples in ((2, IDS[2], 0), (0, IDS[0], 999)):
        g = Group(3)
        keys = g.join_all()
        ctx = g.members[0].ctx
        assert ctx is not None
        entry = masking.announce(owner, ctx, X25519PrivateKey.generate(), samples)
        refused("bad-samples", g.members[0].receive, wire(with_entry(keys, i, entry)))
    g = Group(3)
    assert isinstance(g.invite, GroupInvite)
    zero = GroupInvite(g.invite.round_id, g.invite.group, g.invite.fingerprint, TASK, 0)
    refused("bad-samples", g.members[0].receive_invite, zero, sender=PEERS[0], tensors=snapshot(1))


@pytest.mark.parametrize(
    ("group", "sender"),
    [
        ((PEERS[0], PEERS[1]), PEERS[0]),  # g < 3
        ((PEERS[0], PEERS[1], PEERS[1]), PEERS[0]),  # a duplicate
        (tuple(PEERS[:1] + PEERS[1:]) + tuple(f"x{i}" for i in range(8)), PEERS[0]),  # > 16
        ((PEERS[0], PEERS[1], "not-a-peer-id"), PEERS[0]),
        ((PEERS[0], PEERS[2], PEERS[3]), PEERS[0]),  # we are not in it
        ((PEERS[0], PEERS[1], PEERS[2]), PEERS[2]),  # not sent by its leader
        ((PEERS[1], PEERS[0], PEERS[2]), PEERS[1]),  # we would lead it
    ],
)
def test_an_invite_for_a_bad_group_is_refused(group: tuple[str, ...], sender: str) -> None:
    invite = GroupInvite(bytes(16), group, local().fingerprint, TASK, 10)
    member = MemberRound(local(), IDS[1])
    refused("bad-group", member.receive_invite, invite, sender=sender, tensors=snapshot(1))
    assert_over(member, phase=Phase.ERROR)


@pytest.mark.parametrize(
    "members", [[PEERS[1]], [PEERS[1], PEERS[1]], [PEERS[1], PEERS[0]], PEERS[1:9] * 3]
)
def test_a_leader_refuses_to_lead_a_bad_group(members: list[str]) -> None:
    with pytest.raises(LocalProtocolError):
        LeaderRound(local(), IDS[0], members, rng=random.Random(), tensors=snapshot(1))


def test_shares_of_the_wrong_length_round_or_number_are_refused() -> None:
    def sharing() -> tuple[Group, list[GroupShare]]:
        g = Group(3)
        return g, g.shares(g.join_all())

    g, shares = sharing()
    short = GroupShare(shares[0].round_id, shares[0].words[:-1])
    refused("bad-share", g.leader.receive, PEERS[1], wire(short))
    g, shares = sharing()
    refused("wrong-round", g.leader.receive, PEERS[1], GroupShare(bytes(16), shares[0].words))
    g, shares = sharing()
    g.leader.receive(PEERS[1], wire(shares[0]))
    refused("unexpected", g.leader.receive, PEERS[1], wire(shares[0]))
    assert_over(g.leader, phase=Phase.ERROR)


def test_a_sum_no_honest_group_can_produce_is_refused_by_leader_and_members() -> None:
    g = Group(3)
    shares = g.shares(g.join_all())
    g.leader.receive(PEERS[1], wire(shares[0]))
    bad = shares[1].words.copy()
    bad[:1] += np.uint64(2**62 + 2**34)  # a member cheats: the sum lands beyond 2^30 + 1
    exc = refused("bad-sum", g.leader.receive, PEERS[2], wire(GroupShare(shares[1].round_id, bad)))
    assert exc.offence is False  # the sum does not say who cheated
    g = Group(3)
    shares = g.shares(g.join_all())
    huge = np.full(10, 2**63 - 1, np.uint64)
    refused("bad-sum", g.members[0].receive, wire(GroupSum(shares[0].round_id, huge)))
    refused("bad-sum", g.members[1].receive, wire(GroupSum(shares[0].round_id, huge[:5]), 5))


def test_messages_out_of_order_are_refused() -> None:
    g = Group(3)
    g.join(1)
    refused(
        "unexpected", g.members[0].receive, GroupSum(g.leader.round_id, np.zeros(10, np.uint64))
    )
    g = Group(3)
    join = g.join(1)
    g.leader.receive(PEERS[1], wire(join))
    refused("unexpected", g.leader.receive, PEERS[1], wire(join))
    g = Group(3)
    refused(
        "unexpected",
        g.leader.receive,
        PEERS[1],
        GroupShare(g.leader.round_id, np.zeros(10, np.uint64)),
    )
    member = MemberRound(local(), IDS[1])
    with pytest.raises(LocalProtocolError):
        member.receive(g.invite)  # no round yet
    refused(
        "unexpected",
        member.receive_invite,
        GroupAbort(bytes(16), "x"),
        sender=PEERS[0],
        tensors=snapshot(1),
    )


def test_driving_a_round_wrongly_is_our_bug() -> None:
    g = Group(3)
    with pytest.raises(LocalProtocolError):
        g.leader.receive(PEERS[5], wire(g.join(1)))  # not a member we invited
    g.join(2)
    with pytest.raises(LocalProtocolError):
        g.join(2)  # the invite was already answered
    done = Group(3)
    done.complete()
    with pytest.raises(LocalProtocolError):
        done.leader.abandon("too late")
    with pytest.raises(LocalProtocolError):
        done.members[0].abandon("too late")
