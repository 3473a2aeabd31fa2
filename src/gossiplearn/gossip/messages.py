"""Wire messages and their msgpack codec (docs/protocol.md is the normative description).

Invariants:
- ``decode`` raises ``DecodeError`` and nothing else, whatever the bytes.
- Every size is checked against ``Limits`` before anything proportional to it is built: the
  msgpack reader is bounded by the limits, and each tensor's byte length must equal
  ``prod(shape) * itemsize`` of its declared dtype before an array view is made.
- Nothing here is pickled, evaluated or imported from the network.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np

from gossiplearn.errors import DecodeError

T = TypeVar("T")

PROTOCOL_VERSION = 1

# Wire dtype names and the little-endian numpy types they map to. Only floating-point tensors
# are exchanged: they are the ones that can be averaged.
WIRE_DTYPES: Mapping[str, np.dtype[Any]] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
}
# Only in an encoded offer (``ModelOffer.enc``; ``gossip.compression``): bfloat16 values travel
# as their 16 bits (decoded as uint16 here), int8 as quantised values with per-offer scales.
ENCODED_DTYPES: Mapping[str, np.dtype[Any]] = {
    "bfloat16": np.dtype("<u2"),
    "int8": np.dtype("i1"),
}
ENCODINGS = ("fp16", "bf16", "int8")
ENCODING_WIRE = {"fp16": "float16", "bf16": "bfloat16", "int8": "int8"}  # each one's wire dtype


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied while decoding one frame. All sizes in bytes unless stated."""

    max_frame: int = 1 << 20
    max_tensors: int = 4096
    max_ndim: int = 8
    max_name: int = 256
    max_peers: int = 256
    max_addrs: int = 16
    max_text: int = 1024


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """The identity of one exchanged tensor: what a fingerprint is made of."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def fingerprint(specs: Iterable[TensorSpec]) -> bytes:
    """SHA-256 over the sorted (name, dtype, shape) triples: equal iff the models are compatible."""
    canon = sorted((s.name, s.dtype, list(s.shape)) for s in specs)
    return hashlib.sha256(msgpack.packb(canon, use_bin_type=True)).digest()


def short_digest(digest: bytes) -> str:
    """The first 12 hex digits of a digest, as logs and status show it (``none`` if empty)."""
    return digest.hex()[:12] if digest else "none"


MAX_DIGEST = 64  # bytes of a task digest on the wire (SHA-256 uses 32)
STATS_NAME = "stats"  # the statistics vector travels as a float64 tensor of this name


def specs_of(tensors: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    """Tensor specs of a name → array mapping (dtype by wire name)."""
    out = []
    for name, arr in tensors.items():
        out.append(TensorSpec(name, _wire_name(arr.dtype), tuple(int(d) for d in arr.shape)))
    return out


@dataclass(frozen=True, slots=True)
class Propose:
    """Initiator → responder: "may we exchange?" Small, so a busy peer declines cheaply.
    ``task``: the digest of the initiator's task identity (its task contract); optional on the
    wire, and a peer refuses a proposal whose digest differs from its own."""

    fingerprint: bytes
    samples: int
    model_bytes: int
    task: bytes = b""


@dataclass(frozen=True, slots=True)
class Accept:
    """Responder → initiator: the exchange goes ahead; both now send a ``ModelOffer``."""


@dataclass(frozen=True, slots=True)
class Decline:
    """Responder → initiator: no exchange now. ``reason`` is one of ``DECLINE_REASONS``;
    ``task`` is the responder's task digest (optional; sent with ``incompatible``)."""

    reason: str
    detail: str = ""
    task: bytes = b""


DECLINE_REASONS = frozenset({"busy", "incompatible", "closing"})


@dataclass(frozen=True, slots=True)
class ModelOffer:
    """A peer's parameters, as sent in one exchange."""

    fingerprint: bytes
    samples: int  # weight of this model in the average: the sender's training samples
    steps: int  # training steps the sender has taken (informational)
    accuracy: float | None  # sender's latest local validation accuracy, if any
    loss: float | None
    tensors: Mapping[str, np.ndarray] = field(repr=False)
    # The model's age: examples of SGD behind it, its own and what it merged (``gossip.merge``
    # averages ages like parameters). Optional on the wire (0 when absent).
    age: float = 0.0
    fresh: bool = False  # the sender has never completed an exchange (a late joiner, say)
    # A lossy encoding of ``tensors`` (``gossip.compression``), None when exact; int8 carries
    # one scale per tensor, in ``tensors`` order. Optional on the wire.
    enc: str | None = None
    scales: tuple[float, ...] = ()
    task: bytes = b""  # the sender's task digest (see ``Propose``); optional on the wire
    # The sender's consortium statistics (``gossip.aggregate``): sums as float64, for tasks
    # whose preprocessing uses them. Optional on the wire.
    stats: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer's ID and the multiaddrs (as text) it can be dialled on."""

    peer_id: str
    addrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PeersRequest:
    """Ask a peer for the peers it knows; ``sender`` tells it how to reach us."""

    sender: PeerRecord


