"""The exchange protocol as a pure state machine (one object per exchange, h11-style).

An exchange between an initiator I and a responder R on one stream:

    I → R  Propose(fingerprint, samples, model_bytes)
    R → I  Accept | Decline(reason)
    I ⇄ R  ModelOffer (both send, concurrently, after Accept)

Both then merge as ``merge.plan_merge`` says, from the two offers: usually with ``alpha =
min(w_local, w_remote) / (2 w_local)``, which conserves the weighted sum and never moves a side
more than halfway, whatever the remote claims; a fresh side adopts a far older model outright
and the other keeps its own. The driver registers the offer it sends (``offer``) before it
feeds the remote's, so the plan is made from exactly what both sides saw.
The objects below decide what to send and whether what arrived is acceptable; the driver in
``gossiplearn.peer.node.exchanges`` moves the bytes. They never block, sleep or read a clock.

Errors: a remote that breaks the protocol raises ``RemoteProtocolError`` and the exchange moves
to ``Phase.ERROR``, where every further input raises ``LocalProtocolError`` (as does driving
the object in a wrong order): nothing is merged after a refusal. ``Outcome`` names how an
exchange ended for the driver.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from gossiplearn.errors import LocalProtocolError, RemoteProtocolError
from gossiplearn.gossip import aggregate, compression
from gossiplearn.gossip.merge import DEFAULT_ADOPT_RATIO, MergeKind, Standing, plan_merge
from gossiplearn.gossip.messages import (
    Accept,
    Decline,
    Message,
    ModelOffer,
    Propose,
    TensorSpec,
    fingerprint,
    short_digest,
)


class Refused(RemoteProtocolError):
    """The remote's model cannot be merged with ours; ``reason`` is a short stable key.
    ``offence``: whether the remote did wrong (False for an offer with no task digest: a peer
    of an older version, which does not compare digests, accepts a proposal it cannot serve;
    an offer of another digest than the one agreed at the Propose is a lie and an offence)."""

    def __init__(self, reason: str, detail: str, *, offence: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.offence = offence


@dataclass(frozen=True, slots=True)
class LocalModel:
    """What the exchange needs to know about our own model (not its values)."""

    specs: Mapping[str, TensorSpec]
    samples: int
    model_bytes: int  # upper bound on our encoded ModelOffer, in bytes
    task: bytes = b""  # our task identity's digest: peers with another one never merge
    stats: aggregate.SumsLayout | None = None  # our statistics' layout, if the task has them

    @property
    def fingerprint(self) -> bytes:
        return fingerprint(self.specs.values())

    @staticmethod
    def of(
        specs: list[TensorSpec],
        samples: int,
        model_bytes: int,
        task: bytes = b"",
        stats: aggregate.SumsLayout | None = None,
    ) -> LocalModel:
        return LocalModel({s.name: s for s in specs}, samples, model_bytes, task, stats)


def task_mismatch(ours: bytes, theirs: bytes) -> str:
    """The refusal text for a peer with another task identity (contract)."""
    return f"task contract differs (ours {short_digest(ours)}, theirs {short_digest(theirs)})"


@dataclass(frozen=True, slots=True)
class Merge:
    """Outcome of a completed exchange: add ``alpha * (offer - our snapshot)`` to our model."""

    offer: ModelOffer
    alpha: float
    kind: MergeKind = MergeKind.AVERAGE


def _plan(local: LocalModel, ours: ModelOffer | None, theirs: ModelOffer, ratio: float) -> Merge:
    if ours is None:
        raise LocalProtocolError("our own offer was not registered (call offer() first)")
    plan = plan_merge(
        Standing(local.samples, ours.age, ours.fresh),
        Standing(theirs.samples, theirs.age, theirs.fresh),
        ratio,
    )
    return Merge(theirs, plan.alpha, plan.kind)


def check_offer(offer: ModelOffer, local: LocalModel) -> ModelOffer:
    """``offer`` with exactly our tensors, all finite, in our dtypes; raises ``Refused``.

    An encoded offer (``enc``, see ``gossip.compression``) is decoded into our dtypes first:
    the result is an exact offer of the decoded values, checked like any other. Statistics
    (``gossip.aggregate``) must be present exactly when our task has them, and valid sums."""
    if offer.task != local.task:
        raise Refused(
            "incompatible", task_mismatch(local.task, offer.task), offence=offer.task != b""
        )
    if offer.fingerprint != local.fingerprint:
        raise Refused("incompatible", "model fingerprint differs from ours")
    if offer.tensors.keys() != local.specs.keys():
        missing = sorted(local.specs.keys() - offer.tensors.keys())[:3]
        extra = sorted(offer.tensors.keys() - local.specs.keys())[:3]
        raise Refused("incompatible", f"tensor names differ (missing {missing}, extra {extra})")
    if offer.enc is not None:
        for name, arr in offer.tensors.items():
            if tuple(arr.shape) != local.specs[name].shape:
                raise Refused(
                    "incompatible",
                    f"tensor {name!r} has shape {list(arr.shape)}, "
                    f"ours is {list(local.specs[name].shape)}",
                )
        dtypes = {name: spec.dtype for name, spec in local.specs.items()}
        try:
            tensors = compression.decode(offer.tensors, offer.enc, offer.scales, dtypes)
        except compression.Undecodable as exc:
            raise Refused(exc.reason, exc.detail) from None
        offer = replace(offer, tensors=tensors, enc=None, scales=())
    elif offer.scales:
        raise Refused("malformed", "scales sent with an exact model")
    if local.stats is None:
        if offer.stats is not None:
            raise Refused("incompatible", "statistics sent for a task without them")
    elif offer.stats is None:
        raise Refused("incompatible", "no statistics sent; our task needs them")
    else:
        try:
            aggregate.check(offer.stats, local.stats)
        except aggregate.BadStatistics as exc:
            raise Refused("statistics", str(exc)) from None
    for name, arr in offer.tensors.items():
        spec = local.specs[name]
        if tuple(arr.shape) != spec.shape or arr.dtype.name != spec.dtype:
            raise Refused(
                "incompatible",
                f"tensor {name!r} is {arr.dtype.name}{list(arr.shape)}, "
                f"ours is {spec.dtype}{list(spec.shape)}",
            )
        if not np.isfinite(arr).all():
            raise Refused("non-finite", f"tensor {name!r} holds NaN or Inf")
    return offer


class Phase(enum.Enum):
    PROPOSED = "proposed"  # initiator: waiting for Accept/Decline
    AWAITING_MODEL = "awaiting-model"  # both: waiting for the remote's ModelOffer
    IDLE = "idle"  # responder: waiting for Propose
    DONE = "done"
    DECLINED = "declined"
    ERROR = "error"  # the remote broke the protocol: nothing more is accepted (as h11's ERROR)


class Outcome(enum.Enum):
    """How one exchange ended, from our side."""

    COMPLETED = "completed"  # models swapped and merged
    DECLINED = "declined"  # no exchange: declined (by them, or by us before proposing)
    FAILED = "failed"  # the network failed or a deadline passed
    REFUSED = "refused"  # the remote broke the protocol or sent a model we refuse


class _Guarded:
    """The ERROR phase, shared by both sides: a ``RemoteProtocolError`` raised while feeding
    a message moves the exchange to ERROR, and any later input is our bug."""

    phase: Phase

    def _enter(self) -> None:
        if self.phase is Phase.ERROR:
            raise LocalProtocolError("the exchange already failed; it accepts nothing more")

    def _failed(self) -> None:
        self.phase = Phase.ERROR


class _Offering(_Guarded):
    """Registering the offer we send, shared by both sides."""

    phase: Phase
    sent: ModelOffer | None

    def offer(self, offer: ModelOffer) -> ModelOffer:
        """Register the ``ModelOffer`` we are about to send (once, after Accept) and return it."""
        if self.phase is not Phase.AWAITING_MODEL:
            raise LocalProtocolError(f"cannot offer a model now ({self.phase.value})")
        if self.sent is not None:
            raise LocalProtocolError("our offer was already registered")
        self.sent = offer
        return offer


class InitiatorExchange(_Offering):
    """Our side of an exchange we started."""

    def __init__(self, local: LocalModel, *, adopt_ratio: float = DEFAULT_ADOPT_RATIO) -> None:
        self.local = local
        self.adopt_ratio = adopt_ratio
        self.phase = Phase.PROPOSED
        self.decline: Decline | None = None
        self.sent = None

    def propose(self) -> Propose:
        return Propose(
            self.local.fingerprint, self.local.samples, self.local.model_bytes, self.local.task
        )

    def receive(self, msg: Message) -> Merge | None:
        """Feed one message. Returns a ``Merge`` when the exchange completes, else None.

        After ``Accept`` the caller sends its ``ModelOffer`` and awaits the remote's; after
        ``Decline`` the exchange is over (``phase`` is DECLINED, ``decline`` says why).
        Raises ``RemoteProtocolError`` (``Refused`` for a model we cannot merge) and moves to
        ERROR; ``LocalProtocolError`` for any message after the end.
        """
        self._enter()
        try:
            return self._receive(msg)
        except RemoteProtocolError:
            self._failed()
            raise

    def _receive(self, msg: Message) -> Merge | None:
        if self.phase is Phase.PROPOSED:
            if isinstance(msg, Accept):
                self.phase = Phase.AWAITING_MODEL
                return None
            if isinstance(msg, Decline):
                self.phase = Phase.DECLINED
                self.decline = msg
                return None
            raise RemoteProtocolError(f"expected accept or decline, got {type(msg).__name__}")
        if self.phase is Phase.AWAITING_MODEL:
            if not isinstance(msg, ModelOffer):
                raise RemoteProtocolError(f"expected a model, got {type(msg).__name__}")
            msg = check_offer(msg, self.local)
            merge = _plan(self.local, self.sent, msg, self.adopt_ratio)
            self.phase = Phase.DONE
            return merge
        raise LocalProtocolError(f"exchange already {self.phase.value}")


class ResponderExchange(_Offering):
    """Our side of an exchange a remote started."""

    def __init__(
        self,
        local: LocalModel,
        *,
        max_model_bytes: int,
        adopt_ratio: float = DEFAULT_ADOPT_RATIO,
    ) -> None:
        self.local = local
        self.max_model_bytes = max_model_bytes
        self.adopt_ratio = adopt_ratio
        self.phase = Phase.IDLE
        self.proposed: Propose | None = None
        self.sent = None

    def receive_propose(
        self, msg: Message, *, busy: bool, closing: bool = False
    ) -> Accept | Decline:
        """Answer a proposal. ``busy``: we are in another exchange right now. Raises
        ``RemoteProtocolError`` (and moves to ERROR) for anything but a proposal."""
        self._enter()
        if self.phase is not Phase.IDLE:
            raise LocalProtocolError(f"proposal already answered ({self.phase.value})")
        if not isinstance(msg, Propose):
            self._failed()
            raise RemoteProtocolError(f"expected a proposal, got {type(msg).__name__}")
        self.proposed = msg
        answer: Accept | Decline
        if closing:
            answer = Decline("closing")
        elif msg.task != self.local.task:
            answer = Decline(
                "incompatible", task_mismatch(self.local.task, msg.task), task=self.local.task
            )
        elif msg.fingerprint != self.local.fingerprint:
            answer = Decline("incompatible", "model fingerprint differs (names, shapes or dtypes)")
        elif msg.model_bytes > self.max_model_bytes:
            answer = Decline("incompatible", f"model of {msg.model_bytes} bytes is too large")
        elif busy:
            answer = Decline("busy")
        else:
            answer = Accept()
        self.phase = Phase.AWAITING_MODEL if isinstance(answer, Accept) else Phase.DECLINED
        return answer

    def receive(self, msg: Message) -> Merge:
        """Feed the remote's ``ModelOffer``; returns the ``Merge`` to apply. Raises
        ``RemoteProtocolError`` (``Refused`` for a model we cannot merge) and moves to ERROR."""
        self._enter()
        if self.phase is not Phase.AWAITING_MODEL:
            raise LocalProtocolError(f"not awaiting a model ({self.phase.value})")
        try:
            return self._receive(msg)
        except RemoteProtocolError:
            self._failed()
            raise

    def _receive(self, msg: Message) -> Merge:
        if not isinstance(msg, ModelOffer):
            raise RemoteProtocolError(f"expected a model, got {type(msg).__name__}")
        msg = check_offer(msg, self.local)
        if self.proposed is not None and msg.samples != self.proposed.samples:
            raise Refused(
                "inconsistent",
                f"the model claims {msg.samples} samples, the proposal {self.proposed.samples}",
            )
        merge = _plan(self.local, self.sent, msg, self.adopt_ratio)
        self.phase = Phase.DONE
        return merge
