"""The exchange state machine: both sides, every refusal, and misuse in either direction."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.errors import LocalProtocolError, RemoteProtocolError
from gossiplearn.gossip import compression
from gossiplearn.gossip.exchange import (
    InitiatorExchange,
    LocalModel,
    Merge,
    Phase,
    Refused,
    ResponderExchange,
    check_offer,
)
from gossiplearn.gossip.merge import MergeKind
from gossiplearn.gossip.messages import (
    Accept,
    Decline,
    Limits,
    Message,
    ModelOffer,
    PeerRecord,
    PeersRequest,
    Propose,
    decode,
    encode,
    encoded_model_size,
    specs_of,
)

MAX_MODEL_BYTES = 10_000


def tensors(fill: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "w": np.full((2, 3), fill, np.float32),
        "b": np.full(3, fill, np.float32),
    }


def local(samples: int = 100) -> LocalModel:
    t = tensors()
    return LocalModel.of(specs_of(t), samples, encoded_model_size(t))


def offer(
    model: LocalModel | None = None, *, samples: int = 300, tensors_: dict | None = None
) -> ModelOffer:
    model = model or local()
    return ModelOffer(
        model.fingerprint, samples, 7, 0.5, 1.0, tensors(1.0) if tensors_ is None else tensors_
    )


def propose(model: LocalModel | None = None, **changes: object) -> Propose:
    msg = InitiatorExchange(model or local()).propose()
    return Propose(
        **{
            "fingerprint": msg.fingerprint,
            "samples": msg.samples,
            "model_bytes": msg.model_bytes,
            **changes,
        }
    )


def responder() -> ResponderExchange:
    return ResponderExchange(local(), max_model_bytes=MAX_MODEL_BYTES)


def kind(msg: Message) -> str:
    return type(msg).__name__


OTHER_MESSAGES: list[Message] = [
    Propose(b"fp", 1, 1),
    Accept(),
    Decline("busy"),
    PeersRequest(PeerRecord("p", ())),
]


# ---------------------------------------------------------------------------------- initiator


def test_initiator_happy_path() -> None:
    ours = local(samples=100)
    ex = InitiatorExchange(ours)
    assert ex.phase is Phase.PROPOSED
    assert ex.propose() == Propose(ours.fingerprint, 100, ours.model_bytes)
    assert ex.receive(Accept()) is None
    assert ex.phase is Phase.AWAITING_MODEL
    mine = offer(ours, samples=100)
    assert ex.offer(mine) is mine
    theirs = offer(ours, samples=300)
    merge = ex.receive(theirs)
    assert merge == Merge(theirs, 0.5)  # the lighter side moves halfway (merge_weight)
    assert ex.phase is Phase.DONE
    assert ex.decline is None


def test_initiator_decline_path() -> None:
    ex = InitiatorExchange(local())
    decline = Decline("busy", "in another exchange")
    assert ex.receive(decline) is None
    assert ex.phase is Phase.DECLINED
    assert ex.decline == decline


@pytest.mark.parametrize(
    "msg", [Propose(b"fp", 1, 1), offer(), PeersRequest(PeerRecord("p", ()))], ids=kind
)
def test_initiator_refuses_anything_but_an_answer_to_its_proposal(msg: Message) -> None:
    ex = InitiatorExchange(local())
    with pytest.raises(RemoteProtocolError, match="expected accept or decline"):
        ex.receive(msg)


@pytest.mark.parametrize("msg", OTHER_MESSAGES, ids=kind)
def test_initiator_refuses_anything_but_a_model_after_accept(msg: Message) -> None:
    ex = InitiatorExchange(local())
    ex.receive(Accept())
    with pytest.raises(RemoteProtocolError, match="expected a model"):
        ex.receive(msg)


@pytest.mark.parametrize(
    "finish", [[Accept(), offer()], [Decline("closing")]], ids=["done", "declined"]
)
@pytest.mark.parametrize("msg", [*OTHER_MESSAGES, offer()], ids=kind)
def test_initiator_after_the_end_is_a_local_error(finish: list[Message], msg: Message) -> None:
    ex = InitiatorExchange(local())
    for m in finish:
        if isinstance(m, ModelOffer):
            ex.offer(offer(samples=100))
        ex.receive(m)
    with pytest.raises(LocalProtocolError):
        ex.receive(msg)


def test_initiator_refuses_an_incompatible_model() -> None:
    ex = InitiatorExchange(local())
    ex.receive(Accept())
    bad = offer(tensors_={"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)})
    with pytest.raises(Refused) as info:
        ex.receive(bad)
    assert info.value.reason == "incompatible"
    assert ex.phase is Phase.ERROR


def test_after_a_refusal_an_exchange_accepts_nothing_more() -> None:
    """h11's rule: once the remote broke the protocol, a second message (even a good model)
    is our bug to feed, and never yields a merge."""
    ex = InitiatorExchange(local())
    ex.receive(Accept())
    ex.offer(offer(samples=100))
    with pytest.raises(Refused):
        ex.receive(offer(tensors_={"w": np.full((2, 3), np.nan, np.float32), "b": tensors()["b"]}))
    assert ex.phase is Phase.ERROR
    with pytest.raises(LocalProtocolError, match="already failed"):
        ex.receive(offer())
    r = responder()
    with pytest.raises(RemoteProtocolError):
        r.receive_propose(offer(), busy=False)
    assert r.phase is Phase.ERROR
    with pytest.raises(LocalProtocolError):
        r.receive_propose(propose(), busy=False)
    r = responder()
    r.receive_propose(propose(), busy=False)
    r.offer(offer(samples=100))
    with pytest.raises(RemoteProtocolError):
        r.receive(Accept())
    assert r.phase is Phase.ERROR
    with pytest.raises(LocalProtocolError):
        r.receive(offer(samples=300))


# ---------------------------------------------------------------------------------- responder


def test_responder_happy_path() -> None:
    ex = responder()
    assert ex.phase is Phase.IDLE
    assert ex.receive_propose(propose(), busy=False) == Accept()
    assert ex.phase is Phase.AWAITING_MODEL
    ex.offer(offer(samples=100))
    theirs = offer(samples=100)
    assert ex.receive(theirs) == Merge(theirs, 0.5)
    assert ex.phase is Phase.DONE


@pytest.mark.parametrize(
    ("msg", "busy", "closing", "reason"),
    [
        (propose(), True, False, "busy"),
        (propose(), False, True, "closing"),
        (propose(), True, True, "closing"),  # closing wins: don't invite a retry
        (propose(fingerprint=b"\x00" * 32), False, False, "incompatible"),
        (propose(fingerprint=b"\x00" * 32), True, False, "incompatible"),  # busy or not
        (propose(model_bytes=MAX_MODEL_BYTES + 1), False, False, "incompatible"),
    ],
    ids=["busy", "closing", "busy-and-closing", "fingerprint", "fingerprint-busy", "too-large"],
)
def test_responder_declines(msg: Propose, busy: bool, closing: bool, reason: str) -> None:
    ex = responder()
    answer = ex.receive_propose(msg, busy=busy, closing=closing)
    assert isinstance(answer, Decline)
    assert answer.reason == reason
    if reason != "incompatible":
        assert answer.detail == ""  # docs/protocol.md 7.3
    assert ex.phase is Phase.DECLINED
    with pytest.raises(LocalProtocolError):
        ex.receive(offer())


def test_responder_decline_details() -> None:
    wrong_fp = responder().receive_propose(propose(fingerprint=b"\x00" * 32), busy=False)
    assert wrong_fp == Decline(
        "incompatible", "model fingerprint differs (names, shapes or dtypes)"
    )
    too_big = responder().receive_propose(propose(model_bytes=MAX_MODEL_BYTES + 1), busy=False)
    assert too_big == Decline("incompatible", f"model of {MAX_MODEL_BYTES + 1} bytes is too large")


def test_responder_accepts_a_model_exactly_at_the_size_limit() -> None:
    ex = responder()
    assert ex.receive_propose(propose(model_bytes=MAX_MODEL_BYTES), busy=False) == Accept()


def test_responder_declines_are_encodable() -> None:
    for busy, closing in [(True, False), (False, True)]:
        answer = responder().receive_propose(propose(), busy=busy, closing=closing)
        assert decode(encode(answer), limits=Limits()) == answer
    too_big = responder().receive_propose(propose(model_bytes=10**9), busy=False)
    assert decode(encode(too_big), limits=Limits()) == too_big


@pytest.mark.parametrize("msg", [Accept(), Decline("busy"), offer()], ids=kind)
def test_responder_refuses_anything_but_a_proposal(msg: Message) -> None:
    ex = responder()
    with pytest.raises(RemoteProtocolError, match="expected a proposal"):
        ex.receive_propose(msg, busy=False)


@pytest.mark.parametrize("msg", OTHER_MESSAGES, ids=kind)
def test_responder_refuses_anything_but_a_model_after_accept(msg: Message) -> None:
    ex = responder()
    ex.receive_propose(propose(), busy=False)
    with pytest.raises(RemoteProtocolError, match="expected a model"):
        ex.receive(msg)


def test_responder_misuse_is_a_local_error() -> None:
    ex = responder()
    with pytest.raises(LocalProtocolError):
        ex.receive(offer())  # no proposal answered yet
    ex.receive_propose(propose(samples=300), busy=False)
    with pytest.raises(LocalProtocolError):
        ex.receive_propose(propose(samples=300), busy=False)  # answered already
    with pytest.raises(LocalProtocolError, match="offer"):
        ex.receive(offer())  # our own offer was never registered
    ex.offer(offer(samples=100))
    ex.receive(offer())
    with pytest.raises(LocalProtocolError):
        ex.receive(offer())  # done


# ---------------------------------------------------------------------------------- check_offer


@pytest.mark.parametrize(
    ("tensors_", "match"),
    [
        ({"w": np.zeros((2, 3), np.float32)}, "names differ"),
        ({**tensors(), "extra": np.zeros(1, np.float32)}, "names differ"),
        ({"w": np.zeros((2, 3), np.float32), "c": np.zeros(3, np.float32)}, "names differ"),
        ({"w": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}, "'w'"),
        ({"w": np.zeros((2, 3, 1), np.float32), "b": np.zeros(3, np.float32)}, "'w'"),
        ({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float64)}, "'b'"),
        ({"w": np.zeros((2, 3), np.float16), "b": np.zeros(3, np.float32)}, "'w'"),
    ],
    ids=["missing", "extra", "renamed", "transposed", "extra-dim", "float64", "float16"],
)
def test_check_offer_refuses_a_model_that_lies_about_its_fingerprint(
    tensors_: dict[str, np.ndarray], match: str
) -> None:
    ours = local()
    with pytest.raises(Refused, match=match) as info:
        check_offer(offer(ours, tensors_=tensors_), ours)
    assert info.value.reason == "incompatible"


def test_check_offer_refuses_another_fingerprint() -> None:
    ours = local()
    theirs = ModelOffer(b"\x01" * 32, 1, 1, None, None, tensors())
    with pytest.raises(Refused) as info:
        check_offer(theirs, ours)
    assert info.value.reason == "incompatible"
    assert "fingerprint" in info.value.detail


@pytest.mark.parametrize(
    ("theirs", "offence"),
    [(b"", False), (b"\x02" * 32, True)],
    ids=["no-digest-older-peer", "another-digest-a-lie"],
)
def test_check_offer_refuses_another_task_and_blames_only_a_liar(
    theirs: bytes, offence: bool
) -> None:
    t = tensors()
    ours = LocalModel.of(specs_of(t), 100, encoded_model_size(t), task=b"\x01" * 32)
    with pytest.raises(Refused) as info:
        check_offer(ModelOffer(ours.fingerprint, 1, 1, None, None, t, task=theirs), ours)
    assert info.value.reason == "incompatible"
    assert "task contract differs (ours 010101010101" in info.value.detail
    assert info.value.offence is offence


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_offer_refuses_non_finite_values(bad: float) -> None:
    ours = local()
    t = tensors(1.0)
    t["b"][1] = bad
    with pytest.raises(Refused) as info:
        check_offer(offer(ours, tensors_=t), ours)
    assert info.value.reason == "non-finite"
    assert "'b'" in info.value.detail
    assert isinstance(info.value, RemoteProtocolError)


def test_check_offer_accepts_big_endian_arrays_of_the_same_dtype() -> None:
    ours = local()
    t = {k: v.astype(v.dtype.newbyteorder(">")) for k, v in tensors(2.0).items()}
    check_offer(offer(ours, tensors_=t), ours)


# ---------------------------------------------------------------------------------- both sides


def test_a_whole_exchange_over_the_codec() -> None:
    limits = Limits()
    wire = lambda m: decode(encode(m), limits=limits)  # noqa: E731 - a one-line pipe
    a_local, b_local = local(samples=30), local(samples=10)
    a, b = InitiatorExchange(a_local), ResponderExchange(b_local, max_model_bytes=MAX_MODEL_BYTES)

    answer = b.receive_propose(wire(a.propose()), busy=False)
    assert a.receive(wire(answer)) is None
    a_offer = a.offer(ModelOffer(a_local.fingerprint, 30, 5, None, None, tensors(1.0)))
    b_offer = b.offer(ModelOffer(b_local.fingerprint, 10, 9, 0.9, 0.1, tensors(5.0)))
    merge_at_a = a.receive(wire(b_offer))
    merge_at_b = b.receive(wire(a_offer))

    assert merge_at_a is not None
    # equal mass both ways: 30 * 1/6 == 10 * 1/2 (merge_weight)
    assert (merge_at_a.alpha, merge_at_b.alpha) == (10 / 60, 0.5)
    assert merge_at_a.offer.tensors["w"].tolist() == tensors(5.0)["w"].tolist()
    assert merge_at_b.offer.samples == 30
    assert a.phase is b.phase is Phase.DONE


def test_an_offer_claiming_other_samples_than_its_proposal_is_refused() -> None:
    ex = responder()
    ex.receive_propose(propose(samples=300), busy=False)
    with pytest.raises(Refused) as info:
        ex.receive(offer(samples=301))
    assert info.value.reason == "inconsistent"


def test_offer_is_registered_once_and_only_after_accept() -> None:
    ex = InitiatorExchange(local())
    with pytest.raises(LocalProtocolError, match="cannot offer"):
        ex.offer(offer(samples=100))  # not accepted yet
    ex.receive(Accept())
    ex.offer(offer(samples=100))
    with pytest.raises(LocalProtocolError, match="already"):
        ex.offer(offer(samples=100))
    declined = responder()
    declined.receive_propose(propose(), busy=True)
    with pytest.raises(LocalProtocolError, match="cannot offer"):
        declined.offer(offer(samples=100))


@pytest.mark.parametrize("ratio", [4.0, 0.0])
def test_a_fresh_responder_adopts_a_far_older_model_and_the_initiator_keeps_its_own(
    ratio: float,
) -> None:
    limits = Limits()
    wire = lambda m: decode(encode(m), limits=limits)  # noqa: E731 - a one-line pipe
    old, new = local(samples=30), local(samples=10)
    a = InitiatorExchange(old, adopt_ratio=ratio)
    b = ResponderExchange(new, max_model_bytes=MAX_MODEL_BYTES, adopt_ratio=ratio)
    a.receive(wire(b.receive_propose(wire(a.propose()), busy=False)))
    a_offer = a.offer(ModelOffer(old.fingerprint, 30, 500, None, None, tensors(1.0), age=16e3))
    b_offer = b.offer(
        ModelOffer(new.fingerprint, 10, 20, None, None, tensors(5.0), age=640, fresh=True)
    )
    at_a, at_b = a.receive(wire(b_offer)), b.receive(wire(a_offer))
    assert at_a is not None
    if ratio:
        assert (at_a.kind, at_a.alpha) == (MergeKind.KEEP, 0.0)
        assert (at_b.kind, at_b.alpha) == (MergeKind.ADOPT, 1.0)
    else:  # adoption off: the usual mass-conserving average
        assert (at_a.kind, at_b.kind) == (MergeKind.AVERAGE, MergeKind.AVERAGE)
        assert (at_a.alpha, at_b.alpha) == (10 / 60, 0.5)


@pytest.mark.parametrize("enc", ["fp16", "bf16", "int8"])
def test_an_encoded_model_is_decoded_into_our_dtypes_before_it_is_merged(enc: str) -> None:
    ex = responder()
    ex.receive_propose(propose(samples=300), busy=False)
    ex.offer(offer(samples=100))
    values = {"w": np.full((2, 3), 0.75, np.float32), "b": np.full(3, -2.0, np.float32)}
    encoded = compression.encode(values, enc)
    assert encoded is not None
    sent = ModelOffer(
        local().fingerprint, 300, 7, None, None, encoded.tensors, enc=enc, scales=encoded.scales
    )
    merge = ex.receive(decode(encode(sent), limits=Limits()))
    assert merge.offer.enc is None and merge.offer.scales == ()
    for name, arr in merge.offer.tensors.items():
        assert arr.dtype == np.float32
        np.testing.assert_allclose(arr, values[name], rtol=0.01)


INT8_ZEROS = {"w": np.zeros((2, 3), np.int8), "b": np.zeros(3, np.int8)}
FP16_TRANSPOSED = {"w": np.zeros((3, 2), np.float16), "b": np.zeros(3, np.float16)}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"enc": "fp16"}, "incompatible"),  # float32 arrays claimed to be fp16
        ({"enc": "int8", "tensors": INT8_ZEROS}, "malformed"),  # no scales
        ({"scales": (1.0, 1.0)}, "malformed"),  # scales with an exact model
        ({"enc": "fp16", "tensors": FP16_TRANSPOSED}, "incompatible"),
    ],
    ids=["wrong-wire-dtype", "int8-without-scales", "scales-on-exact", "wrong-shape"],
)
def test_bad_encoded_models_are_refused(changes: dict[str, object], reason: str) -> None:
    ex = responder()
    ex.receive_propose(propose(samples=300), busy=False)
    ex.offer(offer(samples=100))
    base = offer(samples=300)
    bad = ModelOffer(
        base.fingerprint, 300, 7, None, None,
        changes.get("tensors", base.tensors),  # type: ignore[arg-type]
        enc=changes.get("enc"),  # type: ignore[arg-type]
        scales=changes.get("scales", ()),  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(Refused) as info:
        ex.receive(bad)
    assert info.value.reason == reason
