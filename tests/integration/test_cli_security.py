"""The security commands as real processes: consortium keys, member lists, members-only peers."""

from __future__ import annotations

import json
import re
import stat
import time
from pathlib import Path
from typing import Any

from clitools import Peer, run, stop_all

from gossiplearn.peer.home.modelfile import MODEL_FILE_NAME

DEADLINE = 60.0
KEY_ID = re.compile(r"consortium key ([0-9a-f]{8}) written to")


def init(home: Path) -> str:
    """``gossiplearn init``; returns the new peer's ID."""
    done = run("init", "--home", str(home))
    assert done.returncode == 0, done.stderr
    peer_id = done.stdout.strip().splitlines()[-1].split()[-1]
    assert peer_id.startswith("12D3KooW")
    return peer_id


def create_key(path: Path) -> str:
    """``gossiplearn consortium create``; returns the printed key id."""
    done = run("consortium", "create", "--out", str(path))
    assert done.returncode == 0, done.stderr
    found = KEY_ID.search(done.stdout)
    assert found, done.stdout
    return found.group(1)


def add_member(home: Path, peer_id: str, name: str) -> None:
    done = run("members", "add", peer_id, name, "--home", str(home))
    assert done.returncode == 0, done.stderr


def list_members(home: Path) -> dict[str, str]:
    done = run("members", "list", "--json", "--home", str(home))
    assert done.returncode == 0, done.stderr
    listed: dict[str, str] = json.loads(done.stdout)
    return listed


# ---------------------------------------------------------------------------------- commands


def test_consortium_create_writes_a_private_key_and_never_overwrites_it(short_tmp: Path) -> None:
    path = short_tmp / "keys" / "consortium.key"
    key_id = create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    assert before.startswith(b"/key/swarm/psk/1.0.0/\n/base16/\n")
    assert key_id not in before.decode()  # the id names the key without revealing it
    again = run("consortium", "create", "--out", str(path))
    assert again.returncode == 1
    assert again.stdout == ""
    assert "already exists" in again.stderr and str(path) in again.stderr
    assert path.read_bytes() == before


def test_members_add_list_remove_round_trip(short_tmp: Path) -> None:
    home = short_tmp / "m"
    own = init(home)
    other = init(short_tmp / "o")
    empty = run("members", "list", "--home", str(home))
    assert empty.returncode == 0 and "every holder of the consortium key" in empty.stdout
    assert list_members(home) == {}

    added = run("members", "add", own, "Acme Corp", "--home", str(home))
    assert added.returncode == 0 and f"added Acme Corp: {own}" in added.stdout
    add_member(home, other, "Bolt")
    assert list_members(home) == {own: "Acme Corp", other: "Bolt"}
    human = run("members", "list", "--home", str(home))
    assert human.returncode == 0
    assert [line.split()[-1] for line in human.stdout.splitlines()] == [own, other]  # by name

    renamed = run("members", "add", other, "Bolt Ltd", "--home", str(home))
    assert renamed.returncode == 0 and "renamed Bolt Ltd" in renamed.stdout
    removed = run("members", "remove", "Bolt Ltd", "--home", str(home))
    assert removed.returncode == 0 and other in removed.stdout
    removed = run("members", "remove", own, "--home", str(home))
    assert removed.returncode == 0
    assert list_members(home) == {}
    # the commented defaults survive the edits
    assert '# "12D3KooW..." = "Acme Corp"' in (home / "peer.toml").read_text()


def test_members_errors_are_one_line_and_exit_1(short_tmp: Path) -> None:
    home = short_tmp / "m"
    init(home)
    before = (home / "peer.toml").read_bytes()
    bad = run("members", "add", "12D3KooWnope", "Acme", "--home", str(home))
    assert bad.returncode == 1 and "is not a peer ID" in bad.stderr
    unknown = run("members", "remove", "Nobody", "--home", str(home))
    assert unknown.returncode == 1 and "'Nobody' is not in the member list" in unknown.stderr
    assert (home / "peer.toml").read_bytes() == before
    nohome = run("members", "add", init(short_tmp / "p"), "P", "--home", str(short_tmp / "none"))
    assert nohome.returncode == 1 and "gossiplearn init" in nohome.stderr