@dataclass(frozen=True, slots=True)
class PeersReply:
    """The peers a peer knows (its own record included)."""

    peers: tuple[PeerRecord, ...]


Message = Propose | Accept | Decline | ModelOffer | PeersRequest | PeersReply


# ---------------------------------------------------------------------------------- encoding


def encode(msg: Message) -> bytes:
    """Serialise one message to a msgpack body (without the length prefix)."""
    body: dict[str, Any] = {"v": PROTOCOL_VERSION}
    match msg:
        case Propose():
            body |= {"t": "propose", "fp": msg.fingerprint, "n": msg.samples, "mb": msg.model_bytes}
            if msg.task:
                body["task"] = msg.task
        case Accept():
            body |= {"t": "accept"}
        case Decline():
            body |= {"t": "decline", "reason": msg.reason, "detail": msg.detail}
            if msg.task:
                body["task"] = msg.task
        case ModelOffer():
            body |= {
                "t": "model",
                "fp": msg.fingerprint,
                "n": msg.samples,
                "steps": msg.steps,
                "acc": msg.accuracy,
                "loss": msg.loss,
                "tensors": [
                    encode_tensor(k, v, wire=ENCODING_WIRE[msg.enc] if msg.enc else None)
                    for k, v in msg.tensors.items()
                ],
            }
            # optional, omitted at their defaults (so frames without them stay byte-identical)
            if msg.age:
                body["age"] = float(msg.age)
            if msg.fresh:
                body["fresh"] = True
            if msg.enc is not None:
                body["enc"] = msg.enc
            if msg.scales:
                body["scales"] = [float(x) for x in msg.scales]
            if msg.task:
                body["task"] = msg.task
            if msg.stats is not None:
                body["stats"] = encode_tensor(STATS_NAME, np.asarray(msg.stats, dtype="<f8"))
        case PeersRequest():
            body |= {"t": "peers?", "sender": _encode_peer(msg.sender)}
        case PeersReply():
            body |= {"t": "peers", "peers": [_encode_peer(p) for p in msg.peers]}
        case _:  # pragma: no cover - exhaustive over Message
            raise TypeError(f"not a message: {msg!r}")
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _wire_name(dtype: np.dtype[Any]) -> str:
    for name, dt in WIRE_DTYPES.items():
        if np.dtype(dtype).newbyteorder("<") == dt and dtype.kind == "f":
            return name
    raise TypeError(f"dtype {dtype} cannot be exchanged (only {', '.join(WIRE_DTYPES)})")


def encode_tensor(name: str, arr: np.ndarray, wire: str | None = None) -> list[Any]:
    """``[name, wire dtype, shape, little-endian bytes]``: a tensor as messages carry it.
    ``wire`` names the wire dtype of an encoded array (``ENCODING_WIRE``) explicitly."""
    if wire is None:
        wire = _wire_name(arr.dtype)
    dtype = WIRE_DTYPES[wire] if wire in WIRE_DTYPES else ENCODED_DTYPES[wire]
    data = np.ascontiguousarray(arr, dtype=dtype).tobytes()
    return [name, wire, [int(d) for d in arr.shape], data]


def _encode_peer(p: PeerRecord) -> list[Any]:
    return [p.peer_id, list(p.addrs)]


def encoded_model_size(tensors: Mapping[str, np.ndarray]) -> int:
    """An upper bound on the encoded size of a ``ModelOffer`` carrying ``tensors``, in bytes."""
    overhead = 256 + sum(64 + len(k.encode()) + 9 * arr.ndim for k, arr in tensors.items())
    return overhead + sum(int(arr.nbytes) for arr in tensors.values())


# ---------------------------------------------------------------------------------- decoding


