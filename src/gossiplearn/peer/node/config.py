"""What a node is configured with: the peer.toml sections it reads, and what the process
wiring (``peer/app.py``) tells it."""

from __future__ import annotations

from dataclasses import dataclass, field

from gossiplearn.crypto.consortium import Members
from gossiplearn.peer.home.config import GossipConfig, SecurityConfig, TrainingConfig


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """Secure group averaging (``node/group.py``): whether this node averages in groups instead
    of pairwise exchanges (``privacy.secure_averaging``), and with how many members, itself
    included (``privacy.group_size``)."""

    enabled: bool = False
    size: int = 3


@dataclass(frozen=True)
class NodeConfig:
    gossip: GossipConfig
    training: TrainingConfig
    bootstrap: tuple[str, ...] = ()
    description: str = ""
    security: SecurityConfig = field(default_factory=SecurityConfig)
    members: Members = field(default_factory=Members)
    consortium_key_id: str | None = None  # the private network's key id, if any
    task_kind: str = "classification"  # or "regression": which metrics status shows
    group: GroupSettings = field(default_factory=GroupSettings)
