"""Exchanges per peer to reach consensus, in the in-process simulator (same gossip core)."""

from __future__ import annotations

import math

import numpy as np
import trio
import trio.testing

from bench.report import Section
from gossiplearn.peer.config import GossipConfig
from gossiplearn.peer.sim import VectorLearner, build_simulation

SIZES = (10, 30, 100)
TOLERANCE = 1e-3


async def _run(n: int) -> tuple[float, float]:
    rng = np.random.default_rng(n)
    learners = [
        VectorLearner({"w": rng.normal(size=32).astype(np.float64)}, int(rng.integers(50, 500)))
        for _ in range(n)
    ]
    gossip = GossipConfig(interval=1.0, exchange_timeout=10.0, discovery_interval=5.0)
    sim = build_simulation(learners, gossip=gossip, seed=n, full_view=True)
    target = sim.weighted_mean()
    scale = max(float(np.max(np.abs(lrn.tensors["w"] - target["w"]))) for lrn in learners)
    async with trio.open_nursery() as nursery:
        await sim.run(nursery)
        start = trio.current_time()
        while sim.max_deviation(target) > TOLERANCE * scale:
            await trio.sleep(0.25)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    # a completed exchange counts once on each of its two peers
    per_peer = sum(node.counters.completed for node in sim.nodes) / n
    return per_peer, elapsed


def run() -> Section:
    section = Section(
        title="Consensus in simulation (averaging only)",
        command="python -m bench",
        settings=(
            "In-process `Node`s on the in-memory transport, virtual time, training off, "
            "gossip interval 1 s, every peer knows every other (`full_view`), random 32-float "
            f"models with random sample weights. Until every peer is within {TOLERANCE:g} × "
            "the initial maximum deviation of the exact weighted average."
        ),
        header=["peers N", "log2 N", "exchanges per peer", "virtual seconds"],
    )
    for n in SIZES:
        print(f"  simulation of {n} peers …", flush=True)
        per_peer, seconds = trio.run(_run, n, clock=trio.testing.MockClock(autojump_threshold=0))
        section.rows.append([str(n), f"{math.log2(n):.1f}", f"{per_peer:.1f}", f"{seconds:.0f}"])
    section.notes.append(
        "Push-pull averaging needs O(log N + log 1/ε) rounds (Kempe et al. 2003): the exchanges "
        "per peer grow with log N, not N."
    )
    return section
