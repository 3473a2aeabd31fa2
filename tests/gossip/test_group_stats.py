"""Group rounds of a task with consortium statistics (docs/protocol.md 16.1, 16.4): the
statistics are summed first, every member rebases its model to their average, then the models
are summed. Complete rounds, the masks of each phase, dropouts at every step of both phases,
and the refusals the statistics phase adds. Every message crosses the codec on its way."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import MODEL_FORMAT, STATS_FORMAT, OutOfRange
from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import LocalProtocolError
from gossiplearn.gossip.aggregate import SumsLayout, check
from gossiplearn.gossip.exchange import LocalModel
from gossiplearn.gossip.group import (
    Completed,
    GroupResult,
    LeaderRound,
    MemberRound,
    Phase,
    StatsAverage,
)
from gossiplearn.gossip.group_messages import (
    GroupAbort,
    GroupDecline,
    GroupInvite,
    GroupKeys,
    GroupLimits,
    GroupMessage,
    GroupShare,
    GroupStatsShare,
    GroupStatsSum,
    GroupSum,
    decode,
    encode,
    words_limits,
)
from gossiplearn.gossip.group_rules import REFUSAL_REASONS, GroupRefused
from gossiplearn.gossip.messages import TensorSpec

IDS = [Identity(bytes([i + 1]) * 32) for i in range(6)]
PEERS = [i.peer_id for i in IDS]
TASK = b"t" * 32
SPECS = [TensorSpec("w", "float32", (2, 3)), TensorSpec("b", "float64", (4,))]
MODEL_WORDS = 10
SUMS = SumsLayout(4, moments=((1, 2, 3),), counts=(0,))  # [rows, (count, sum, squares)]
Tensors = dict[str, np.ndarray]


def local(samples: int) -> LocalModel:
    return LocalModel.of(SPECS, samples, 10_000, TASK, SUMS)


def snapshot(value: float) -> Tensors:
    return {"w": np.full((2, 3), value, np.float32), "b": np.arange(1.0, 5.0) * value}


def statistics(rows: int, mean: float, std: float) -> np.ndarray:
    """The sums of ``rows`` values of this mean and deviation (one numeric column)."""
    return np.array([rows, rows, rows * mean, rows * (mean**2 + std**2)], dtype=np.float64)


def rebase(tensors: Mapping[str, np.ndarray], old: np.ndarray, new: np.ndarray) -> Tensors:
    """A stand-in for a task's rebase (the state machines never call it: the driver does):
    any deterministic function of the model and both statistics vectors."""
    ratio = (new[2] / new[1]) - (old[2] / old[1])
    return {"w": (tensors["w"] * (new[0] / old[0])).astype(np.float32), "b": tensors["b"] + ratio}


def wire(msg: GroupMessage) -> GroupMessage:
    """``msg`` as the other side decodes it."""
    if isinstance(msg, GroupShare | GroupSum):
        limits = words_limits(MODEL_WORDS)
    elif isinstance(msg, GroupStatsShare | GroupStatsSum):
        limits = words_limits(SUMS.size)
    else:
        limits = GroupLimits()
    return decode(encode(msg), limits=limits)


class Group:
    """One round of a task with statistics: a leader (IDS[0]) and ``n - 1`` members."""

    def __init__(
        self,
        n: int = 3,
        samples: Sequence[int] = (),
        values: Sequence[float] = (),
        stats: Sequence[np.ndarray] = (),
        keys: Sequence[X25519PrivateKey] = (),
    ) -> None:
        self.samples = list(samples or [10 * (i + 1) for i in range(n)])
        self.values = list(values or [float(i) for i in range(n)])
        self.stats = list(stats or [statistics(20 * (i + 1), i - 1.0, 1.0 + i) for i in range(n)])
        self.keys = list(keys or [X25519PrivateKey.generate() for _ in range(n)])
        self.leader = LeaderRound(
            local(self.samples[0]),
            IDS[0],
            PEERS[1:n],
            rng=random.Random(),
            tensors=snapshot(self.values[0]),
            stats=self.stats[0],
            key=self.keys[0],
        )
        self.members = [
            MemberRound(local(self.samples[i]), IDS[i], key=self.keys[i]) for i in range(1, n)
        ]
        self.invite = wire(self.leader.invite())
        self.sent_keys: GroupKeys | None = None

    def join_all(self) -> GroupKeys:
        out = None
        for i, m in enumerate(self.members, start=1):
            join = m.receive_invite(
                self.invite, sender=PEERS[0], tensors=snapshot(self.values[i]), stats=self.stats[i]
            )
            out = self.leader.receive(PEERS[i], wire(join))
        assert isinstance(out, GroupKeys)
        self.sent_keys = out
        return out

    def stats_shares(self, keys: GroupKeys) -> list[GroupStatsShare]:
        out = [m.receive(wire(keys)) for m in self.members]
        assert all(isinstance(s, GroupStatsShare) for s in out)
        self.stats_sent: list[GroupStatsShare] = out  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    def stats_phase(self) -> StatsAverage:
        """Through the statistics phase: the leader's average (with the sum to send)."""
        got = None
        for i, share in enumerate(self.stats_shares(self.join_all()), start=1):
            got = self.leader.receive(PEERS[i], wire(share))
        assert isinstance(got, StatsAverage) and got.sum is not None
        return got

    def rebased(self, i: int, average: np.ndarray) -> Tensors:
        return rebase(snapshot(self.values[i]), self.stats[i], average)

    def model_shares(self, avg: StatsAverage) -> list[GroupShare]:
        """Each member hears the statistics' sum, rebases and contributes."""
        assert avg.sum is not None
        out = []
        for i, m in enumerate(self.members, start=1):
            heard = m.receive(wire(avg.sum))
            assert isinstance(heard, StatsAverage)
            assert np.array_equal(heard.stats, avg.stats)  # one average for everyone
            out.append(m.contribute(self.rebased(i, heard.stats)))
        return out

    def complete(self) -> tuple[GroupResult, list[GroupResult]]:
        avg = self.stats_phase()
        shares = self.model_shares(avg)
        assert self.leader.contribute(self.rebased(0, avg.stats)) is None
        done = None
        for i, share in enumerate(shares, start=1):
            done = self.leader.receive(PEERS[i], wire(share))
        assert isinstance(done, Completed)
        results = [m.receive(wire(done.sum)) for m in self.members]
        assert all(isinstance(r, GroupResult) for r in results)
        return done.result, results  # type: ignore[return-value]