def decode(frame: bytes, *, limits: Limits) -> Message:
    """Parse one frame body.

    Raises ``DecodeError``, and only ``DecodeError``, on anything invalid.
    """
    return decode_frame(
        frame,
        max_frame=limits.max_frame,
        max_str=max(limits.max_text, limits.max_name),
        max_array=max(limits.max_tensors, limits.max_peers, limits.max_addrs, 4),
        parse=lambda body: _decode_body(body, limits),
    )


def decode_frame(
    frame: bytes, *, max_frame: int, max_str: int, max_array: int, parse: Callable[[Any], T]
) -> T:
    """The envelope of every codec of ours: ``frame`` within ``max_frame`` bytes, msgpack with
    bounded containers (no ext types, maps of at most 16 keys), then ``parse`` of the map.
    Raises ``DecodeError``, and only ``DecodeError``, on anything invalid."""
    if len(frame) > max_frame:
        raise DecodeError(f"frame of {len(frame)} bytes exceeds the limit of {max_frame}")
    try:
        body = msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_frame,
            max_str_len=max_str,
            max_array_len=max_array,
            max_map_len=16,
            max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types; all mean "invalid"
        raise DecodeError(f"not a msgpack message: {type(exc).__name__}: {exc}") from None
    try:
        return parse(body)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - defence in depth: nothing but DecodeError leaves
        raise DecodeError(f"malformed message: {type(exc).__name__}: {exc}") from None


def check_version(body: Any) -> dict[str, Any]:
    """``body`` as a message map of our protocol version; raises ``DecodeError``."""
    if not isinstance(body, dict):
        raise DecodeError("message is not a map")
    version = body.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported protocol version {version!r} (we speak {PROTOCOL_VERSION})")
    return body


def _decode_body(body: Any, limits: Limits) -> Message:
    body = check_version(body)
    kind = body.get("t")
    if kind == "propose":
        return Propose(
            fingerprint=_get(body, "fp", bytes),
            samples=_count(body, "n"),
            model_bytes=_count(body, "mb"),
            task=_digest(body),
        )
    if kind == "accept":
        return Accept()
    if kind == "decline":
        reason = _get(body, "reason", str)
        if reason not in DECLINE_REASONS:
            raise DecodeError(f"unknown decline reason {reason!r}")
        return Decline(reason=reason, detail=_text(body, "detail", limits), task=_digest(body))
    if kind == "model":
        raw = _get(body, "tensors", list)
        if len(raw) > limits.max_tensors:
            raise DecodeError(f"{len(raw)} tensors exceed the limit of {limits.max_tensors}")
        tensors: dict[str, np.ndarray] = {}
        for item in raw:
            name, arr = decode_tensor(item, limits)
            if name in tensors:
                raise DecodeError(f"tensor {name!r} appears twice")
            tensors[name] = arr
        return ModelOffer(
            fingerprint=_get(body, "fp", bytes),
            samples=_count(body, "n"),
            steps=_count(body, "steps"),
            accuracy=_opt_float(body, "acc"),
            loss=_opt_float(body, "loss"),
            tensors=tensors,
            age=_age(body),
            fresh=_opt_bool(body, "fresh"),
            enc=_encoding(body),
            scales=_scales(body, limits),
            task=_digest(body),
            stats=_stats(body, limits),
        )
    if kind == "peers?":
        return PeersRequest(sender=_decode_peer(body.get("sender"), limits))
    if kind == "peers":
        raw_peers = _get(body, "peers", list)
        if len(raw_peers) > limits.max_peers:
            raise DecodeError(f"{len(raw_peers)} peers exceed the limit of {limits.max_peers}")
        return PeersReply(peers=tuple(_decode_peer(p, limits) for p in raw_peers))
    raise DecodeError(f"unknown message type {kind!r}")


def _get(body: dict[str, Any], key: str, typ: type) -> Any:
    value = body.get(key)
    if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
        raise DecodeError(f"field {key!r} must be {typ.__name__}, got {type(value).__name__}")
    return value


def _count(body: dict[str, Any], key: str) -> int:
    value = _get(body, key, int)
    if value < 0:
        raise DecodeError(f"field {key!r} must not be negative")
    return int(value)


def _text(body: dict[str, Any], key: str, limits: Limits) -> str:
    value = _get(body, key, str)
    if len(value) > limits.max_text:
        raise DecodeError(f"field {key!r} longer than {limits.max_text} characters")
    return str(value)


