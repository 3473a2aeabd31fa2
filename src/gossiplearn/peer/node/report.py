"""The status report of a running node: what ``gossiplearn status`` shows (docs in README).

A plain function over the node's public parts (``Reported``: its ``NodeStats``, view,
admission, merger, learner and configuration), so the status endpoint and the demo read the
same fields. Every value is JSON-serialisable; non-finite floats become None. It does not
import the node (the node imports it).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Protocol

from gossiplearn.gossip.exchange import LocalModel
from gossiplearn.gossip.sampling import PeerView
from gossiplearn.gossip.screening import Screen
from gossiplearn.gossip.stats import NeighbourStats
from gossiplearn.peer.learning.learner import Learner
from gossiplearn.peer.net.transport import Transport
from gossiplearn.peer.node.admission import Admission
from gossiplearn.peer.node.config import NodeConfig
from gossiplearn.peer.node.stats import NodeStats


class Reported(Protocol):
    """What the report reads of a node (``Node`` has all of it)."""

    peer_id: str
    transport: Transport
    learner: Learner
    config: NodeConfig
    view: PeerView
    stats: NodeStats
    admission: Admission
    screen: Screen

    @property
    def local(self) -> LocalModel: ...

    @property
    def busy(self) -> bool: ...

    def model_age(self) -> float: ...


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def node_status(node: Reported, now_mono: float) -> dict[str, Any]:
    """Everything ``gossiplearn status`` shows about ``node``, JSON-serialisable. ``now_mono``:
    the trio clock now (backoffs and bans are on it)."""
    st = node.stats
    members = node.admission.members
    latest = st.history.latest
    neighbours: list[dict[str, Any]] = []
    for entry in node.view.entries():
        stats = st.neighbours.get(entry.peer_id, NeighbourStats(entry.peer_id))
        neighbours.append(
            {
                "peer_id": entry.peer_id,
                "name": members.name_of(entry.peer_id),
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
    c = st.counters
    recent = [d for _, d in list(st.consensus)[-10:]]
    return {
        "peer_id": node.peer_id,
        "addrs": node.transport.addrs(),
        "started_at": st.started_at,
        "uptime": time.time() - st.started_at,
        "task": node.config.description,
        "task_kind": node.config.task_kind,
        "contract": node.local.task.hex(),
        "samples": node.learner.samples,
        "busy": node.busy,
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
            "group": group_status(node),
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
            "trend": st.history.trend(),
        },
        "history": [
            {
                "time": p.time,
                "steps": p.steps,
                "accuracy": p.accuracy,
                "loss": p.loss,
                **{k: finite(v) for k, v in p.scores.items()},
            }
            for p in list(st.history.points)[-60:]
        ],
        "incompatible": [
            {"peer_id": p, "name": members.name_of(p), "detail": detail}
            for p, detail in sorted(st.incompatible.items())
        ],
        "consensus_distance": finite(st.consensus[-1][1]) if st.consensus else None,
        "consensus_distance_mean10": sum(recent) / len(recent) if recent else None,
        "consensus_history": [{"time": t, "distance": d} for t, d in list(st.consensus)[-60:]],
        "bytes_sent": st.bytes_sent,
        "bytes_received": st.bytes_received,
        "compression": node.config.gossip.compression,
        "privacy": privacy_status(node),
    }


def privacy_status(node: Reported) -> dict[str, Any]:
    """Differential privacy (``status --json`` → ``privacy``): ``dp``; ``epsilon`` spent so far
    (None when the peer never trained with DP; kept when dp was turned off since), ``delta``,
    ``target_epsilon``, ``noise_multiplier``, ``max_grad_norm``, ``accountant``,
    ``budget_spent``, ``steps`` (DP-SGD steps) and ``plain_steps`` (steps without DP)."""
    report = dataclasses.asdict(node.learner.privacy())
    report["epsilon"] = finite(report["epsilon"])
    return report


def group_status(node: Reported) -> dict[str, Any]:
    """Secure group rounds (``status --json`` → ``exchanges.group``): ``enabled`` and ``size``
    (``privacy.secure_averaging``, ``privacy.group_size``), rounds ``led``, ``joined`` and
    ``completed`` (merged, either role), ``declined_inbound``, ``clipped``, ``last_size``, and
    ``skipped`` / ``abandoned`` by reason."""
    g = node.stats.group
    return {
        "enabled": node.config.group.enabled,
        "size": node.config.group.size,
        "led": g.led,
        "joined": g.joined,
        "completed": g.completed,
        "declined_inbound": g.declined_inbound,
        "clipped": g.clipped,
        "last_size": g.last_size,
        "skipped": dict(g.skipped),
        "abandoned": dict(g.abandoned),
    }


def security_status(node: Reported, now_mono: float) -> dict[str, Any]:
    """Membership, refusals by reason, bans and screening (``status --json`` → ``security``)."""
    wall = time.time()
    st = node.stats
    members = node.admission.members
    penalties = node.admission.penalties
    return {
        "consortium_key_id": node.config.consortium_key_id,
        "members": {p: members[p] for p in sorted(members)},
        "connections_refused": dict(st.connections_refused),
        "streams_refused": dict(st.streams_refused),
        "offences": dict(st.offences),
        "bans": penalties.bans,
        "banned": [
            {"peer_id": p, "name": members.name_of(p), "until": wall + (until - now_mono)}
            for p, until in sorted(penalties.active(now_mono).items())
        ],
        "screening": {
            "enabled": node.screen.config.enabled,
            "clip_radius": node.screen.threshold(),
            "clipped": st.counters.clipped,
        },
    }