def refused(reason: str, call: object, *args: object, **kwargs: object) -> GroupRefused:
    assert callable(call)
    with pytest.raises(GroupRefused) as info:
        call(*args, **kwargs)
    assert info.value.reason == reason, info.value
    assert reason in REFUSAL_REASONS
    return info.value


def assert_abandoned(*rounds: LeaderRound | MemberRound) -> None:
    for r in rounds:
        assert r.phase is Phase.ABANDONED
        with pytest.raises(LocalProtocolError):
            r.contribute(snapshot(0.0))


# ---------------------------------------------------------------------------- complete rounds


@settings(max_examples=15, deadline=None)
@given(n=st.integers(3, 6), data=st.data())
def test_the_sums_are_the_plain_average_of_statistics_and_the_weighted_average_of_rebased_models(
    n: int, data: st.DataObject
) -> None:
    samples = data.draw(st.lists(st.integers(1, 10**5), min_size=n, max_size=n))
    values = data.draw(st.lists(st.floats(-100, 100, width=32), min_size=n, max_size=n))
    rows = data.draw(st.lists(st.integers(1, 10**4), min_size=n, max_size=n))
    means = data.draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n))
    stds = data.draw(st.lists(st.floats(0.01, 1e2), min_size=n, max_size=n))
    stats = [statistics(r, m, s) for r, m, s in zip(rows, means, stds, strict=True)]
    g = Group(n, samples, values, stats)
    ours, theirs = g.complete()

    mean = np.mean(stats, axis=0)
    total = sum(samples)
    for r in (ours, *theirs):
        assert r.stats is not None and (r.samples, r.size) == (total, n)
        np.testing.assert_array_equal(r.stats, ours.stats)  # every member: the same vector
        np.testing.assert_array_equal(check(r.stats, SUMS), r.stats)  # a valid set of sums
        # the plain average, within rounding (n · 2^-17 absolute; a raised sum of squares)
        np.testing.assert_allclose(r.stats, mean, rtol=1e-9, atol=n * STATS_FORMAT.resolution)
        expected = {
            k: sum(w * g.rebased(i, r.stats)[k].astype(np.float64) for i, w in enumerate(samples))
            / total
            for k in ("w", "b")
        }
        for k, v in expected.items():  # in the average's coordinates, to fixed-point precision
            np.testing.assert_allclose(
                r.tensors[k], v.astype(r.tensors[k].dtype), rtol=1e-6, atol=1e-6
            )
            np.testing.assert_array_equal(r.tensors[k], ours.tensors[k])


