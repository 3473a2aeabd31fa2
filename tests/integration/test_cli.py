"""The CLI as real processes: init, three peers with bootstrap, status, SIGTERM."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clitools import CLI, Peer, run, stop_all

from gossiplearn.peer.home.modelfile import MODEL_FILE_NAME, load_model

DEADLINE = 90.0


def test_init_creates_a_private_key_and_never_overwrites_it(short_tmp: Path) -> None:
    home = short_tmp / "a"
    first = run("init", "--home", str(home))
    assert first.returncode == 0, first.stderr
    key = home / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (home / "peer.toml").read_text().startswith("#")
    peer_id = first.stdout.strip().splitlines()[-1].split()[-1]
    assert peer_id.startswith("12D3KooW")
    before = key.read_bytes()
    second = run("init", "--home", str(home))
    assert second.returncode == 0
    assert second.stdout.strip().splitlines()[-1].split()[-1] == peer_id
    assert key.read_bytes() == before


def test_init_uses_gossiplearn_home_env(short_tmp: Path) -> None:
    home = short_tmp / "env-home"
    env = dict(os.environ, GOSSIPLEARN_HOME=str(home))
    done = subprocess.run(
        [*CLI, "init"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (home / "identity.key").exists()


def test_status_without_a_running_peer_prints_one_line_and_exits_1(short_tmp: Path) -> None:
    home = short_tmp / "idle"
    assert run("init", "--home", str(home)).returncode == 0
    done = run("status", "--home", str(home))
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no peer is running" in lines[0]


def test_bad_flag_value_is_a_clear_error(short_tmp: Path) -> None:
    home = short_tmp / "bad"
    assert run("init", "--home", str(home)).returncode == 0
    done = run("start", "--home", str(home), "--gossip-interval", "-1")
    assert done.returncode == 1
    assert "gossip.interval" in done.stderr and "> 0" in done.stderr
    done = run("start", "--home", str(home), "--partition", "zipf")
    assert done.returncode == 1 and "dirichlet:ALPHA" in done.stderr
    done = run("start", "--home", str(short_tmp / "nohome"))
    assert done.returncode == 1 and "gossiplearn init" in done.stderr
    done = run("start", "--home", str(home), "--bootstrap", "/ip4/127.0.0.1/tcp/1")
    assert done.returncode == 1 and "/p2p/<peer id>" in done.stderr


def test_a_port_already_in_use_is_refused(short_tmp: Path) -> None:
    # py-libp2p binds with SO_REUSEPORT: without our check a second listener would share it
    home = short_tmp / "port"
    assert run("init", "--home", str(home)).returncode == 0
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run("start", "--home", str(home), "--listen", f"/ip4/127.0.0.1/tcp/{port}")
    assert done.returncode == 1
    assert "Address already in use" in done.stderr and str(port) in done.stderr
    assert not (home / "model.glm").exists()


def test_three_peers_started_by_hand_gossip_and_stop_cleanly(short_tmp: Path) -> None:
    homes = [short_tmp / f"p{i}" for i in (1, 2, 3)]
    for home in homes:
        assert run("init", "--home", str(home)).returncode == 0
    peers = [Peer(homes[0], "1/3")]
    try:
        first = peers[0].address()
        assert first.startswith("/ip4/127.0.0.1/tcp/")
        peers += [Peer(homes[1], "2/3", bootstrap=first), Peer(homes[2], "3/3", bootstrap=first)]
        deadline = time.monotonic() + DEADLINE
        early: dict[int, float] = {}
        statuses: list[dict[str, Any] | None] = [None, None, None]
        while time.monotonic() < deadline:
            for p in peers:
                assert p.proc.poll() is None, p.log()
            statuses = [p.status() for p in peers]
            for i, st in enumerate(statuses):
                if st and st["consensus_distance"] is not None and i not in early:
                    early[i] = st["consensus_distance_mean10"] or st["consensus_distance"]
            if all(
                st and len(st["neighbours"]) == 2 and st["exchanges"]["completed"] >= 20
                for st in statuses
            ):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"peers did not all gossip in time: {statuses}")
        shown = [p.cli_status() for p in peers]  # what `status --json` prints
        for st in shown:
            for key in (
                "peer_id",
                "addrs",
                "neighbours",
                "exchanges",
                "metrics",
                "consensus_distance",
                "bytes_sent",
                "bytes_received",
            ):
                assert key in st
            assert {"accuracy", "loss"} <= set(st["metrics"])
            assert all("peer_id" in n for n in st["neighbours"])
            assert st["bytes_sent"] > 0 and st["bytes_received"] > 0
            assert st["consensus_distance_mean10"] is not None
        # they agree, and wherever a peer first met an independent model the distance fell (a
        # peer that started late may instead have adopted the first one's model: no distance
        # to fall from, for either of them)
        lates = [st["consensus_distance_mean10"] for st in shown]
        assert all(late < 0.1 for late in lates), (early, lates)
        assert all(lates[i] < early[i] for i in early if early[i] > 0.1), (early, lates)
        human = run("status", "--home", str(homes[2]))
        assert human.returncode == 0 and "neighbours (2)" in human.stdout
    finally:
        codes = stop_all(peers)
    assert codes == [0, 0, 0], [p.log() for p in peers]
    for home in homes:
        saved = load_model(home / MODEL_FILE_NAME)
        assert saved.steps > 0
        assert not (home / "status.sock").exists()


def neighbour_exchanges(status: dict[str, Any] | None, peer_id: str) -> int:
    """Exchanges completed with ``peer_id`` in this run, per ``status``; 0 if not a neighbour."""
    for n in status["neighbours"] if status else ():
        if n["peer_id"] == peer_id:
            return int(n["exchanges"])
    return 0


def poll(what: str, check: Callable[[], bool], peers: list[Peer], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in peers:
            assert p.proc.poll() is None, p.log()
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting until {what}: " + "\n".join(p.log() for p in peers))


def test_consortium_outlives_its_bootstrap_node_through_address_books(short_tmp: Path) -> None:
    homes = {name: short_tmp / name for name in "abcd"}
    for home in homes.values():
        assert run("init", "--home", str(home)).returncode == 0
    fast = ("--discovery-interval", "1")
    a = Peer(homes["a"], "1/4", *fast)
    live: list[Peer] = [a]
    try:
        a_addr = a.address()
        b = Peer(homes["b"], "2/4", *fast, bootstrap=a_addr)
        c = Peer(homes["c"], "3/4", *fast, bootstrap=a_addr)
        live += [b, c]
        ids = {}

        def all_know_two() -> bool:
            statuses = [p.status() for p in (a, b, c)]
            if not all(st and len(st["neighbours"]) == 2 for st in statuses):
                return False
            ids.update(zip("abc", (st["peer_id"] for st in statuses if st), strict=True))
            return True

        poll("A, B and C all know each other", all_know_two, live)
        assert a.stop() == 0  # A leaves for good
        live.remove(a)
        base = neighbour_exchanges(b.status(), ids["c"])
        poll(
            "B and C keep exchanging without A",
            lambda: neighbour_exchanges(b.status(), ids["c"]) >= base + 3,
            live,
        )
        assert c.stop() == 0
        live.remove(c)
        book = {
            p["peer_id"]
            for p in json.loads((homes["c"] / "peers.json").read_text("utf-8"))["peers"]
        }
        assert ids["b"] in book

        c = Peer(homes["c"], "3/4", *fast, bootstrap=a_addr)  # only the dead bootstrap address
        live.append(c)
        poll(
            "the restarted C rejoins B through its address book",
            lambda: neighbour_exchanges(c.status(), ids["b"]) >= 1,
            live,
        )
        d = Peer(homes["d"], "4/4", *fast, bootstrap=b.address())
        live.append(d)
        poll(
            "a new peer D, bootstrapped off B, exchanges with C",
            lambda: neighbour_exchanges(d.status(), ids["c"]) >= 1,
            live,
        )
    finally:
        stop_all(live)
