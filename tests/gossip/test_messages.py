"""The wire codec: every message round-trips, and hostile bytes raise ``DecodeError`` only."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossiplearn.errors import DecodeError
from gossiplearn.gossip.framing import frame_header
from gossiplearn.gossip.messages import (
    DECLINE_REASONS,
    PROTOCOL_VERSION,
    WIRE_DTYPES,
    Accept,
    Decline,
    Limits,
    Message,
    ModelOffer,
    PeerRecord,
    PeersReply,
    PeersRequest,
    Propose,
    TensorSpec,
    decode,
    encode,
    encoded_model_size,
    fingerprint,
    specs_of,
)

LIMITS = Limits()
# Hypothesis' per-example deadline trips on a cold first import; the codec is not timed here.
RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

U64 = st.integers(min_value=0, max_value=2**64 - 1)
SHORT_TEXT = st.text(min_size=1, max_size=40)


# ---------------------------------------------------------------------------------- strategies


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray:
    """A float16/32/64 array of any small shape (0-size dims and 0-d included), any bit pattern,
    either byte order, possibly non-contiguous."""
    wire = draw(st.sampled_from(sorted(WIRE_DTYPES)))
    byteorder = draw(st.sampled_from("<>"))
    dtype = WIRE_DTYPES[wire].newbyteorder(byteorder)
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    size = math.prod(shape) * dtype.itemsize
    raw = draw(st.binary(min_size=size, max_size=size))
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if arr.ndim >= 2 and draw(st.booleans()):
        arr = arr.T  # non-contiguous: the encoder must copy it out in C order
    return arr


tensor_maps = st.dictionaries(st.text(min_size=1, max_size=30), tensors(), max_size=5)
finite_or_none = st.none() | st.floats(allow_nan=False, allow_infinity=False)
peer_records = st.builds(
    PeerRecord,
    peer_id=SHORT_TEXT,
    addrs=st.lists(SHORT_TEXT, max_size=LIMITS.max_addrs).map(tuple),
)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Propose, fingerprint=st.binary(max_size=64), samples=U64, model_bytes=U64),
    st.just(Accept()),
    st.builds(
        Decline,
        reason=st.sampled_from(sorted(DECLINE_REASONS)),
        detail=st.text(max_size=100),
    ),
    st.builds(
        ModelOffer,
        fingerprint=st.binary(max_size=64),
        samples=U64,
        steps=U64,
        accuracy=finite_or_none,
        loss=finite_or_none,
        tensors=tensor_maps,
        age=st.floats(min_value=0.0, allow_infinity=False),
        fresh=st.booleans(),
    ),
    st.builds(PeersRequest, sender=peer_records),
    st.builds(PeersReply, peers=st.lists(peer_records, max_size=20).map(tuple)),
)


def assert_same_message(got: Message, want: Message) -> None:
    assert type(got) is type(want)
    if not isinstance(want, ModelOffer):
        assert got == want
        return
    assert isinstance(got, ModelOffer)
    assert (got.fingerprint, got.samples, got.steps, got.accuracy, got.loss) == (
        want.fingerprint,
        want.samples,
        want.steps,
        want.accuracy,
        want.loss,
    )
    assert (got.age, got.fresh) == (want.age, want.fresh)
    assert list(got.tensors) == list(want.tensors)  # order kept
    for name, arr in want.tensors.items():
        out = got.tensors[name]
        wire = WIRE_DTYPES[arr.dtype.name]  # same width, little-endian
        assert out.dtype == wire
        assert out.shape == arr.shape
        # Bit-exact, NaN payloads included.
        assert out.tobytes() == np.ascontiguousarray(arr, dtype=wire).tobytes()


# ---------------------------------------------------------------------------------- round trip


@RELAXED
@given(messages)
def test_every_message_round_trips(msg: Message) -> None:
    assert_same_message(decode(encode(msg), limits=LIMITS), msg)


@RELAXED
@given(tensor_maps)
def test_encoded_model_size_bounds_the_encoding(tensors_: dict[str, np.ndarray]) -> None:
    offer = ModelOffer(b"\x00" * 32, 2**64 - 1, 2**64 - 1, 0.5, 1.5, tensors_)
    assert len(encode(offer)) <= encoded_model_size(tensors_)


def test_model_offer_with_zero_size_and_scalar_tensors() -> None:
    offer = ModelOffer(
        b"fp",
        3,
        4,
        None,
        None,
        {
            "empty": np.zeros((0, 5), np.float32),
            "scalar": np.array(2.5, np.float64),
            "half": np.array([1.0, -0.0, np.inf], np.float16),
        },
    )
    got = decode(encode(offer), limits=LIMITS)
    assert_same_message(got, offer)
    assert isinstance(got, ModelOffer)
    assert got.tensors["empty"].shape == (0, 5)
    assert got.tensors["scalar"].shape == ()


def test_integer_tensors_cannot_be_encoded() -> None:
    offer = ModelOffer(b"fp", 1, 1, None, None, {"w": np.zeros(3, np.int32)})
    with pytest.raises(TypeError, match="cannot be exchanged"):
        encode(offer)
    with pytest.raises(TypeError):
        specs_of({"w": np.zeros(3, np.complex64)})


def test_every_proper_prefix_of_a_frame_is_rejected() -> None:
    offer = ModelOffer(b"fp", 3, 4, 0.9, 0.1, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    frame = encode(offer)
    for cut in range(len(frame)):
        with pytest.raises(DecodeError):
            decode(frame[:cut], limits=LIMITS)


# ---------------------------------------------------------------------------------- fuzzing


def _decode_only_decode_error(frame: bytes) -> None:
    try:
        msg = decode(frame, limits=LIMITS)
    except DecodeError:
        return
    # Whatever decodes is a well-formed message: encoding it again gives the same message.
    assert_same_message(decode(encode(msg), limits=LIMITS), msg)


@RELAXED
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_decode_error(frame: bytes) -> None:
    _decode_only_decode_error(frame)


@RELAXED
@given(messages, st.data())
def test_corrupted_frames_raise_only_decode_error(msg: Message, data: st.DataObject) -> None:
    """Valid frames with a few bytes overwritten, cut or inserted: reaches the deep checks."""
    frame = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(frame)))
        edit = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if edit == "insert" or pos == len(frame):
            frame.insert(pos, byte)
        elif edit == "set":
            frame[pos] = byte
        else:
            del frame[pos]
    _decode_only_decode_error(bytes(frame))


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_decode_error_long(frame: bytes) -> None:
    _decode_only_decode_error(frame)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=24)
)
msgpack_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=6) | st.integers(-3, 3), inner, max_size=5)
    ),
    max_leaves=25,
)
# Like msgpack_values, but maps have string keys, so the decoder looks inside them.
str_keyed_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten, so that generated messages often get past the early checks."""
    return st.integers(0, 9).flatmap(lambda i: good if i else bad)


