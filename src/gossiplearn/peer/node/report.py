"""The status report of a running node: what ``gossiplearn status`` shows (docs in README).

A plain function over the node's state, so the status endpoint and the demo read the same
fields. Every value is JSON-serialisable; non-finite floats become None.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import trio

from gossiplearn.gossip.stats import NeighbourStats

if TYPE_CHECKING:
    from gossiplearn.peer.node.node import Node


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def node_status(node: Node) -> dict[str, Any]:
    """Everything ``gossiplearn status`` shows about ``node``, JSON-serialisable."""
    latest = node.history.latest
    now_mono = trio.current_time()
    neighbours: list[dict[str, Any]] = []
    for entry in node.view.entries():
        stats = node.neighbours.get(entry.peer_id, NeighbourStats(entry.peer_id))
        neighbours.append(
            {
                "peer_id": entry.peer_id,
                "name": node.members.name_of(entry.peer_id),
                "addrs": list(entry.addrs),
                "connected": entry.connected,
                "failures": entry.failures,
                "backoff_s": max(0.0, entry.retry_at - now_mono),
                "last_exchange": stats.last_exchange,
                "exchanges": stats.exchanges,
                "accuracy": stats.accuracy,
                "loss": stats.loss,
                "steps": stats.steps,
                "consensus_distance": finite(stats.consensus_distance),
            }
        )
    neighbours.sort(key=lambda n: n["last_exchange"] or 0.0, reverse=True)
    c = node.counters
    recent = [d for _, d in list(node.consensus)[-10:]]
    return {
        "peer_id": node.peer_id,
        "addrs": node.transport.addrs(),
        "started_at": node.started_at,
        "uptime": time.time() - node.started_at,
        "task": node.config.description,
        "task_kind": node.config.task_kind,
        "contract": node.local.task.hex(),
        "samples": node.learner.samples,
        "busy": node._busy,
        "neighbours": neighbours,
        "exchanges": {
            "completed": c.completed,
            "declined": c.declined,
            "failed": c.failed,
            "refused": c.refused,
            "initiated": c.initiated,
            "answered": c.answered,
            "declined_inbound": c.declined_inbound,
            "refused_by_reason": dict(c.refused_by_reason),
            "clipped": c.clipped,
            "adopted": c.adopted,
            "seeded": c.seeded,
        },
        "security": security_status(node, now_mono),
        "training": {
            "enabled": node.config.training.enabled,
            "steps": node.learner.steps,
            "samples_seen": node.learner.samples_seen,
            "model_age": node.model_age(),
            "max_steps": node.config.training.max_steps,
            "steps_per_second": node.config.training.steps_per_second,
        },
        "metrics": {
            "accuracy": latest.accuracy if latest else None,
            "loss": latest.loss if latest else None,
            **({k: finite(v) for k, v in latest.scores.items()} if latest else {}),
            "time": latest.time if latest else None,
            "trend": node.history.trend(),
        },
        "history": [
            {
                "time": p.time,
                "steps": p.steps,
                "accuracy": p.accuracy,
                "loss": p.loss,
                **{k: finite(v) for k, v in p.scores.items()},
            }
            for p in list(node.history.points)[-60:]
        ],
        "incompatible": [
            {"peer_id": p, "name": node.members.name_of(p), "detail": detail}
            for p, detail in sorted(node.incompatible.items())
        ],
        "consensus_distance": finite(node.consensus[-1][1]) if node.consensus else None,
        "consensus_distance_mean10": sum(recent) / len(recent) if recent else None,
        "consensus_history": [{"time": t, "distance": d} for t, d in list(node.consensus)[-60:]],
        "bytes_sent": node.bytes_sent,
        "bytes_received": node.bytes_received,
        "compression": node.config.gossip.compression,
    }


def security_status(node: Node, now_mono: float) -> dict[str, Any]:
    """Membership, refusals by reason, bans and screening (``status --json`` → ``security``)."""
    wall = time.time()
    members = node.members
    return {
        "consortium_key_id": node.config.consortium_key_id,
        "members": {p: members[p] for p in sorted(members)},
        "connections_refused": dict(node.connections_refused),
        "streams_refused": dict(node.streams_refused),
        "offences": dict(node.offences),
        "bans": node.penalties.bans,
        "banned": [
            {"peer_id": p, "name": members.name_of(p), "until": wall + (until - now_mono)}
            for p, until in sorted(node.penalties.active(now_mono).items())
        ],
        "screening": {
            "enabled": node.screen.config.enabled,
            "clip_radius": node.screen.threshold(),
            "clipped": node.counters.clipped,
        },
    }
