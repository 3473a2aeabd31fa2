"""What ``start`` checks before it loads torch and libp2p (seconds of imports): the identity,
peer.toml with the flags, the addresses and the consortium key. A mistake in any of them is
reported at once; ``run_peer`` runs the same checks again under the home's lock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gossiplearn.crypto.consortium import ConsortiumKey
from gossiplearn.crypto.identity import Identity
from gossiplearn.peer.home.config import PeerConfig
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.net.addresses import parse_address


@dataclass(frozen=True)
class Checked:
    identity: Identity
    config: PeerConfig
    key: ConsortiumKey | None


def check_addresses(config: PeerConfig) -> None:
    """Refuse an address we cannot use (``net.addresses``) before anything is built."""
    for addr in config.network.listen:
        parse_address(addr)
    for addr in config.network.bootstrap:
        parse_address(addr, need_peer_id=True)


def preflight(home: Home, overrides: Mapping[str, Any]) -> Checked:
    """Raises ``UserError`` naming what is wrong."""
    identity = home.identity()
    config = home.config(overrides)
    check_addresses(config)
    return Checked(identity, config, home.consortium_key(config))