counts = mostly(U64, st.integers(-5, -1) | st.booleans() | st.floats(0, 10))
peer_like = mostly(
    st.tuples(
        st.sampled_from(["p", "12D3KooW"]) | st.text(max_size=8),
        st.lists(st.sampled_from(["", "/ip4/1.2.3.4/tcp/1"]) | st.text(max_size=8), max_size=3),
    ).map(list),
    str_keyed_values,
)


@st.composite
def tensor_items(draw: st.DrawFn) -> Any:
    """Tensor entries that are often almost valid: right arity, plausible pieces."""
    name = draw(mostly(st.sampled_from(["w", "b", "c", ""]), str_keyed_values))
    wire = draw(mostly(st.sampled_from([*WIRE_DTYPES, "int8"]), str_keyed_values))
    shape = draw(
        mostly(
            st.lists(
                mostly(st.integers(0, 4), st.sampled_from([-1, 2**32, 2**63, 2**64 - 1])),
                max_size=9,
            ),
            str_keyed_values,
        )
    )
    data = draw(st.binary(max_size=64) | str_keyed_values)
    fits = isinstance(shape, list) and all(type(d) is int and 0 <= d <= 4 for d in shape)
    if fits and isinstance(wire, str) and wire in WIRE_DTYPES and draw(st.integers(0, 9)):
        # make the data fit, so that the checks after the size check are reached
        data = b"\x00" * (math.prod(shape) * WIRE_DTYPES[wire].itemsize)
    item = [name, wire, shape, data]
    return draw(mostly(st.just(item), st.integers(0, 3).map(lambda k: item[:k])))


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "fp": st.binary(max_size=40),
    "n": counts,
    "mb": counts,
    "steps": counts,
    "reason": mostly(st.sampled_from(sorted(DECLINE_REASONS)), st.text(max_size=8)),
    "detail": st.text(max_size=20),
    "acc": st.none() | st.floats() | st.integers(-(2**63), 2**64 - 1),
    "loss": st.none() | st.floats() | st.integers(-(2**63), 2**64 - 1),
    "age": st.none() | st.floats() | st.integers(-(2**63), 2**64 - 1) | st.booleans(),
    "enc": st.none() | st.sampled_from(["fp16", "bf16", "int8", "x"]) | st.binary(max_size=4),
    "scales": st.none() | st.lists(st.floats() | st.integers(-3, 3), max_size=4),
    "fresh": st.booleans() | st.none() | st.integers(0, 1),
    "sender": peer_like,
    "peers": st.lists(peer_like, max_size=4),
    "tensors": st.lists(tensor_items(), max_size=4),
}
MESSAGE_TYPES = ["propose", "accept", "decline", "model", "peers?", "peers"]


