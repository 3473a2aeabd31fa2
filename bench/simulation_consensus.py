"""Scale: exchanges per peer until consensus, against N, in the in-process simulator (the same
gossip core as a deployed peer, on the in-memory transport, in virtual time)."""

from __future__ import annotations

import math
import time

import numpy as np
import trio
import trio.testing

from bench.report import Section
from gossiplearn.peer.home.config import GossipConfig
from gossiplearn.peer.sim import Simulation, VectorLearner, build_simulation

SIZES = (10, 30, 100, 300, 1000)
TARGET = 1e-3  # consensus distance: max over peers of ||x_i - mean|| / ||mean||
DIM = 32


def consensus_distance(sim: Simulation) -> float:
    mean = sim.weighted_mean()["w"]
    scale = float(np.linalg.norm(mean))
    return max(float(np.linalg.norm(lrn.tensors["w"] - mean)) for lrn in sim.learners) / scale


async def _run(n: int) -> tuple[float, float, float]:
    """(exchanges per peer, virtual seconds, initial consensus distance) until ``TARGET``."""
    rng = np.random.default_rng(n)
    # a common component and a per-peer one of the same size: models that disagree, around a
    # mean that is far from zero (so the relative distance is well defined)
    learners = [
        VectorLearner({"w": 1.0 + rng.normal(size=DIM)}, int(rng.integers(50, 500)))
        for _ in range(n)
    ]
    gossip = GossipConfig(interval=1.0, exchange_timeout=10.0, discovery_interval=30.0)
    sim = build_simulation(learners, gossip=gossip, seed=n, full_view=True)
    initial = consensus_distance(sim)
    async with trio.open_nursery() as nursery:
        await sim.run(nursery)
        start = trio.current_time()
        while consensus_distance(sim) > TARGET:
            await trio.sleep(0.25)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    # a completed exchange counts once on each of its two peers
    per_peer = sum(node.stats.counters.completed for node in sim.nodes) / n
    return per_peer, elapsed, initial


def run() -> Section:
    section = Section(
        title="Scale: exchanges per peer to consensus, in simulation",
        command="python -m bench",
        settings=(
            "In-process `Node`s on the in-memory transport, virtual time, training off (pure "
            "averaging), gossip interval 1 s, every peer knows every other (`full_view`), "
            f"{DIM}-float models `1 + N(0, 1)` with random sample weights, screening on. Until "
            f"the consensus distance max_i ‖x_i − x̄‖ / ‖x̄‖ (x̄ the current sample-weighted mean) "
            f"is at most {TARGET:g}."
        ),
        header=[
            "peers N", "log2 N", "initial distance", "exchanges per peer",
            "per peer / log2 N", "virtual seconds", "wall seconds",
        ],
    )  # fmt: skip
    for n in SIZES:
        print(f"  simulation of {n} peers …", flush=True)
        t0 = time.perf_counter()
        per_peer, seconds, initial = trio.run(
            _run, n, clock=trio.testing.MockClock(autojump_threshold=0)
        )
        section.rows.append(
            [
                str(n), f"{math.log2(n):.1f}", f"{initial:.2f}", f"{per_peer:.1f}",
                f"{per_peer / math.log2(n):.1f}", f"{seconds:.0f}",
                f"{time.perf_counter() - t0:.0f}",
            ]
        )  # fmt: skip
    section.notes.append(
        "Push-pull averaging reaches relative error ε in O(log N + log 1/ε) rounds (Kempe, Dobra "
        "& Gehrke 2003): the exchanges per peer grow with log N, not with N."
    )
    return section