def test_the_invite_announces_the_statistics_phase_and_each_phase_masks_with_its_own_seeds() -> (
    None
):
    """A member's statistics share is its ``stats / g`` masked with the statistics phase's
    pair masks, its model share its weighted rebased model masked with the model phase's
    (docs/protocol.md 16.3): rebuilt here from the member's private key."""
    g = Group(3)
    assert isinstance(g.invite, GroupInvite) and g.invite.stats == SUMS.size
    avg = g.stats_phase()
    keys, ctx = g.sent_keys, g.members[0].ctx
    assert keys is not None and ctx is not None

    def masked(words: np.ndarray, domain: bytes) -> np.ndarray:
        seeds = {
            PEERS[j]: masking.pair_seed(
                g.keys[1], ctx, PEERS[1], PEERS[j], keys.keys[j].public_key, domain=domain
            )
            for j in (0, 2)
        }
        return masking.apply_masks(words, PEERS[1], seeds)

    stats_share = g.stats_sent[0]
    plain = STATS_FORMAT.encode(g.stats[1] * (1 / 3))  # the weight, as the round applies it
    np.testing.assert_array_equal(stats_share.words, masked(plain, masking.STATS_SEED_DOMAIN))

    share = g.model_shares(avg)[0]
    rebased = g.rebased(1, avg.stats)
    flat = np.concatenate([rebased[k].astype(np.float64).ravel() for k in ("b", "w")])
    plain = MODEL_FORMAT.encode(flat * g.samples[1] / sum(g.samples))
    np.testing.assert_array_equal(share.words, masked(plain, masking.SEED_DOMAIN))
    assert not np.array_equal(  # the other phase's masks do not take it off
        share.words, masked(plain, masking.STATS_SEED_DOMAIN)
    )


def test_the_leader_keeps_model_shares_that_come_before_its_own() -> None:
    g = Group(3)
    avg = g.stats_phase()
    shares = g.model_shares(avg)
    for i, share in enumerate(shares, start=1):  # the members rebased faster than we did
        assert g.leader.receive(PEERS[i], wire(share)) is None
    assert g.leader.phase is Phase.REBASING
    done = g.leader.contribute(g.rebased(0, avg.stats))
    assert isinstance(done, Completed) and g.leader.phase is Phase.DONE


# ---------------------------------------------------------------------------- dropouts


