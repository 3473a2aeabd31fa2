"""Differential privacy through the CLI, as a real process: a peer started with ``--dp`` spends
its budget, stops training (gossip goes on), stops cleanly on SIGTERM, and keeps its ε when it
is started again in the same home."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from clitools import Peer, run

from gossiplearn.errors import UserError
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.status import fetch_status

DEADLINE = 90.0  # seconds: start-up (torch, libp2p, Opacus) and 60 quick steps
# as fast as the CPU allows (60 DP-SGD steps take well under a second); no exchanges needed
FLAGS = ("--dp", "--target-epsilon", "1", "--max-steps", "60", "--steps-per-second", "0")


def wait_for(peer: Peer, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the peer's status (read in this process, as ``status --json`` reads it) until
    ``done`` holds; the status then."""
    deadline = time.monotonic() + DEADLINE
    last = None
    while time.monotonic() < deadline:
        assert peer.proc.poll() is None, peer.log()
        try:
            last = trio.run(fetch_status, Home(peer.home))
        except UserError:
            last = None  # not serving yet
        if last is not None and done(last):
            return last
        time.sleep(0.25)
    raise AssertionError(f"status never got there: {last and last['privacy']}\n{peer.log()}")


def trained_out(st: dict[str, Any]) -> bool:
    return bool(st["privacy"]["budget_spent"] or st["privacy"]["steps"] >= 60)


def test_a_private_peer_spends_its_budget_and_keeps_its_epsilon_when_restarted(
    short_tmp: Path,
) -> None:
    home = short_tmp / "dp"
    Home(home).init()  # as `gossiplearn init` does, without a process of its own
    peer = Peer(home, "1/1", *FLAGS)
    try:
        first = wait_for(peer, trained_out)
        log = peer.log(tail=100_000)
    finally:
        code = peer.stop()
    assert code == 0, peer.log()
    privacy = first["privacy"]
    assert privacy["dp"] is True and privacy["accountant"] == "rdp"
    assert 0 < privacy["epsilon"] <= 1.0 and privacy["target_epsilon"] == 1.0
    assert privacy["noise_multiplier"] > 0 and privacy["max_grad_norm"] == 1.0
    assert 0 < privacy["delta"] < 1 / first["samples"]
    assert privacy["steps"] == first["training"]["steps"]
    assert "differential privacy: ε = 0 of 1 spent so far" in log

    again = Peer(home, "1/1", *FLAGS)
    try:
        second = wait_for(again, lambda st: True)  # served once resumed
        human = run("status", "--home", str(home))
    finally:
        code = again.stop()
    assert code == 0, again.log()
    assert second["privacy"]["epsilon"] == privacy["epsilon"]  # not reset, not grown
    assert second["privacy"]["steps"] == privacy["steps"]
    assert second["training"]["steps"] == first["training"]["steps"]
    assert human.returncode == 0 and f"ε = {privacy['epsilon']:.3g} of 1" in human.stdout
