"""The bounds a node puts on what a remote may send and how long it may take
(docs/protocol.md section 7.2): frame limits by what is expected next, and deadlines.

A model transfer has its own deadline, derived from the model's size, counted from Accept, so a
slow drip cannot hold the exchange slot for the whole ``exchange_timeout``.
"""

from __future__ import annotations

from gossiplearn.gossip.messages import Limits
from gossiplearn.peer.home.config import GossipConfig

CONTROL_LIMITS = Limits(max_frame=64 * 1024)  # Propose, Accept, Decline
PEERS_LIMITS = Limits(max_frame=256 * 1024)  # PeersRequest, PeersReply
MODEL_MARGIN = 1.05  # inbound model frames may exceed our own encoded size by 5% (+ 64 KiB)
MODEL_SLACK = 64 * 1024  # bytes
CONTROL_TIMEOUT = 10.0  # seconds for a proposal or a peer-exchange message, at most
MIN_TRANSFER_RATE = 1 << 20  # bytes/s: a model arriving slower than this is abandoned
TRANSFER_SLACK = 5.0  # seconds added to the transfer deadline


def model_limits(model_bytes: int, tensors: int) -> Limits:
    """The bound on an inbound ModelOffer, for a model of ours of ``model_bytes`` encoded
    bytes and ``tensors`` tensors (one more for the statistics)."""
    return Limits(max_frame=int(model_bytes * MODEL_MARGIN) + MODEL_SLACK, max_tensors=tensors + 1)


def control_timeout(config: GossipConfig) -> float:
    """Seconds a proposal, its answer or a peer-exchange message may take."""
    return min(config.exchange_timeout, CONTROL_TIMEOUT)


def transfer_timeout(config: GossipConfig, max_frame: int) -> float:
    """Seconds both models may take to cross, from Accept, when the largest is ``max_frame``
    bytes."""
    return min(config.exchange_timeout, TRANSFER_SLACK + max_frame / MIN_TRANSFER_RATE)
