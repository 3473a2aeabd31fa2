"""Offences and temporary bans: strikes within a window ban, bans expire, memory is bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gossiplearn.gossip.penalties import BanConfig, Penalties

strikes = st.integers(min_value=1, max_value=6)
windows = st.floats(min_value=0.1, max_value=1e4)
ban_lengths = st.floats(min_value=0.1, max_value=1e4)
starts = st.floats(min_value=0.0, max_value=1e6)


def offend_at(penalties: Penalties, peer: str, times: list[float]) -> list[bool]:
    return [penalties.offend(peer, t) for t in times]


@given(strikes, windows, ban_lengths, starts, st.data())
def test_strikes_offences_within_the_window_ban(
    n: int, window: float, ban: float, t0: float, data: st.DataObject
) -> None:
    p = Penalties(BanConfig(strikes=n, window=window, ban_seconds=ban))
    # all strikes within the window (a margin for rounding: the exact bound is tested below)
    offsets = data.draw(st.lists(st.floats(0.0, 0.99 * window), min_size=n - 1, max_size=n - 1))
    times = sorted(t0 + o for o in [0.0, *offsets])
    assert offend_at(p, "x", times) == [False] * (n - 1) + [True]
    now = times[-1]
    assert p.banned("x", now)
    assert p.active(now) == {"x": now + ban}
    assert p.bans == 1
    assert not p.banned("y", now)  # only the offender


def test_the_window_boundary_is_inclusive() -> None:
    p = Penalties(BanConfig(strikes=3, window=60.0))
    assert offend_at(p, "x", [0.0, 30.0, 60.0]) == [False, False, True]


@given(
    n=st.integers(min_value=2, max_value=6),
    window=windows,
    t0=starts,
    spread=st.lists(st.floats(min_value=1.01, max_value=10.0), min_size=1, max_size=30),
)
def test_offences_spread_wider_than_the_window_do_not_ban(
    n: int, window: float, t0: float, spread: list[float]
) -> None:
    # each gap is over window / (n - 1): any n consecutive offences span more than the window
    p = Penalties(BanConfig(strikes=n, window=window, ban_seconds=300.0))
    t = t0
    for factor in spread:
        t += window / (n - 1) * factor
        assert not p.offend("x", t)
        assert not p.banned("x", t)
    assert p.bans == 0 and p.active(t) == {}


@given(n=strikes, window=windows, ban=ban_lengths, t0=starts)
def test_a_ban_expires_at_until_and_the_peer_starts_clean(
    n: int, window: float, ban: float, t0: float
) -> None:
    p = Penalties(BanConfig(strikes=n, window=window, ban_seconds=ban))
    assert offend_at(p, "x", [t0] * n)[-1]
    until = p.active(t0)["x"]
    assert until == t0 + ban
    before = max(t0, until - min(ban / 2, 1e-3))  # a moment before the end
    assert p.banned("x", before)
    # offences while banned neither extend the ban nor count later
    assert offend_at(p, "x", [before] * (n + 2)) == [False] * (n + 2)
    assert p.active(before) == {"x": until}
    assert not p.banned("x", until)
    assert p.active(until) == {}
    # clean record: it takes `n` fresh offences to be banned again
    assert offend_at(p, "x", [until] * n) == [False] * (n - 1) + [True]
    assert p.bans == 2


@given(n=strikes, times=st.lists(starts, max_size=50))
def test_ban_seconds_zero_never_bans(n: int, times: list[float]) -> None:
    p = Penalties(BanConfig(strikes=n, ban_seconds=0.0))
    for t in sorted(times):
        assert not p.offend("x", t)
        assert not p.banned("x", t)
    assert p.bans == 0


def test_active_drops_expired_bans() -> None:
    p = Penalties(BanConfig(strikes=1, ban_seconds=10.0))
    assert p.offend("a", 0.0)
    assert p.offend("b", 5.0)
    assert p.active(4.0) == {"a": 10.0, "b": 15.0}
    assert p.active(10.0) == {"b": 15.0}
    assert p.active(20.0) == {}
    assert p.bans == 2  # expiry does not rewrite history
    assert not p.banned("a", 0.0)  # dropped for good, even asked about the past


@given(
    max_tracked=st.integers(min_value=1, max_value=64),
    peers=st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=400),
)
def test_tracked_peers_are_bounded_by_max_tracked(max_tracked: int, peers: list[str]) -> None:
    p = Penalties(BanConfig(strikes=3, window=1e9, max_tracked=max_tracked))
    for i, peer in enumerate(peers):
        p.offend(peer, float(i))
        assert len(p._offences) <= max_tracked
        assert all(len(times) <= 3 for times in p._offences.values())


def test_the_stalest_record_is_forgotten_first() -> None:
    p = Penalties(BanConfig(strikes=3, window=100.0, max_tracked=2))
    assert offend_at(p, "a", [0.0]) == [False]
    assert offend_at(p, "b", [1.0, 2.0]) == [False, False]
    assert offend_at(p, "a", [3.0]) == [False]  # a is now fresher than b
    assert offend_at(p, "c", [4.0]) == [False]  # one too many: b, the stalest, is forgotten
    assert p.offend("a", 5.0)  # a's record was kept: third strike
    assert not p.offend("b", 6.0)  # b's two strikes were forgotten (kept, this would ban)
