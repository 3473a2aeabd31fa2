"""The address book file (peers.json): round trip, bounds, and corrupt files ignored."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gossiplearn.crypto.identity import Identity
from gossiplearn.gossip.messages import PeerRecord
from gossiplearn.gossip.sampling import PeerEntry
from gossiplearn.peer.home.addressbook import (
    MAX_ADDRS,
    MAX_PEERS,
    encode_book,
    load_address_book,
    save_address_book,
    save_if_changed,
    select,
)


def new_id() -> str:
    return Identity.generate().peer_id


def addr(peer_id: str, port: int = 4001) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"


def test_round_trip(tmp_path: Path) -> None:
    a, b = new_id(), new_id()
    records = [
        PeerRecord(a, (addr(a), "/ip4/10.0.0.1/tcp/4001")),
        PeerRecord(b, (addr(b, 4002),)),
    ]
    path = tmp_path / "peers.json"
    save_address_book(path, records)
    assert load_address_book(path) == records
    assert path.stat().st_mode & 0o777 == 0o600


def test_missing_file_is_an_empty_book_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert load_address_book(tmp_path / "peers.json") == []
    assert not caplog.records


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff not json",
        b'{"version": 1, "peers": [',
        b"[]",
        b'{"version": 2, "peers": []}',
        b'{"version": 1, "peers": {"a": 1}}',
        b"x" * (2 << 20),
    ],
)
def test_a_corrupt_file_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "peers.json"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        assert load_address_book(path) == []
    assert any("corrupt and was ignored" in r.getMessage() for r in caplog.records)


def test_invalid_entries_are_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    good, other = new_id(), new_id()
    doc = {
        "version": 1,
        "peers": [
            "not an object",
            {"peer_id": "QmNotAPeerId", "addrs": ["/ip4/1.2.3.4/tcp/1"]},
            {"peer_id": new_id(), "addrs": "/ip4/1.2.3.4/tcp/1"},
            {"peer_id": new_id(), "addrs": [addr(other)]},  # an address for someone else
            {"peer_id": new_id(), "addrs": ["not a multiaddr", 7, "/" + "x" * 300]},
            {"peer_id": good, "addrs": [addr(good), addr(other), "/ip4/1.2.3.4/tcp/1", 5]},
            {"peer_id": good, "addrs": ["/ip4/9.9.9.9/tcp/9"]},  # duplicate: first wins
        ],
    }
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(doc))
    assert load_address_book(path) == [PeerRecord(good, (addr(good), "/ip4/1.2.3.4/tcp/1"))]


def test_bounds_on_peers_and_addresses(tmp_path: Path) -> None:
    ids = [new_id() for _ in range(MAX_PEERS + 10)]
    many = tuple(f"/ip4/10.0.0.{i}/tcp/4001" for i in range(MAX_ADDRS + 4))
    path = tmp_path / "peers.json"
    doc = {"version": 1, "peers": [{"peer_id": p, "addrs": list(many)} for p in ids]}
    path.write_text(json.dumps(doc))
    loaded = load_address_book(path)
    assert [r.peer_id for r in loaded] == ids[:MAX_PEERS]
    assert all(r.addrs == many[:MAX_ADDRS] for r in loaded)
    save_address_book(path, [PeerRecord(p, many) for p in ids])
    saved = json.loads(path.read_text())["peers"]
    assert len(saved) == MAX_PEERS and all(len(p["addrs"]) == MAX_ADDRS for p in saved)


def test_select_keeps_reachable_peers_most_recently_seen_first() -> None:
    old, recent, never, no_addr = new_id(), new_id(), new_id(), new_id()
    entries = [
        PeerEntry(never, (addr(never),)),
        PeerEntry(old, (addr(old),), last_seen=5.0, failures=2),
        PeerEntry(no_addr, (), connected=True, last_seen=9.0),
        PeerEntry(recent, (addr(recent),), last_seen=7.0),
    ]
    assert [r.peer_id for r in select(entries)] == [recent, old, never]
    assert len(select(entries, limit=1)) == 1


async def test_save_if_changed_skips_unchanged_and_empty_books(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    a = new_id()
    entries = [PeerEntry(a, (addr(a),), last_seen=1.0)]
    written = await save_if_changed(path, entries)
    assert written == encode_book(select(entries)) == path.read_bytes()
    path.unlink()
    assert await save_if_changed(path, entries, written) == written
    assert not path.exists()  # unchanged: not rewritten
    save_address_book(path, select(entries))
    # a peer that lost every peer keeps the book it can rejoin from
    assert await save_if_changed(path, [], written) == written
    assert load_address_book(path) == [PeerRecord(a, (addr(a),))]