@st.composite
def near_messages(draw: st.DrawFn) -> dict[str, Any]:
    """Maps shaped like messages, each field plausible, junk or missing."""
    body: dict[str, Any] = {
        "v": draw(mostly(st.just(PROTOCOL_VERSION), st.sampled_from([0, 2, "1", None, True]))),
        "t": draw(mostly(st.sampled_from(MESSAGE_TYPES), st.just("x") | str_keyed_values)),
    }
    for key, plausible in FIELDS.items():
        body[key] = draw(plausible)
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=2)):
        body.pop(key, None)
    for key in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=2)):
        body[key] = draw(str_keyed_values)
    return body


@settings(RELAXED, max_examples=300)
@given(msgpack_values | near_messages())
def test_arbitrary_msgpack_values_raise_only_decode_error(value: Any) -> None:
    _decode_only_decode_error(msgpack.packb(value, use_bin_type=True))


# ---------------------------------------------------------------------------------- hostile cases


def _offer_body(**changes: Any) -> bytes:
    """A valid ModelOffer body with ``changes`` applied (a value of ... deletes the key)."""
    offer = ModelOffer(b"fp", 3, 4, 0.5, 0.25, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    body = msgpack.unpackb(encode(offer), raw=False)
    for key, value in changes.items():
        if value is ...:
            del body[key]
        else:
            body[key] = value
    return msgpack.packb(body, use_bin_type=True)


def _tensor(shape: list[Any], data: Any, wire: Any = "float32", name: Any = "w") -> list[Any]:
    return [name, wire, shape, data]


def test_the_unmodified_offer_body_decodes() -> None:
    msg = decode(_offer_body(), limits=LIMITS)
    assert isinstance(msg, ModelOffer)
    assert msg.tensors["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


HOSTILE = {
    "data shorter than shape": {"tensors": [_tensor([2, 3], b"\x00" * 20)]},
    "data longer than shape": {"tensors": [_tensor([2, 3], b"\x00" * 28)]},
    "data sized for another dtype": {"tensors": [_tensor([2, 3], b"\x00" * 48)]},
    "huge declared shape": {"tensors": [_tensor([2**32, 2**32], b"")]},
    "one huge dim": {"tensors": [_tensor([2**64 - 1], b"")]},
    "shape just over the frame limit": {"tensors": [_tensor([LIMITS.max_frame + 1], b"")]},
    "negative dim": {"tensors": [_tensor([-1, 3], b"")]},
    "bool dim": {"tensors": [_tensor([True, 3], b"\x00" * 12)]},
    "float dim": {"tensors": [_tensor([2.0, 3], b"\x00" * 24)]},
    "too many dims": {"tensors": [_tensor([1] * (LIMITS.max_ndim + 1), b"\x00" * 4)]},
    "shape not a list": {"tensors": [_tensor(6, b"\x00" * 24)]},
    "unknown dtype": {"tensors": [_tensor([2], b"\x00" * 8, wire="int32")]},
    "dtype not a string": {"tensors": [_tensor([2], b"\x00" * 8, wire=4)]},
    "data as text": {"tensors": [_tensor([1], "abcd")]},
    "empty tensor name": {"tensors": [_tensor([1], b"\x00" * 4, name="")]},
    "tensor name too long": {"tensors": [_tensor([1], b"\x00" * 4, name="x" * 257)]},
    "tensor not a list": {"tensors": [{"name": "w"}]},
    "tensor of 3 fields": {"tensors": [["w", "float32", [1]]]},
    "tensors not a list": {"tensors": {"w": 1}},
    "duplicate tensor name": {
        "tensors": [_tensor([1], b"\x00" * 4), _tensor([2], b"\x00" * 8)],
    },
    "wrong version": {"v": PROTOCOL_VERSION + 1},
    "no version": {"v": ...},
    "version as text": {"v": str(PROTOCOL_VERSION)},
    "version as bool": {"v": True},
    "version as float": {"v": float(PROTOCOL_VERSION)},
    "unknown type": {"t": "gradient"},
    "no type": {"t": ...},
    "NaN accuracy": {"acc": math.nan},
    "infinite loss": {"loss": -math.inf},
    "accuracy as text": {"acc": "0.9"},
    "accuracy as bool": {"acc": True},
    "negative samples": {"n": -1},
    "bool samples": {"n": True},
    "float steps": {"steps": 1.0},
    "missing fingerprint": {"fp": ...},
    "fingerprint as text": {"fp": "abc"},
    "negative age": {"age": -1.0},
    "NaN age": {"age": math.nan},
    "infinite age": {"age": math.inf},
    "age as text": {"age": "old"},
    "age as bool": {"age": True},
    "fresh as int": {"fresh": 1},
    "fresh as nil": {"fresh": None},
    "unknown encoding": {"enc": "zstd"},
    "encoding as bytes": {"enc": b"fp16"},
    "scales not a list": {"scales": 1.0},
    "negative scale": {"scales": [-1.0]},
    "NaN scale": {"scales": [math.nan]},
    "infinite scale": {"scales": [math.inf]},
    "bool scale": {"scales": [True]},
}


@pytest.mark.parametrize("changes", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_offer_is_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(DecodeError):
        decode(_offer_body(**changes), limits=LIMITS)


def test_age_and_fresh_are_optional_and_omitted_at_their_defaults() -> None:
    plain = decode(_offer_body(), limits=LIMITS)
    assert isinstance(plain, ModelOffer)
    assert (plain.age, plain.fresh) == (0.0, False)
    assert not {"age", "fresh"} & set(msgpack.unpackb(_offer_body(), raw=False))
    tagged = decode(_offer_body(age=1280, fresh=True), limits=LIMITS)  # an integer age is fine
    assert isinstance(tagged, ModelOffer)
    assert (tagged.age, tagged.fresh) == (1280.0, True)


def test_duplicate_tensor_name_is_named() -> None:
    frame = _offer_body(tensors=[_tensor([1], b"\x00" * 4), _tensor([1], b"\x00" * 4)])
    with pytest.raises(DecodeError, match="twice"):
        decode(frame, limits=LIMITS)


def test_data_length_mismatch_names_the_expected_size() -> None:
    with pytest.raises(DecodeError, match="expected 24"):
        decode(_offer_body(tensors=[_tensor([2, 3], b"\x00" * 20)]), limits=LIMITS)


def test_zero_size_dim_accepts_empty_data_only() -> None:
    ok = decode(_offer_body(tensors=[_tensor([0, 7], b"")]), limits=LIMITS)
    assert isinstance(ok, ModelOffer)
    assert ok.tensors["w"].shape == (0, 7)
    with pytest.raises(DecodeError):
        decode(_offer_body(tensors=[_tensor([0, 7], b"\x00" * 4)]), limits=LIMITS)


def test_frame_over_max_frame_is_rejected_before_parsing() -> None:
    offer = ModelOffer(b"fp", 1, 1, None, None, {"w": np.zeros(2000, np.float32)})
    frame = encode(offer)
    assert isinstance(decode(frame, limits=Limits(max_frame=len(frame))), ModelOffer)
    with pytest.raises(DecodeError, match="exceeds"):
        decode(frame, limits=Limits(max_frame=len(frame) - 1))
    # Even bytes that are not msgpack at all are refused on size alone.
    with pytest.raises(DecodeError, match="exceeds"):
        decode(b"\xc1" * 101, limits=Limits(max_frame=100))


def test_count_limits_are_enforced() -> None:
    three = [_tensor([1], b"\x00" * 4, name=n) for n in "abc"]
    assert isinstance(decode(_offer_body(tensors=three), limits=Limits(max_tensors=3)), ModelOffer)
    with pytest.raises(DecodeError):
        decode(_offer_body(tensors=three), limits=Limits(max_tensors=2))

    peers = PeersReply(tuple(PeerRecord(f"p{i}", ("/ip4/1.2.3.4/tcp/1",)) for i in range(5)))
    assert decode(encode(peers), limits=Limits(max_peers=5)) == peers
    with pytest.raises(DecodeError):
        decode(encode(peers), limits=Limits(max_peers=4))

    many_addrs = PeersRequest(PeerRecord("p", tuple(f"/a/{i}" for i in range(4))))
    with pytest.raises(DecodeError):
        decode(encode(many_addrs), limits=Limits(max_addrs=3))


@pytest.mark.parametrize(
    "msg",
    [
        Decline("tired"),  # not one of DECLINE_REASONS
        Decline("busy", detail="x" * 11),  # detail longer than max_text below
        PeersRequest(PeerRecord("", ())),
        PeersRequest(PeerRecord("p", ("",))),
    ],
    ids=["unknown reason", "long detail", "empty peer id", "empty address"],
)
def test_hostile_small_messages_are_rejected(msg: Message) -> None:
    with pytest.raises(DecodeError):
        decode(encode(msg), limits=Limits(max_text=10))


@pytest.mark.parametrize(
    "value",
    [
        [1, "propose"],
        "propose",
        7,
        None,
        {1: 2},
        {"v": 1, "t": "accept", **{str(i): i for i in range(20)}},
    ],
    ids=["list", "string", "int", "nil", "int key", "too many keys"],
)
def test_non_message_values_are_rejected(value: Any) -> None:
    with pytest.raises(DecodeError):
        decode(msgpack.packb(value, use_bin_type=True), limits=LIMITS)


def test_trailing_bytes_after_the_message_are_rejected() -> None:
    with pytest.raises(DecodeError):
        decode(encode(Accept()) + b"\x00", limits=LIMITS)


# ---------------------------------------------------------------------------------- fingerprint

specs_lists = st.dictionaries(
    st.sampled_from(["w", "b", "layer.0.weight", "é"]),
    st.tuples(st.sampled_from(sorted(WIRE_DTYPES)), st.lists(st.integers(0, 3), max_size=3)),
    max_size=4,
).map(lambda d: [TensorSpec(name, wire, tuple(shape)) for name, (wire, shape) in d.items()])


@RELAXED
@given(specs_lists, specs_lists, st.randoms(use_true_random=False))
def test_fingerprint_equal_iff_specs_equal(
    a: list[TensorSpec], b: list[TensorSpec], rnd: Any
) -> None:
    shuffled = list(a)
    rnd.shuffle(shuffled)
    assert fingerprint(shuffled) == fingerprint(a)
    assert (fingerprint(a) == fingerprint(b)) == (set(a) == set(b))


@pytest.mark.parametrize(
    "other",
    [
        [TensorSpec("w", "float32", (3, 2))],  # transposed shape
        [TensorSpec("w", "float64", (2, 3))],  # dtype
        [TensorSpec("v", "float32", (2, 3))],  # name
        [TensorSpec("w", "float32", (2, 3, 1))],  # extra dim
        [TensorSpec("w", "float32", (2, 3)), TensorSpec("b", "float32", ())],  # extra tensor
        [],
    ],
)
def test_fingerprint_sees_every_difference(other: list[TensorSpec]) -> None:
    assert fingerprint([TensorSpec("w", "float32", (2, 3))]) != fingerprint(other)


def test_specs_of_uses_wire_names_for_either_byte_order() -> None:
    tensors_ = {"w": np.zeros((2, 3), ">f4"), "b": np.zeros(3, "<f2")}
    assert specs_of(tensors_) == [
        TensorSpec("w", "float32", (2, 3)),
        TensorSpec("b", "float16", (3,)),
    ]
    assert fingerprint(specs_of(tensors_)) == fingerprint(
        [TensorSpec("b", "float16", (3,)), TensorSpec("w", "float32", (2, 3))]
    )


def test_a_dimension_above_the_frame_limit_is_refused_whatever_its_position() -> None:
    # zero-size tensors decode, but no single dimension may exceed the frame limit: the
    # decision must not depend on the order of the dims
    big = LIMITS.max_frame + 1
    for shape in [(0, big), (big, 0)]:
        offer = ModelOffer(b"fp", 1, 1, None, None, {"w": np.zeros(shape, np.float32)})
        with pytest.raises(DecodeError, match="too large"):
            decode(encode(offer), limits=LIMITS)
    offer = ModelOffer(b"fp", 1, 1, None, None, {"w": np.zeros((0, 5), np.float32)})
    got = decode(encode(offer), limits=LIMITS)
    assert isinstance(got, ModelOffer) and got.tensors["w"].shape == (0, 5)


# ---------------------------------------------------------------------------------- spec examples
# The worked examples of docs/protocol.md section 12: another implementation is built from them.

MLP_SPECS = [
    TensorSpec("0.weight", "float32", (64, 64)),
    TensorSpec("0.bias", "float32", (64,)),
    TensorSpec("2.weight", "float32", (10, 64)),
    TensorSpec("2.bias", "float32", (10,)),
]
MLP_FP = bytes.fromhex("dc1cd007ad2525616dcfe9761705f2300e15e80c995d9eb65d3df81d93571b60")


def test_spec_12_1_fingerprint_of_the_digits_mlp() -> None:
    assert fingerprint(MLP_SPECS) == MLP_FP
    tensors_ = {s.name: np.zeros(s.shape, np.float32) for s in MLP_SPECS}
    assert fingerprint(specs_of(tensors_)) == MLP_FP


def test_spec_12_2_propose_frame() -> None:
    tensors_ = {s.name: np.zeros(s.shape, np.float32) for s in MLP_SPECS}
    mb = encoded_model_size(tensors_)
    assert mb == 19834
    body = encode(Propose(MLP_FP, 1438, mb))
    assert frame_header(len(body)) + body == bytes.fromhex(
        "0000003e85a17601a174a770726f706f7365a26670c420dc1cd007ad2525616dcfe9761705f2300e15e8"
        "0c995d9eb65d3df81d93571b60a16ecd059ea26d62cd4d7a"
    )


def test_spec_12_3_accept_and_decline() -> None:
    assert encode(Accept()) == bytes.fromhex("82a17601a174a6616363657074")
    assert encode(Decline("busy")) == bytes.fromhex(
        "84a17601a174a76465636c696e65a6726561736f6ea462757379a664657461696ca0"
    )


def test_spec_12_4_model_offer() -> None:
    b = np.array([1.0, -0.5], np.float32)
    fp = fingerprint(specs_of({"b": b}))
    assert fp == bytes.fromhex("e2ba62f19995bd6a2f42752dd06518197e76dfd43ce77cc34ddd51075a3101d9")
    body = encode(ModelOffer(fp, 3, 0, None, None, {"b": b}))
    assert frame_header(len(body)) + body == (
        bytes.fromhex("0000006688a17601a174a56d6f64656ca26670c420")
        + fp
        + bytes.fromhex(
            "a16e03a5737465707300a3616363c0a46c6f7373c0a774656e736f72739194a162"
            "a7666c6f617433329102c4080000803f000000bf"
        )
    )
    with_metrics = encode(ModelOffer(fp, 3, 7, 0.75, None, {"b": b}))
    assert bytes.fromhex("a5737465707307") in with_metrics
    assert bytes.fromhex("a3616363cb3fe8000000000000") in with_metrics
    fresh = encode(ModelOffer(fp, 3, 0, None, None, {"b": b}, age=1280, fresh=True))
    assert fresh[0] == 0x8A
    assert fresh.endswith(body[-20:] + bytes.fromhex("a3616765cb4094000000000000a56672657368c3"))
