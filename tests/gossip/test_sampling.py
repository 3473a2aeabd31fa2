"""The peer view: what it learns, whom it samples, and how failing peers back off and drop out."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gossiplearn.gossip.messages import PeerRecord
from gossiplearn.gossip.sampling import PeerView, ViewConfig

SELF = "self"
ADDR = ("/ip4/10.0.0.1/tcp/7701",)


def view(**config: Any) -> PeerView:
    return PeerView(SELF, ViewConfig(**config))


def rec(peer_id: str, *addrs: str) -> PeerRecord:
    return PeerRecord(peer_id, addrs or ADDR)


def test_never_learns_itself() -> None:
    v = view()
    assert v.learn(rec(SELF), now=0.0) is False
    v.mark_connected(SELF, now=0.0)
    assert v.learn_all([rec(SELF), rec("a")], now=0.0, source="a") == ["a"]
    assert SELF not in v
    assert len(v) == 1
    assert v.sample(random.Random(0), now=0.0) == "a"


def test_learn_reports_new_peers_and_refreshes_addresses() -> None:
    v = view(max_addrs=2)
    assert v.learn(rec("a", "/x/1"), now=0.0) is True
    assert v.learn(rec("a", "/x/2", "/x/2", "/x/3", "/x/4"), now=1.0) is False
    entry = v.get("a")
    assert entry is not None
    assert entry.addrs == ("/x/2", "/x/3")  # deduplicated, capped at max_addrs
    v.learn(PeerRecord("a", ()), now=2.0)  # no addresses: keep the ones we have
    assert entry.addrs == ("/x/2", "/x/3")


def test_third_party_records_never_replace_known_addresses() -> None:
    v = view()
    v.learn(rec("a", "/ip4/10.0.0.1/tcp/1"), now=0.0)
    v.learn(PeerRecord("b", ()), now=0.0)
    gossip = [rec("a", "/ip4/6.6.6.6/tcp/1"), rec("b", "/ip4/10.0.0.2/tcp/1"), rec("c", "/c")]
    assert v.learn_all(gossip, now=1.0, source="c") == ["c"]
    a, b = v.get("a"), v.get("b")
    assert a is not None
    assert b is not None
    assert a.addrs == ("/ip4/10.0.0.1/tcp/1",)  # kept: "c" may not redirect "a"
    assert b.addrs == ("/ip4/10.0.0.2/tcp/1",)  # filled in: we had no address for "b"
    # The peer's own record is authoritative.
    v.learn_all([rec("a", "/ip4/10.0.0.9/tcp/1")], now=2.0, source="a")
    assert a.addrs == ("/ip4/10.0.0.9/tcp/1",)
    v.learn(rec("a", "/ip4/6.6.6.6/tcp/1"), now=3.0, authoritative=False)
    assert a.addrs == ("/ip4/10.0.0.9/tcp/1",)


def test_sample_is_uniform_over_eligible_peers() -> None:
    v = view()
    peers = [f"p{i:02}" for i in range(10)]
    for p in peers:
        v.learn(rec(p), now=0.0)
    rng = random.Random(1234)
    draws = 20_000
    counts = Counter(v.sample(rng, now=0.0) for _ in range(draws))
    assert set(counts) == set(peers)
    expected = draws / len(peers)
    # 2000 expected per peer, standard deviation ~42: 10% is over four deviations.
    for p in peers:
        assert abs(counts[p] - expected) < 0.1 * expected, counts


def test_sample_is_deterministic_for_a_seed_whatever_the_learning_order() -> None:
    a, b = view(), view()
    ids = [f"p{i}" for i in range(20)]
    for p in ids:
        a.learn(rec(p), now=0.0)
    for p in reversed(ids):
        b.learn(rec(p), now=0.0)
    ra, rb = random.Random(7), random.Random(7)
    assert [a.sample(ra, 0.0) for _ in range(50)] == [b.sample(rb, 0.0) for _ in range(50)]


def test_excluded_peers_are_never_sampled() -> None:
    v = view()
    for p in "abcde":
        v.learn(rec(p), now=0.0)
    rng = random.Random(0)
    picks = {v.sample(rng, now=0.0, exclude=["a", "c"]) for _ in range(500)}
    assert picks == {"b", "d", "e"}
    assert v.sample(rng, now=0.0, exclude="abcde") is None


def test_unreachable_peers_are_not_eligible() -> None:
    v = view()
    assert v.sample(random.Random(0), now=0.0) is None
    v.learn(PeerRecord("no-addr", ()), now=0.0)
    assert "no-addr" in v
    assert v.eligible(now=0.0) == []
    v.mark_connected("no-addr", now=1.0)  # connected inbound: reachable without an address
    assert v.eligible(now=1.0) == ["no-addr"]
    v.mark_disconnected("no-addr")
    assert v.eligible(now=1.0) == []


def test_backoff_doubles_and_caps() -> None:
    v = view(backoff_base=1.0, backoff_max=10.0, max_failures=100)
    v.learn(rec("a"), now=0.0)
    now = 100.0
    delays = []
    for _ in range(7):
        assert v.failure("a", now) is False
        entry = v.get("a")
        assert entry is not None
        delays.append(entry.retry_at - now)
        assert v.eligible(now + delays[-1] - 0.001) == []
        assert v.eligible(now + delays[-1]) == ["a"]
    assert delays == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_default_backoff_schedule_and_drop() -> None:
    # docs/protocol.md section 10: 1, 2, 4, ..., 32, 60 s; dropped at the 8th failure.
    v = PeerView(SELF)
    v.learn(rec("a"), now=0.0)
    delays = []
    for _ in range(7):
        assert v.failure("a", now=0.0) is False
        entry = v.get("a")
        assert entry is not None
        delays.append(entry.retry_at)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert v.failure("a", now=0.0) is True
    assert "a" not in v


def test_backed_off_peer_is_not_sampled_until_its_retry_time() -> None:
    v = view(backoff_base=5.0)
    v.learn(rec("a"), now=0.0)
    v.learn(rec("b"), now=0.0)
    v.failure("a", now=10.0)
    rng = random.Random(3)
    assert {v.sample(rng, now=14.9) for _ in range(100)} == {"b"}
    assert {v.sample(rng, now=15.0) for _ in range(100)} == {"a", "b"}


def test_dropped_after_max_failures() -> None:
    v = view(max_failures=3)
    v.learn(rec("a"), now=0.0)
    assert v.failure("a", 0.0) is False
    assert v.failure("a", 0.0) is False
    assert v.failure("a", 0.0) is True
    assert "a" not in v
    assert v.failure("a", 0.0) is False  # unknown peers are ignored
    assert v.learn(rec("a"), now=1.0) is True  # and can be learnt again, with a clean slate
    entry = v.get("a")
    assert entry is not None
    assert entry.failures == 0


def test_success_resets_failures_and_backoff() -> None:
    v = view(max_failures=3)
    v.learn(rec("a"), now=0.0)
    v.failure("a", 0.0)
    v.failure("a", 0.0)
    v.success("a", now=0.5)
    entry = v.get("a")
    assert entry is not None
    assert (entry.failures, entry.retry_at, entry.last_seen) == (0, 0.0, 0.5)
    assert v.eligible(now=0.5) == ["a"]
    # The count of consecutive failures started again.
    assert v.failure("a", 1.0) is False
    assert v.failure("a", 1.0) is False
    assert "a" in v


def test_max_peers_bounds_the_view() -> None:
    v = view(max_peers=3)
    assert v.learn_all([rec(p) for p in "abcde"], now=0.0, source="a") == ["a", "b", "c"]
    v.mark_connected("z", now=0.0)
    assert len(v) == 3
    assert "z" not in v
    # Known peers are still refreshed when full.
    v.learn(rec("a", "/new"), now=1.0)
    v.mark_connected("a", now=1.0)
    entry = v.get("a")
    assert entry is not None
    assert (entry.addrs, entry.connected) == (("/new",), True)


def test_records_excludes_failing_and_addressless_peers_most_recent_first() -> None:
    v = view()
    for p in "abcd":
        v.learn(rec(p, f"/ip4/1.1.1.1/tcp/{ord(p)}"), now=0.0)
    v.mark_connected("e", now=9.0)  # no address to pass on
    v.success("a", now=1.0)
    v.success("b", now=3.0)
    v.success("c", now=2.0)
    v.failure("d", now=4.0)
    assert [r.peer_id for r in v.records(limit=10)] == ["b", "c", "a"]
    assert v.records(limit=2) == [
        PeerRecord("b", ("/ip4/1.1.1.1/tcp/98",)),
        PeerRecord("c", ("/ip4/1.1.1.1/tcp/99",)),
    ]
    v.success("d", now=5.0)
    assert [r.peer_id for r in v.records(limit=10)] == ["d", "b", "c", "a"]


@pytest.mark.parametrize("unknown_call", ["success", "disconnect"])
def test_unknown_peers_are_ignored(unknown_call: str) -> None:
    v = view()
    if unknown_call == "success":
        v.success("ghost", now=0.0)
    else:
        v.mark_disconnected("ghost")
    assert "ghost" not in v
    assert v.entries() == []


def test_next_retry_is_the_earliest_backoff_expiry_of_a_reachable_peer() -> None:
    view = PeerView("me")
    assert view.next_retry() is None
    view.learn(PeerRecord("a", ("/ip4/1.1.1.1/tcp/1",)), now=0.0)
    view.learn(PeerRecord("b", ("/ip4/1.1.1.2/tcp/1",)), now=0.0)
    view.learn(PeerRecord("c", ()), now=0.0)  # unreachable: never eligible, never counts
    view.failure("a", now=10.0)
    view.failure("b", now=10.0)
    view.failure("b", now=10.0)
    assert view.next_retry() == 11.0
    assert not view.eligible(10.5) and view.eligible(11.0) == ["a"]