STEPS = [
    "after-keys",  # the keys are out; the last statistics share never reaches the leader
    "after-stats-sum",  # the statistics' sum is out; the last member never contributes
    "after-model-shares",  # every member contributed; the leader has not yet
]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("who", ["member", "leader"])
def test_a_dropout_at_any_step_of_either_phase_abandons_the_round_unmerged(
    step: str, who: str
) -> None:
    """The last member or the leader drops out at ``step``; whoever sees it abandons, the
    leader tells the others, nobody gets a result, and no round holds a secret."""
    g = Group(4)
    shares = g.stats_shares(g.join_all())
    for i, share in enumerate(shares[:-1], start=1):
        assert g.leader.receive(PEERS[i], wire(share)) is None
    if step != "after-keys":
        avg = g.leader.receive(PEERS[3], wire(shares[-1]))
        assert isinstance(avg, StatsAverage) and avg.sum is not None
        for i, m in enumerate(g.members, start=1):
            heard = m.receive(wire(avg.sum))
            assert isinstance(heard, StatsAverage)
            if step == "after-stats-sum" and i == 3:
                break  # it never contributes
            share = m.contribute(g.rebased(i, heard.stats))
            assert g.leader.receive(PEERS[i], wire(share)) is None
        assert g.leader.phase is Phase.REBASING
    if who == "member":
        abort = g.members[-1].abandon("timeout")
        to_others = g.leader.receive(PEERS[3], wire(abort))
        assert isinstance(to_others, GroupAbort) and to_others.reason == "aborted"
        others = g.members[:-1]
    else:
        to_others = g.leader.abandon("dropout")
        others = g.members
    for m in others:
        assert m.receive(wire(to_others)) is None
    assert_abandoned(g.leader, *g.members)
    for r in (g.leader, *g.members):
        assert r._key is None and not r._seeds and not r._stats_seeds


def test_a_dropout_after_the_statistics_sum_leaves_every_member_unmerged() -> None:
    """Members that already hold the group's statistics adopt nothing when the model phase
    fails: the driver adopts statistics only with a ``GroupResult``."""
    g = Group(3)
    avg = g.stats_phase()
    assert avg.sum is not None
    heard = g.members[0].receive(wire(avg.sum))
    assert isinstance(heard, StatsAverage)
    share = g.members[0].contribute(g.rebased(1, heard.stats))
    assert g.leader.receive(PEERS[1], wire(share)) is None
    abort = g.leader.abandon("dropout")  # member 2 vanished without contributing
    assert g.members[0].receive(wire(abort)) is None
    assert_abandoned(g.leader, g.members[0])
    with pytest.raises(LocalProtocolError):
        g.leader.contribute(g.rebased(0, avg.stats))


def test_a_rebased_model_that_cannot_be_encoded_abandons_before_it_is_sent() -> None:
    g = Group(3)
    avg = g.stats_phase()
    assert avg.sum is not None
    g.members[0].receive(wire(avg.sum))
    with pytest.raises(OutOfRange):
        g.members[0].contribute(snapshot(2.0**31))
    abort = g.members[0].abandon("ignored")
    assert abort.reason == "out-of-range"
    assert isinstance(g.leader.receive(PEERS[1], wire(abort)), GroupAbort)
    assert_abandoned(g.leader, g.members[0])

    g = Group(3)  # the leader's own rebased model: it sends nothing more, only the abort
    g.stats_phase()
    with pytest.raises(OutOfRange):
        g.leader.contribute(snapshot(np.nan))
    assert g.leader.abandon("ignored").reason == "non-finite"
    assert_abandoned(g.leader)


def test_statistics_that_cannot_be_encoded_stop_a_member_before_it_joins() -> None:
    g = Group(3)
    with pytest.raises(OutOfRange):
        g.members[0].receive_invite(
            g.invite, sender=PEERS[0], tensors=snapshot(1.0), stats=np.full(4, 2.0**111)
        )
    assert g.members[0].phase is Phase.ABANDONED


# ---------------------------------------------------------------------------- refusals