def _digest(body: dict[str, Any]) -> bytes:
    value = body.get("task", b"")
    if not isinstance(value, bytes) or len(value) > MAX_DIGEST:
        raise DecodeError(f"field 'task' must be bytes of at most {MAX_DIGEST}")
    return value


def _stats(body: dict[str, Any], limits: Limits) -> np.ndarray | None:
    raw = body.get("stats")
    if raw is None:
        return None
    name, arr = decode_tensor(raw, limits)
    if name != STATS_NAME or arr.dtype != WIRE_DTYPES["float64"] or arr.ndim != 1:
        raise DecodeError("field 'stats' must be a 1-d float64 tensor named 'stats'")
    return arr


def _encoding(body: dict[str, Any]) -> str | None:
    value = body.get("enc")
    if value is None:
        return None
    if not isinstance(value, str) or value not in ENCODINGS:
        raise DecodeError(f"unknown model encoding {value!r}")
    return value


def _scales(body: dict[str, Any], limits: Limits) -> tuple[float, ...]:
    value = body.get("scales")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > limits.max_tensors:
        raise DecodeError("field 'scales' must be a list, one number per tensor")
    out = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float) or not 0 <= x < math.inf:
            raise DecodeError(f"a scale must be a finite number >= 0, got {x!r}")
        out.append(float(x))
    return tuple(out)


def _age(body: dict[str, Any]) -> float:
    value = _opt_float(body, "age")
    if value is None:
        return 0.0
    if value < 0:
        raise DecodeError("field 'age' must not be negative")
    return value


def _opt_bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise DecodeError(f"field {key!r} must be true or false")
    return value


def _opt_float(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DecodeError(f"field {key!r} must be a number or nil")
    value = float(value)
    if not math.isfinite(value):
        raise DecodeError(f"field {key!r} must be finite")
    return value


def decode_tensor(item: Any, limits: Limits) -> tuple[str, np.ndarray]:
    """Inverse of ``encode_tensor``; sizes checked before the view is made. Raises
    ``DecodeError``. The array is a read-only view of ``item``'s bytes."""
    if not isinstance(item, list) or len(item) != 4:
        raise DecodeError("a tensor must be [name, dtype, shape, data]")
    name, wire, shape, data = item
    if not isinstance(name, str) or not 0 < len(name) <= limits.max_name:
        raise DecodeError("tensor name must be a non-empty string within the length limit")
    if not isinstance(wire, str) or not (wire in WIRE_DTYPES or wire in ENCODED_DTYPES):
        raise DecodeError(f"tensor {name!r}: unsupported dtype {wire!r}")
    if not isinstance(shape, list) or len(shape) > limits.max_ndim:
        raise DecodeError(
            f"tensor {name!r}: shape must be a list of at most {limits.max_ndim} dims"
        )
    count = 1
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise DecodeError(f"tensor {name!r}: bad dimension {dim!r}")
        if dim > limits.max_frame:  # keeps the product below (max_frame ** max_ndim)
            raise DecodeError(f"tensor {name!r}: dimension {dim} too large")
        count *= dim
    if count > limits.max_frame:
        raise DecodeError(f"tensor {name!r}: shape {shape} too large")
    if not isinstance(data, bytes):
        raise DecodeError(f"tensor {name!r}: data must be bytes")
    dtype = WIRE_DTYPES[wire] if wire in WIRE_DTYPES else ENCODED_DTYPES[wire]
    if len(data) != count * dtype.itemsize:
        raise DecodeError(
            f"tensor {name!r}: {len(data)} bytes of data for shape {shape} of {wire} "
            f"(expected {count * dtype.itemsize})"
        )
    return name, np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_peer(item: Any, limits: Limits) -> PeerRecord:
    if not isinstance(item, list) or len(item) != 2:
        raise DecodeError("a peer record must be [peer_id, addrs]")
    peer_id, addrs = item
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= limits.max_name:
        raise DecodeError("peer id must be a non-empty string")
    if not isinstance(addrs, list) or len(addrs) > limits.max_addrs:
        raise DecodeError(f"peer {peer_id}: addrs must be a list of at most {limits.max_addrs}")
    for a in addrs:
        if not isinstance(a, str) or not 0 < len(a) <= limits.max_name:
            raise DecodeError(f"peer {peer_id}: bad address {a!r}")
    return PeerRecord(peer_id=peer_id, addrs=tuple(addrs))