def test_start_refuses_a_key_other_users_can_read(short_tmp: Path) -> None:
    home = short_tmp / "s"
    init(home)
    key = short_tmp / "c.key"
    create_key(key)
    key.chmod(0o644)
    done = run("start", "--home", str(home), "--consortium-key", str(key))
    assert done.returncode == 1
    assert f"chmod 600 {key}" in done.stderr
    assert not (home / MODEL_FILE_NAME).exists()


def test_start_with_a_malformed_key_names_the_file(short_tmp: Path) -> None:
    home = short_tmp / "s"
    init(home)
    key = short_tmp / "bad.key"
    key.write_text("/key/swarm/psk/1.0.0/\n/base16/\nnot-hex\n")
    key.chmod(0o600)
    done = run("start", "--home", str(home), "--consortium-key", str(key))
    assert done.returncode == 1
    assert str(key) in done.stderr and "not valid base16" in done.stderr
    assert not (home / MODEL_FILE_NAME).exists()
    missing = run("start", "--home", str(home), "--consortium-key", str(short_tmp / "no.key"))
    assert missing.returncode == 1 and "no consortium key at" in missing.stderr


# ---------------------------------------------------------------------------------- peers


def completed(st: dict[str, Any] | None) -> int:
    return st["exchanges"]["completed"] if st else 0


def test_members_with_the_key_gossip_and_a_peer_with_another_key_never_connects(
    short_tmp: Path,
) -> None:
    deadline = time.monotonic() + 3 * DEADLINE  # the whole test, start-up included
    key, other_key = short_tmp / "c.key", short_tmp / "x.key"
    key_id = create_key(key)
    other_id = create_key(other_key)
    assert other_id != key_id
    homes = [short_tmp / "a", short_tmp / "b", short_tmp / "x"]
    ids = [init(home) for home in homes]
    for home in homes[:2]:
        add_member(home, ids[0], "Acme")
        add_member(home, ids[1], "Bolt")

    peers: list[Peer] = []
    try:
        peers.append(Peer(homes[0], "1/3", "--consortium-key", str(key)))
        first = peers[0].address(deadline)
        peers.append(Peer(homes[1], "2/3", "--consortium-key", str(key), "--bootstrap", first))
        a, b = peers

        # the two members find each other and exchange models
        statuses: list[dict[str, Any] | None] = [None, None]
        gossip_deadline = min(deadline, time.monotonic() + DEADLINE)
        while not all(completed(st) >= 3 for st in statuses):
            assert time.monotonic() < gossip_deadline, f"members did not gossip: {statuses}"
            statuses = [a.status(), b.status()]
            time.sleep(0.5)
        for st, me, them, their_name in ((statuses[0], 0, 1, "Bolt"), (statuses[1], 1, 0, "Acme")):
            assert st is not None and st["peer_id"] == ids[me]
            assert st["security"]["consortium_key_id"] == key_id
            assert st["security"]["members"] == {ids[0]: "Acme", ids[1]: "Bolt"}
            assert [(n["peer_id"], n["name"]) for n in st["neighbours"]] == [
                (ids[them], their_name)
            ]

        # a peer holding another key, bootstrapped off the first, is cut off at the handshake
        outsider = ["--consortium-key", str(other_key), "--bootstrap", first]
        peers.append(Peer(homes[2], "3/3", *outsider, "--dial-timeout", "3"))
        x = peers[2]
        x.address(deadline)
        a_before = completed(a.status())
        failed = f"bootstrap {first} unreachable"
        while x.log(tail=10**7).count(failed) < 2:  # two bootstrap dials failed
            assert time.monotonic() < deadline, f"no failed bootstrap seen: {x.log()}"
            st_x = x.status()
            assert st_x is None or st_x["neighbours"] == [], st_x
            time.sleep(0.5)
        st_x = x.status()
        assert st_x is not None
        assert st_x["neighbours"] == [] and completed(st_x) == 0
        assert st_x["security"]["consortium_key_id"] == other_id
        st_a = a.status()
        assert st_a is not None
        # it never got past the key, so membership never had to refuse it
        assert st_a["security"]["connections_refused"] == {}
        assert ids[2] not in [n["peer_id"] for n in st_a["neighbours"]]
        # meanwhile the members go on gossiping
        while completed(st_a) <= a_before:
            assert time.monotonic() < deadline, "exchanges stopped"
            time.sleep(0.5)
            st_a = a.status()
    finally:
        codes = stop_all(peers)
    assert codes == [0] * len(peers), [p.log() for p in peers]
    for home in homes:
        assert (home / MODEL_FILE_NAME).exists()