def test_a_statistics_sum_that_is_no_valid_set_of_sums_is_refused_by_leader_and_members() -> None:
    g = Group(3)
    shares = g.stats_shares(g.join_all())
    g.leader.receive(PEERS[1], wire(shares[0]))
    bad = shares[1].words.copy()
    k = SUMS.size  # the third words of the statistics hold their integer parts × 2^16
    bad[2 * k] -= np.uint64(1000 << 16)  # a member claims -3000 rows: the group's count < 0
    exc = refused("bad-stats", g.leader.receive, PEERS[2], GroupStatsShare(shares[1].round_id, bad))
    assert exc.offence is False  # the sum does not say who lied
    assert g.leader.phase is Phase.ERROR

    g = Group(3)
    avg = g.stats_phase()
    assert avg.sum is not None
    inconsistent = avg.sum.words.copy()
    inconsistent[3 :: SUMS.size] = np.uint64(0)  # no sum of squares for a column with a mean
    exc = refused("bad-stats", g.members[0].receive, GroupStatsSum(avg.sum.round_id, inconsistent))
    assert exc.offence is True  # the leader checks the same: it should have refused it
    huge = np.full(SUMS.size, 2**63 - 1, np.uint64)
    refused("bad-sum", g.members[1].receive, GroupStatsSum(avg.sum.round_id, huge))


def test_statistics_shares_and_sums_of_the_wrong_length_or_turn_are_refused() -> None:
    g = Group(3)
    shares = g.stats_shares(g.join_all())
    short = GroupStatsShare(shares[0].round_id, shares[0].words[:-1])
    refused("bad-share", g.leader.receive, PEERS[1], short)

    g = Group(3)
    shares = g.stats_shares(g.join_all())
    g.leader.receive(PEERS[1], wire(shares[0]))
    refused("unexpected", g.leader.receive, PEERS[1], wire(shares[0]))  # a second one

    g = Group(3)
    keys = g.join_all()
    g.stats_shares(keys)
    model = GroupShare(keys.round_id, np.zeros(MODEL_WORDS, np.uint64))
    refused("unexpected", g.leader.receive, PEERS[1], model)  # a model before the average
    refused("unexpected", g.members[0].receive, GroupSum(keys.round_id, model.words))
    with pytest.raises(LocalProtocolError):
        g.members[1].contribute(snapshot(1.0))  # before the average: our bug

    g = Group(3)
    avg = g.stats_phase()
    assert avg.sum is not None
    refused("bad-sum", g.members[0].receive, GroupStatsSum(avg.sum.round_id, avg.sum.words[:-1]))


@pytest.mark.parametrize(
    ("announced", "ours", "detail"),
    [
        (None, SUMS, "no statistics phase"),
        (SUMS.size, None, "our task has no statistics"),
        (SUMS.size + 1, SUMS, f"have {SUMS.size + 1} values, ours {SUMS.size}"),
    ],
)
def test_an_invite_whose_statistics_phase_does_not_fit_our_task_is_declined(
    announced: int | None, ours: SumsLayout | None, detail: str
) -> None:
    mine = LocalModel.of(SPECS, 10, 10_000, TASK, ours)
    invite = GroupInvite(bytes(16), tuple(PEERS[:3]), mine.fingerprint, TASK, 10, announced)
    member = MemberRound(mine, IDS[1])
    answer = member.receive_invite(
        invite, sender=PEERS[0], tensors=snapshot(1.0), stats=None if ours is None else np.ones(4)
    )
    assert isinstance(answer, GroupDecline) and answer.reason == "incompatible"
    assert detail in answer.detail
    assert member.phase is Phase.DECLINED


def test_statistics_are_given_exactly_when_the_task_has_them() -> None:
    with pytest.raises(LocalProtocolError):
        LeaderRound(local(10), IDS[0], PEERS[1:3], rng=random.Random(), tensors=snapshot(1.0))
    g = Group(3)
    with pytest.raises(LocalProtocolError):
        g.members[0].receive_invite(g.invite, sender=PEERS[0], tensors=snapshot(1.0))
