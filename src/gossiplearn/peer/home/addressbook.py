"""The address book: the peers a peer has learnt, kept in ``peers.json`` in its home.

A restarted peer loads it and redials those peers, so the consortium does not depend on the
bootstrap node staying up, and a peer can rejoin when its bootstrap addresses are dead.

Invariants:
- The file is written atomically (``files.write_atomic``): a crash leaves the old or the new
  book, never a mix. At most ``MAX_PEERS`` peers of at most ``MAX_ADDRS`` addresses each are
  written, most recently seen first.
- Loading never raises: a missing file is an empty book; a corrupt or malformed one is logged
  and ignored; invalid entries (bad peer ID, an address for another peer) are skipped. The
  caller still filters what it loads through its admission rules (members, bans).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import trio

from gossiplearn.crypto.identity import is_peer_id
from gossiplearn.errors import UserError
from gossiplearn.gossip.messages import PeerRecord
from gossiplearn.gossip.sampling import PeerEntry
from gossiplearn.peer.home.files import write_atomic
from gossiplearn.peer.net.addresses import parse_address

ADDRESS_BOOK_FILE_NAME = "peers.json"
FORMAT_VERSION = 1
MAX_PEERS = 256
MAX_ADDRS = 8
MAX_FILE_BYTES = 1 << 20  # far above MAX_PEERS * MAX_ADDRS * addresses.MAX_ADDRESS_LENGTH
SAVE_INTERVAL = 10.0  # seconds between periodic saves

log = logging.getLogger(__name__)


def select(entries: Iterable[PeerEntry], limit: int = MAX_PEERS) -> list[PeerRecord]:
    """The peers worth remembering: those with addresses, most recently seen first (peers
    never reached in this run keep their relative order, after the others)."""
    known = [e for e in entries if e.addrs]
    known.sort(
        key=lambda e: e.last_seen if e.last_seen is not None else float("-inf"), reverse=True
    )
    return [PeerRecord(e.peer_id, e.addrs[:MAX_ADDRS]) for e in known[:limit]]


def encode_book(records: Iterable[PeerRecord]) -> bytes:
    peers = [{"peer_id": r.peer_id, "addrs": list(r.addrs[:MAX_ADDRS])} for r in records]
    return json.dumps({"version": FORMAT_VERSION, "peers": peers[:MAX_PEERS]}, indent=1).encode()


def save_address_book(path: Path, records: Iterable[PeerRecord]) -> None:
    """Write the book atomically. Blocking; raises ``OSError``."""
    write_atomic(path, encode_book(records))


def load_address_book(path: Path) -> list[PeerRecord]:
    """The peers saved at ``path``; ``[]`` if the file is missing, unreadable or malformed
    (logged as a warning). Blocking; never raises."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("address book %s not loaded (unreadable: %s); starting without it", path, exc)
        return []
    try:
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
        return _decode(json.loads(data))
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        log.warning(
            "address book %s is corrupt and was ignored (%s); it is rewritten with the peers "
            "learnt in this run",
            path,
            exc,
        )
        return []


def _decode(doc: object) -> list[PeerRecord]:
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"not a version {FORMAT_VERSION} address book")
    peers = doc.get("peers")
    if not isinstance(peers, list):
        raise ValueError("'peers' is not a list")
    out: dict[str, PeerRecord] = {}
    for item in peers[:MAX_PEERS]:
        record = _record(item)
        if record is not None and record.peer_id not in out:
            out[record.peer_id] = record
    return list(out.values())


def _record(item: object) -> PeerRecord | None:
    """One saved peer, or None (logged) if it is invalid."""
    if not isinstance(item, dict):
        return None
    peer_id, addrs = item.get("peer_id"), item.get("addrs")
    if not isinstance(peer_id, str) or len(peer_id) > 128 or not is_peer_id(peer_id):
        log.warning("address book: skipped an entry with an invalid peer ID %.80r", peer_id)
        return None
    if not isinstance(addrs, list):
        return None
    valid = [a for a in addrs[:MAX_ADDRS] if _valid_addr(a, peer_id)]
    if not valid:
        return None
    return PeerRecord(peer_id, tuple(dict.fromkeys(valid)))


def _valid_addr(addr: object, peer_id: str) -> bool:
    """An address we accept (``net.addresses``), with no /p2p/ part or ending in
    ``/p2p/<peer_id>``."""
    if not isinstance(addr, str):
        return False
    try:
        parsed = parse_address(addr)
    except UserError:
        return False
    return parsed.peer_id in (None, peer_id)


async def keep_address_book(path: Path, entries: Callable[[], Iterable[PeerEntry]]) -> None:
    """Save ``entries()`` to ``path`` every ``SAVE_INTERVAL`` seconds (when it changed) until
    cancelled. A failed write is logged and retried at the next interval."""
    written: bytes | None = None
    while True:
        await trio.sleep(SAVE_INTERVAL)
        written = await save_if_changed(path, entries(), written)


async def save_if_changed(
    path: Path, entries: Iterable[PeerEntry], written: bytes | None = None
) -> bytes | None:
    """Write the book unless it is what was ``written`` last or empty (a peer that lost every
    peer keeps the old book to rejoin from). Returns what the file now holds as far as we know.
    Logs, and does not raise, ``OSError``."""
    records = select(entries)
    data = encode_book(records)
    if not records or data == written:
        return written
    try:
        await trio.to_thread.run_sync(write_atomic, path, data)
    except OSError as exc:
        log.warning("address book not written to %s: %s", path, exc)
        return written
    return data
