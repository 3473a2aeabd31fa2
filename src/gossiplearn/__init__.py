"""gossiplearn: decentralised gossip learning over an encrypted libp2p overlay."""

__version__ = "0.1.0"
