"""A hostile consortium member, written on raw py-libp2p.

It speaks the gossiplearn wire protocol (docs/protocol.md sections 3-7) by itself — its own
4-byte big-endian framing and msgpack messages — and imports nothing from ``gossiplearn``, so
it can send what an honest peer never would: malformed frames, lying fingerprints, wrong
shapes, non-finite or poisoned models, slow drips and stream floods.

Library use (trio)::

    async with Attacker.open(psk_hex=...) as atk:
        outcome = await atk.attack(target_addr, "nan", template)

Process use::

    python tests/adversary/attacker.py --target /ip4/.../tcp/N/p2p/ID --kinds mixed \\
        --duration 60 --report out.json

Every libp2p failure to dial a target or open a stream is raised as ``AttackFailed``; anything
the target does after that (decline, reset, close, silence) is recorded in the ``Outcome``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import random
import secrets
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import multiaddr
import numpy as np
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamEOF, StreamReset
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

log = logging.getLogger("attacker")

EXCHANGE_PROTOCOL = "/gossiplearn/exchange/1.0.0"
PEERS_PROTOCOL = "/gossiplearn/peers/1.0.0"
HEADER = struct.Struct(">I")
CONTROL_LIMIT = 64 * 1024
READ_LIMIT = 256 << 20  # the largest honest frame we are willing to buffer
WIRE_DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8"}
MAX_FLOOD = 250  # py-libp2p's 257th outbound stream on one yamux connection blocks forever

ATTACKS: tuple[str, ...] = (
    "random-bytes",
    "truncated-frame",
    "huge-frame",
    "garbage-msgpack",
    "wrong-shapes",
    "wrong-dtypes",
    "nan",
    "inf",
    "scaled",
    "other-architecture",
    "sign-flip",
    "noise",
    "slow-drip",
    "stream-flood",
)

# Sub-variants an attack picks from at random (or as asked with ``variant=``).
VARIANTS: dict[str, tuple[str, ...]] = {
    "random-bytes": ("random",),
    "truncated-frame": ("fin", "stall"),
    "huge-frame": ("propose-position", "model-position"),
    "garbage-msgpack": (
        "not-msgpack",
        "empty-body",
        "not-a-map",
        "wrong-version",
        "float-version",
        "bool-version",
        "unknown-type",
        "int-keys",
        "deep-nesting",
        "ext-type",
        "missing-fp",
        "bool-n",
        "negative-n",
        "model-first",
        "second-propose",
        "garbage-model",
    ),
    "wrong-shapes": ("transposed", "flattened", "grown", "dropped-tensor", "extra-tensor"),
    "wrong-dtypes": ("float64", "float16", "int32", "duplicate-name"),
    "nan": ("one-element", "all", "metric"),
    "inf": ("one-element", "all", "negative", "metric"),
    "scaled": ("1e6",),
    "other-architecture": ("lie-own-fp", "lie-template-fp", "honest"),
    "sign-flip": ("negated",),
    "noise": ("same-norm",),
    "slow-drip": ("drip",),
    "stream-flood": ("half-propose",),
}

RESPONDER_MODES = ("attack", "honest-echo", *ATTACKS)


class AttackFailed(Exception):
    """The target could not be dialled, or a stream to it could not be opened."""


# ------------------------------------------------------------------------------------ wire


def frame(body: bytes) -> bytes:
    """A frame: 4-byte big-endian body length, then the body."""
    return HEADER.pack(len(body)) + body


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def propose_body(fp: bytes, n: int, mb: int, task: bytes | None = None) -> bytes:
    """A proposal; ``task`` defaults to the task digest an honest peer with a model of
    fingerprint ``fp`` sends (``task_of``)."""
    return pack({"v": 1, "t": "propose", "fp": fp, "n": n, "mb": mb, "task": task or task_of(fp)})


WireTensor = tuple[str, str, Sequence[int], bytes]


def offer_body(
    fp: bytes,
    n: int,
    tensors: Iterable[WireTensor],
    *,
    steps: int = 0,
    acc: float | None = None,
    loss: float | None = None,
    task: bytes | None = None,
) -> bytes:
    return pack(
        {
            "v": 1,
            "t": "model",
            "task": task or task_of(fp),
            "fp": fp,
            "n": n,
            "steps": steps,
            "acc": acc,
            "loss": loss,
            "tensors": [
                [name, dt, [int(d) for d in shape], data] for name, dt, shape, data in tensors
            ],
        }
    )


def wire_tensors(model: Mapping[str, np.ndarray]) -> list[WireTensor]:
    """Encode float arrays as wire tensors (dtype from the array)."""
    out: list[WireTensor] = []
    for name, arr in model.items():
        dt = {2: "float16", 4: "float32", 8: "float64"}[arr.dtype.itemsize]
        data = np.ascontiguousarray(arr, dtype=WIRE_DTYPES[dt]).tobytes()
        out.append((name, dt, tuple(arr.shape), data))
    return out


def _canon(obj: Any) -> bytes:
    """Shortest msgpack encoding of lists, str and non-negative ints (docs/protocol.md §5.4),
    written by hand so that the fingerprint does not depend on a msgpack library's choices."""
    if isinstance(obj, list | tuple):
        n = len(obj)
        head = (
            bytes([0x90 | n])
            if n < 16
            else (b"\xdc" + struct.pack(">H", n) if n < 1 << 16 else b"\xdd" + struct.pack(">I", n))
        )
        return head + b"".join(_canon(x) for x in obj)
    if isinstance(obj, str):
        raw = obj.encode()
        n = len(raw)
        if n < 32:
            return bytes([0xA0 | n]) + raw
        if n < 1 << 8:
            return b"\xd9" + bytes([n]) + raw
        if n < 1 << 16:
            return b"\xda" + struct.pack(">H", n) + raw
        return b"\xdb" + struct.pack(">I", n) + raw
    if isinstance(obj, int) and not isinstance(obj, bool) and obj >= 0:
        if obj < 0x80:
            return bytes([obj])
        for code, fmt, bound in ((0xCC, ">B", 8), (0xCD, ">H", 16), (0xCE, ">I", 32)):
            if obj < 1 << bound:
                return bytes([code]) + struct.pack(fmt, obj)
        return b"\xcf" + struct.pack(">Q", obj)
    raise TypeError(f"cannot canonically encode {obj!r}")


def task_digest(identity: Any) -> bytes:
    """SHA-256 of a task identity in canonical msgpack: maps as [key, value] pairs sorted by
    key (docs/protocol.md §5.5)."""

    def canon(obj: Any) -> Any:
        if isinstance(obj, dict):
            return [[k, canon(obj[k])] for k in sorted(obj)]
        if isinstance(obj, list):
            return [canon(v) for v in obj]
        return obj

    return hashlib.sha256(_canon(canon(identity))).digest()


def digits_task(hidden: int = 64) -> bytes:
    """The digest of the built-in digits task's identity (§5.5): honest digits peers send it
    in every proposal and model."""
    return task_digest(
        {"task": "digits", "version": 1, "model": {"kind": "mlp", "hidden": [hidden]}}
    )


DIGITS_TASK = digits_task()
_TASKS: dict[bytes, bytes] = {}  # model fingerprint → task digest, learnt from templates


def task_of(fp: bytes) -> bytes:
    """The task digest that goes with a model fingerprint (a template's, once computed; the
    default digits task otherwise)."""
    return _TASKS.get(fp, DIGITS_TASK)


# ------------------------------------------------------------------------------------ template


Spec = tuple[str, str, tuple[int, ...]]


@dataclass(frozen=True)
class Template:
    """An honest model's tensor layout: (name, wire dtype, shape) per tensor."""

    specs: tuple[Spec, ...]

    @classmethod
    def from_specs(cls, specs: Iterable[tuple[str, str, Sequence[int]]]) -> Template:
        return cls(tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in specs))

    @classmethod
    def from_arrays(cls, tensors: Mapping[str, np.ndarray]) -> Template:
        return cls.from_specs((n, dt, s) for n, dt, s, _ in wire_tensors(tensors))

    def fingerprint(self) -> bytes:
        """SHA-256 of the canonical msgpack of the sorted [name, dtype, shape] triples (§5.4).
        Remembers the template's task digest for that fingerprint (``task_of``)."""
        canon = sorted(([n, d, list(s)] for n, d, s in self.specs), key=lambda e: e[0])
        fp = hashlib.sha256(_canon(canon)).digest()
        _TASKS[fp] = self.task
        return fp

    @property
    def task(self) -> bytes:
        """The task digest of a digits MLP with this template's hidden width."""
        shapes = {n: s for n, _, s in self.specs}
        hidden = shapes.get("0.weight", (64, 64))[0]
        return digits_task(hidden)

    def model_bytes(self) -> int:
        """The honest ``mb`` estimate (§6.2), so that a Propose looks like an honest one."""
        total = 256
        for name, dt, shape in self.specs:
            itemsize = np.dtype(WIRE_DTYPES[dt]).itemsize
            total += 64 + len(name.encode()) + 9 * len(shape) + math.prod(shape) * itemsize
        return total

    def random_model(self, rng: np.random.Generator, std: float = 0.1) -> dict[str, np.ndarray]:
        return {n: (rng.standard_normal(s) * std).astype(WIRE_DTYPES[d]) for n, d, s in self.specs}

    def matches(self, model: Mapping[str, np.ndarray]) -> bool:
        return model.keys() == {n for n, _, _ in self.specs} and all(
            tuple(model[n].shape) == s for n, _, s in self.specs
        )


# The built-in ``digits`` task's model with its default hidden size (docs/protocol.md §12.1).
DIGITS_TEMPLATE = Template.from_specs(
    [
        ("0.weight", "float32", (64, 64)),
        ("0.bias", "float32", (64,)),
        ("2.weight", "float32", (10, 64)),
        ("2.bias", "float32", (10,)),
    ]
)


# ------------------------------------------------------------------------------------ outcome


@dataclass
class Outcome:
    """What one attack (or one inbound exchange we answered) did to the target."""

    kind: str
    target: str = ""  # the target's peer ID
    variant: str = ""
    role: str = "initiator"  # "responder": an honest peer's exchange that we answered
    answer: str = "none"  # accept | decline | other | none
    reason: str = ""  # decline reason
    detail: str = ""  # decline detail
    target_model: bool = False  # the target sent us its ModelOffer
    sent_all: bool = False  # we finished writing what the attack meant to send
    reset: bool = False  # the target reset the stream
    closed: bool = False  # the target closed its side cleanly (FIN / end of stream)
    disconnected: bool = False  # the target closed the whole connection (e.g. banned us)
    timed_out: bool = False  # our own bound on this attack passed first
    error: str = ""
    elapsed: float = 0.0  # seconds from start of the attack to its end
    gave_up_after: float | None = None  # slow-drip: seconds from Accept to the target's reset
    counts: dict[str, int] = field(default_factory=dict)  # stream-flood tallies

    @property
    def result(self) -> str:
        """One word for reports: what the target made of it."""
        if self.kind == "stream-flood" and self.counts:
            return "flood"
        if self.error.startswith("dial"):
            return "dial-failed"
        if self.answer == "decline":
            return f"declined:{self.reason}"
        if self.answer == "other":
            return "bad-answer"
        if self.answer == "accept" and self.sent_all and self.closed and not self.reset:
            return "merged"  # the target closes only after merging (§7.1), resets on refusal
        if self.reset:
            return "reset"
        if self.closed:
            return "closed"
        if self.timed_out:
            return "timeout"
        return "no-answer"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["result"] = self.result
        return out


# ------------------------------------------------------------------------------------ streams


class Wire:
    """Frames over one py-libp2p stream, recording how the remote ended it."""

    def __init__(self, stream: INetStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.disconnected = False  # the target closed the whole connection
        self.error = ""

    @property
    def ended(self) -> bool:
        return self.eof or self.reset

    def _reset_seen(self) -> bool:
        """py-libp2p 0.8.1's yamux drops a stream's entry when an RST arrives, so a read after
        a remote reset usually raises StreamEOF, like a clean FIN; the muxed stream's flag
        still tells the two apart (our own ``abort`` sets it too: only ask before that)."""
        muxed = getattr(self.stream, "muxed_stream", None)
        return bool(getattr(muxed, "reset_received", False))

    def _fault(self, exc: BaseException) -> None:
        if isinstance(exc, StreamReset) or self._reset_seen():
            self.reset = True
        elif isinstance(exc, StreamEOF | EOFError):
            self.eof = True
        else:
            self.reset = True
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        if self._conn_closed():
            self.disconnected = True

    def _conn_closed(self) -> bool:
        conn = getattr(self.stream, "muxed_conn", None)
        return bool(getattr(conn, "is_closed", False)) or bool(
            getattr(getattr(conn, "event_shutting_down", None), "is_set", lambda: False)()
        )

    async def _fill(self) -> bool:
        if self.ended:
            return False
        try:
            data = await self.stream.read(1 << 16)
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._fault(exc)
            return False
        if not data:
            self._fault(StreamEOF())
            return False
        self.buf += data
        return True

    async def read_frame(self, limit: int = READ_LIMIT) -> bytes | None:
        """The next frame body; None if the stream ended (or the header exceeds ``limit``)."""
        while len(self.buf) < 4:
            if not await self._fill():
                return None
        (length,) = HEADER.unpack_from(self.buf)
        if length > limit:
            self.error = f"remote announced a frame of {length} bytes"
            return None
        while len(self.buf) < 4 + length:
            if not await self._fill():
                return None
        body = bytes(self.buf[4 : 4 + length])
        del self.buf[: 4 + length]
        return body

    async def read_message(self, limit: int = READ_LIMIT) -> dict[str, Any] | None:
        body = await self.read_frame(limit)
        if body is None:
            return None
        try:
            msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:
            self.error = f"undecodable frame from the target: {exc}"
            return {"t": "?"}
        return msg if isinstance(msg, dict) else {"t": "?"}

    async def write(self, data: bytes) -> bool:
        if self.reset:
            return False
        try:
            await self.stream.write(data)
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._fault(exc)
            self.reset = True
            return False
        return True

    async def close_write(self) -> None:
        try:
            await self.stream.close()
        except trio.Cancelled:
            raise
        except Exception as exc:
            self._fault(exc)

    async def wait_end(self) -> None:
        """Read (and drop) until the remote closes or resets; bound it from outside."""
        while await self._fill():
            self.buf.clear()

    async def abort(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self.stream.reset()
            except Exception:
                log.debug("reset failed", exc_info=True)


def _record(out: Outcome, wire: Wire) -> None:
    out.reset = out.reset or wire.reset
    out.closed = out.closed or wire.eof
    out.disconnected = out.disconnected or wire.disconnected
    if wire.error and not out.error:
        out.error = wire.error


def _answer(out: Outcome, msg: dict[str, Any] | None) -> str:
    """Record the target's answer to a Propose; returns accept / decline / other / none."""
    if msg is None:
        out.answer = "none"
    elif msg.get("t") == "accept":
        out.answer = "accept"
    elif msg.get("t") == "decline":
        out.answer = "decline"
        out.reason = str(msg.get("reason"))
        out.detail = str(msg.get("detail"))
    else:
        out.answer = "other"
    return out.answer


# ------------------------------------------------------------------------------------ payloads


@dataclass
class Payload:
    """What an exchange-shaped attack sends: a Propose body, then an offer (raw bytes)."""

    propose: bytes
    offer: bytes  # already framed (or deliberately mis-framed)


def _poison(
    kind: str,
    variant: str,
    template: Template,
    base: dict[str, np.ndarray],
    n: int,
    rng: np.random.Generator,
) -> Payload:
    """Payload for the attacks that send a well-framed, decodable ModelOffer."""
    fp = template.fingerprint()
    mb = template.model_bytes()
    propose = propose_body(fp, n, mb)
    model = {k: v.copy() for k, v in base.items()}
    tensors = wire_tensors(model)
    acc: float | None = None
    names = [t[0] for t in tensors]
    victim = names[int(rng.integers(len(names)))]

    if kind == "wrong-shapes":
        changed: list[WireTensor] = []
        for name, dt, old_shape, old_data in tensors:
            shape, data = tuple(old_shape), old_data
            if variant == "transposed":
                shape = tuple(reversed(shape)) if len(shape) >= 2 else (1, *shape)
            elif variant == "flattened":
                shape = (math.prod(shape),) if len(shape) >= 2 else (*shape, 1)
            elif variant == "grown" and name == victim:
                shape = (shape[0] + 1, *shape[1:]) if shape else (2,)
                data += bytes(np.dtype(WIRE_DTYPES[dt]).itemsize * math.prod(shape[1:]))
            changed.append((name, dt, shape, data))
        if variant == "dropped-tensor":
            changed = [t for t in changed if t[0] != victim]
        elif variant == "extra-tensor":
            changed.append(("zz.extra", "float32", (4,), bytes(16)))
        tensors = changed
    elif kind == "wrong-dtypes":
        changed = []
        for name, _dt, shape, data in tensors:
            arr = np.frombuffer(data, dtype="<f4") if _dt == "float32" else model[name]
            if variant == "float64":
                changed.append((name, "float64", shape, arr.astype("<f8").tobytes()))
            elif variant == "float16":
                changed.append((name, "float16", shape, arr.astype("<f2").tobytes()))
            elif variant == "int32":
                changed.append((name, "int32", shape, arr.astype("<i4").tobytes()))
            else:
                changed.append((name, _dt, shape, data))
        if variant == "duplicate-name":
            changed.append(changed[0])
        tensors = changed
    elif kind in ("nan", "inf"):
        bad = {"nan": np.nan, "inf": np.inf}[kind] * (-1 if variant == "negative" else 1)
        if variant == "metric":
            acc = float(bad)
        elif variant == "all":
            model = {k: np.full_like(v, bad) for k, v in model.items()}
        else:
            flat = model[victim].reshape(-1)
            flat[int(rng.integers(flat.size))] = bad
        tensors = wire_tensors(model)
    elif kind == "scaled":
        tensors = wire_tensors({k: v * np.float32(1e6) for k, v in model.items()})
    elif kind == "sign-flip":
        tensors = wire_tensors({k: -v for k, v in model.items()})
    elif kind == "noise":
        noisy = {}
        for k, v in model.items():
            r = rng.standard_normal(v.shape)
            scale = float(np.linalg.norm(v.astype(np.float64))) / max(
                float(np.linalg.norm(r)), 1e-12
            )
            noisy[k] = (r * scale).astype(v.dtype)
        tensors = wire_tensors(noisy)
    elif kind == "other-architecture":
        other = Template.from_specs([("w", "float32", (7, 3)), ("b", "float32", (3,))])
        other_model = other.random_model(rng)
        other_fp = other.fingerprint()
        tensors = wire_tensors(other_model)
        if variant == "honest":
            propose = propose_body(other_fp, n, other.model_bytes())
        offer_fp = other_fp if variant in ("lie-own-fp", "honest") else fp
        return Payload(propose, frame(offer_body(offer_fp, n, tensors)))
    else:
        raise ValueError(f"{kind} is not a model-poisoning attack")
    return Payload(propose, frame(offer_body(fp, n, tensors, acc=acc)))


def _garbage(variant: str, template: Template, n: int) -> tuple[bytes, bytes | None]:
    """(first frame, frame to send after Accept or None) for garbage-msgpack."""
    fp = template.fingerprint()
    mb = template.model_bytes()
    good = propose_body(fp, n, mb)
    bodies: dict[str, bytes] = {
        "not-msgpack": b"\xc1\xc1\xc1\xc1garbage",
        "empty-body": b"",
        "not-a-map": pack([1, "propose", fp]),
        "wrong-version": pack({"v": 2, "t": "propose", "fp": fp, "n": n, "mb": mb}),
        "float-version": pack({"v": 1.0, "t": "propose", "fp": fp, "n": n, "mb": mb}),
        "bool-version": pack({"v": True, "t": "propose", "fp": fp, "n": n, "mb": mb}),
        "unknown-type": pack({"v": 1, "t": "hello", "fp": fp, "n": n, "mb": mb}),
        "int-keys": pack({1: 1, 2: "propose"}),
        "deep-nesting": b"\x91" * 30000 + b"\xc0",
        "ext-type": pack({"v": 1, "t": "propose", "fp": msgpack.ExtType(5, fp), "n": n, "mb": mb}),
        "missing-fp": pack({"v": 1, "t": "propose", "n": n, "mb": mb}),
        "bool-n": pack({"v": 1, "t": "propose", "fp": fp, "n": True, "mb": mb}),
        "negative-n": pack({"v": 1, "t": "propose", "fp": fp, "n": -5, "mb": mb}),
        "model-first": offer_body(fp, n, []),
    }
    if variant == "second-propose":
        return frame(good), frame(good)
    if variant == "garbage-model":
        return frame(good), frame(b"\x85\xa1v\x01\xa1t\xa5model\xa2fp\xc4\x20" + b"\x00" * 10)
    return frame(bodies[variant]), None


# ------------------------------------------------------------------------------------ host


def key_pair(seed: bytes | None) -> KeyPair:
    private = Ed25519PrivateKey.from_bytes(seed if seed is not None else secrets.token_bytes(32))
    return KeyPair(private, private.get_public_key())


def read_psk_file(path: str) -> str:
    """The 64 hex digits of a libp2p private-network key file."""
    with open(path, encoding="ascii") as f:
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    if len(lines) != 3 or lines[0] != "/key/swarm/psk/1.0.0/" or lines[1] != "/base16/":
        raise ValueError(f"{path}: not a /key/swarm/psk/1.0.0/ /base16/ key file")
    key = lines[2].lower()
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"{path}: the key must be 64 hex digits")
    return key


class Attacker:
    """A hostile member. Build with ``Attacker.open``; settings are plain attributes."""

    def __init__(self, host: IHost, *, seed_rng: int | None = None) -> None:
        self.host = host
        self.rng = np.random.default_rng(seed_rng)
        self.dial_timeout = 5.0
        self.attack_timeout = 30.0  # internal bound of one attack (slow-drip: drip_cap)
        self.drip_chunk = 16
        self.drip_period = 0.5
        self.drip_cap = 120.0
        self.flood_streams = 200
        self.flood_hold = 15.0
        self.claim_samples: int | None = None  # the `n` we send; None: the learnt one, or 1000
        self.responder = "attack"  # attack | honest-echo | one of ATTACKS
        self.mode = "sign-flip"  # the attack kind the "attack" responder uses
        self.template: Template | None = None
        self.learnt: dict[str, np.ndarray] | None = None  # last honest model received
        self.learnt_samples: int | None = None
        self.learnt_fp: bytes | None = None
        self.inbound: list[Outcome] = []  # exchanges honest peers started with us
        self.history: list[Outcome] = []  # every attack's outcome, in order
        self._template_learnt = trio.Event()

    # -------------------------------------------------------------- lifetime

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        seed: bytes | None = None,
        psk_hex: str | None = None,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        *,
        upgrade_timeout: float = 5.0,
        rng_seed: int | None = None,
    ) -> AsyncIterator[Attacker]:
        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
        logging.getLogger("multiaddr").setLevel(logging.CRITICAL)
        kp = key_pair(seed)
        addrs = [multiaddr.Multiaddr(listen)]
        host = new_host(
            key_pair=kp,
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(
                    kp, noise_privkey=new_x25519_key_pair().private_key
                )
            },
            muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
            listen_addrs=addrs,
            psk=psk_hex,
            connection_config=ConnectionConfig(
                dial_timeout=upgrade_timeout,
                inbound_upgrade_timeout=upgrade_timeout,
                outbound_upgrade_timeout=upgrade_timeout,
            ),
        )
        host.get_network().retry_config = RetryConfig(max_retries=0)
        async with host.run(listen_addrs=addrs):
            atk = cls(host, seed_rng=rng_seed)
            host.set_stream_handler(TProtocol(EXCHANGE_PROTOCOL), atk._on_exchange)
            try:
                yield atk
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await host.close()

    @property
    def peer_id(self) -> str:
        return str(self.host.get_id())

    def addrs(self) -> list[str]:
        suffix = f"/p2p/{self.peer_id}"
        out = []
        for addr in self.host.get_addrs():
            text = str(addr)
            out.append(text if text.endswith(suffix) else text + suffix)
        return list(dict.fromkeys(out))

    @property
    def samples(self) -> int:
        if self.claim_samples is not None:
            return self.claim_samples
        return self.learnt_samples if self.learnt_samples is not None else 1000

    # -------------------------------------------------------------- dialling

    async def _stream(self, target_addr: str, protocol: str = EXCHANGE_PROTOCOL) -> INetStream:
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(target_addr))
        except Exception as exc:
            raise AttackFailed(f"dial: {target_addr!r} is not a /p2p/ multiaddr: {exc}") from None
        network = self.host.get_network()
        try:
            with trio.fail_after(self.dial_timeout):
                if info.peer_id not in self.host.get_connected_peers():
                    network.unblock_peer(info.peer_id)  # type: ignore[attr-defined]
                    await self.host.connect(info)
                return await self.host.new_stream(info.peer_id, [TProtocol(protocol)])
        except trio.TooSlowError:
            raise AttackFailed(
                f"dial: {target_addr} timed out after {self.dial_timeout} s"
            ) from None
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise AttackFailed(f"dial: {target_addr}: {type(exc).__name__}: {exc}") from None

    async def introduce(self, target_addr: str) -> bool:
        """Send a PeersRequest with our record so the target learns us (and later proposes an
        exchange to us, which teaches us its template). True if it answered."""
        stream = await self._stream(target_addr, PEERS_PROTOCOL)
        wire = Wire(stream)
        try:
            with trio.move_on_after(self.dial_timeout):
                body = pack({"v": 1, "t": "peers?", "sender": [self.peer_id, self.addrs()[:8]]})
                if await wire.write(frame(body)):
                    reply = await wire.read_message(256 * 1024)
                    return bool(reply and reply.get("t") == "peers")
            return False
        finally:
            await wire.abort()

    async def wait_template(self, seconds: float) -> Template | None:
        """The template learnt from an honest peer's exchange, waiting up to ``seconds``."""
        with trio.move_on_after(seconds):
            await self._template_learnt.wait()
        return self.template

    # -------------------------------------------------------------- attacks

    def _base_model(self, template: Template) -> dict[str, np.ndarray]:
        if self.learnt is not None and template.matches(self.learnt):
            return {k: v.copy() for k, v in self.learnt.items()}
        return template.random_model(self.rng)

    async def attack(
        self,
        target_addr: str,
        kind: str,
        template: Template | None = None,
        *,
        variant: str | None = None,
    ) -> Outcome:
        """Run one attack on ``target_addr``. Raises only ``AttackFailed`` (dial/stream open)."""
        if kind not in ATTACKS:
            raise ValueError(f"unknown attack {kind!r} (known: {', '.join(ATTACKS)})")
        variants = VARIANTS[kind]
        if variant is None:
            variant = variants[int(self.rng.integers(len(variants)))]
        elif variant not in variants:
            raise ValueError(f"{kind} has no variant {variant!r} (known: {variants})")
        template = template or self.template or DIGITS_TEMPLATE
        self.mode = kind
        out = Outcome(kind=kind, variant=variant)
        try:
            out.target = str(info_from_p2p_addr(multiaddr.Multiaddr(target_addr)).peer_id)
        except Exception:
            out.target = target_addr
        start = trio.current_time()
        if kind == "stream-flood":
            await self._flood(target_addr, template, out)
        else:
            bound = self.drip_cap + 10 if kind == "slow-drip" else self.attack_timeout
            with trio.move_on_after(bound) as scope:
                await self._exchange_attack(target_addr, kind, variant, template, out, start)
            out.timed_out = out.timed_out or scope.cancelled_caught
        out.elapsed = round(trio.current_time() - start, 3)
        self.history.append(out)
        return out

    async def _exchange_attack(
        self,
        target_addr: str,
        kind: str,
        variant: str,
        template: Template,
        out: Outcome,
        start: float,
    ) -> None:
        stream = await self._stream(target_addr)
        wire = Wire(stream)
        try:
            await self._run_exchange_attack(wire, kind, variant, template, out, start)
        finally:
            _record(out, wire)
            await wire.abort()

    async def _observe(self, wire: Wire, out: Outcome, seconds: float) -> None:
        """Wait for the target to end the stream (reset or close), up to ``seconds``."""
        with trio.move_on_after(seconds) as scope:
            await wire.wait_end()
        if scope.cancelled_caught:
            out.timed_out = True

    async def _run_exchange_attack(
        self,
        wire: Wire,
        kind: str,
        variant: str,
        template: Template,
        out: Outcome,
        start: float,
    ) -> None:
        n = self.samples
        fp = template.fingerprint()
        mb = template.model_bytes()
        rest = self.attack_timeout

        if kind == "random-bytes":
            size = int(self.rng.integers(1024, 64 * 1024 + 1))
            out.sent_all = await wire.write(self.rng.bytes(size))
            await wire.close_write()
            if not wire.ended:
                _answer(out, await wire.read_message(CONTROL_LIMIT))
            await self._observe(wire, out, rest)
            return

        if kind == "huge-frame" and variant == "propose-position":
            out.sent_all = await wire.write(HEADER.pack(0xFFFFFFFF) + self.rng.bytes(4096))
            await self._observe(wire, out, rest)
            return

        if kind == "truncated-frame" and variant in ("fin", "stall"):
            body = propose_body(fp, n, mb)
            out.sent_all = await wire.write(HEADER.pack(len(body)) + body[: len(body) // 2])
            if variant == "fin":
                await wire.close_write()
            await self._observe(wire, out, rest)
            return

        if kind == "garbage-msgpack":
            first, after_accept = _garbage(variant, template, n)
            if not await wire.write(first):
                return
            msg = await wire.read_message(CONTROL_LIMIT)
            if _answer(out, msg) == "accept" and after_accept is not None:
                out.sent_all = await wire.write(after_accept)
            else:
                out.sent_all = after_accept is None
            await self._observe(wire, out, rest)
            return

        # The rest follow the exchange: Propose, Accept, then a ModelOffer of some kind.
        if kind in ("huge-frame", "slow-drip"):
            payload = Payload(
                propose_body(fp, n, mb),
                frame(offer_body(fp, n, wire_tensors(self._base_model(template)))),
            )
            if kind == "huge-frame":
                payload.offer = HEADER.pack(0xFFFFFFFF) + self.rng.bytes(4096)
        else:
            payload = _poison(kind, variant, template, self._base_model(template), n, self.rng)

        if not await wire.write(frame(payload.propose)):
            return
        if _answer(out, await wire.read_message(CONTROL_LIMIT)) != "accept":
            await self._observe(wire, out, rest)
            return
        accepted = trio.current_time()
        finished = trio.Event()

        async def receive_theirs() -> None:
            msg = await wire.read_message()
            if msg is not None and msg.get("t") == "model":
                out.target_model = True
                self._learn_offer(msg)
            await wire.wait_end()
            if wire.reset and kind == "slow-drip":
                out.gave_up_after = round(trio.current_time() - accepted, 3)
            finished.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_theirs)
            if kind == "slow-drip":
                data = payload.offer
                pos = 0
                with trio.move_on_after(self.drip_cap):
                    while pos < len(data) and not wire.ended:
                        if not await wire.write(data[pos : pos + self.drip_chunk]):
                            break
                        pos += self.drip_chunk
                        await trio.sleep(self.drip_period)
                out.sent_all = pos >= len(data)
            else:
                out.sent_all = await wire.write(payload.offer)
            if out.sent_all:
                await wire.close_write()
            left = self.drip_cap if kind == "slow-drip" else rest - (trio.current_time() - start)
            with trio.move_on_after(max(left, 1.0)) as scope:
                await finished.wait()
            out.timed_out = scope.cancelled_caught
            nursery.cancel_scope.cancel()

    async def _flood(self, target_addr: str, template: Template, out: Outcome) -> None:
        count = min(self.flood_streams, MAX_FLOOD)
        tally: Counter[str] = Counter()
        wires: list[Wire] = []
        body = frame(propose_body(template.fingerprint(), self.samples, template.model_bytes()))
        deadline = trio.current_time() + self.flood_hold
        first = await self._stream(target_addr)  # one connection first; streams then share it
        await Wire(first).abort()

        async def one(i: int) -> None:
            try:
                with trio.move_on_after(max(deadline - trio.current_time(), 0.1)) as opening:
                    stream = await self._stream(target_addr)
            except AttackFailed as exc:
                tally["open-failed"] += 1
                out.error = out.error or str(exc)
                return
            if opening.cancelled_caught:  # still opening when the hold ended (a loaded host)
                tally["open-timed-out"] += 1
                return
            wire = Wire(stream)
            wires.append(wire)
            tally["opened"] += 1
            label = "open"
            with trio.move_on_after(max(deadline - trio.current_time(), 0.1)):
                if i % 2 == 0:
                    await wire.write(body)
                    msg = await wire.read_message(CONTROL_LIMIT)
                    if msg is not None:
                        label = (
                            "accept" if msg.get("t") == "accept" else f"decline:{msg.get('reason')}"
                        )
                        tally[label] += 1
                await wire.wait_end()
            if wire.reset:
                label = "reset"
            elif wire.eof:
                label = "eof"
            tally[f"end:{label}"] += 1

        try:
            with trio.move_on_after(self.flood_hold + self.dial_timeout + 5):
                async with trio.open_nursery() as nursery:
                    for i in range(count):
                        nursery.start_soon(one, i)
        finally:
            with trio.CancelScope(shield=True):
                for wire in wires:
                    await wire.abort()
        out.counts = dict(tally)
        out.answer = "accept" if tally["accept"] else ("decline" if tally else "none")
        out.reset = tally["end:reset"] > 0
        out.closed = tally["end:eof"] > 0
        out.sent_all = tally["opened"] == count

    # -------------------------------------------------------------- campaign

    async def campaign(
        self,
        targets: list[str],
        duration: float,
        kinds: list[str],
        rng: random.Random,
        *,
        interval: float = 0.0,
    ) -> list[Outcome]:
        """Attack random targets with random kinds until ``duration`` seconds have passed."""
        results: list[Outcome] = []
        end = trio.current_time() + duration
        while trio.current_time() < end:
            target = rng.choice(targets)
            kind = rng.choice(kinds)
            bound = (self.drip_cap if kind == "slow-drip" else self.attack_timeout) + 30
            try:
                with trio.fail_after(bound):
                    results.append(await self.attack(target, kind))
            except AttackFailed as exc:
                failed = Outcome(kind=kind, target=target, error=str(exc))
                self.history.append(failed)
                results.append(failed)
            except trio.TooSlowError:
                stuck = Outcome(
                    kind=kind, target=target, timed_out=True, error="call-site deadline"
                )
                self.history.append(stuck)
                results.append(stuck)
            if interval > 0:
                await trio.sleep(min(interval, max(end - trio.current_time(), 0)))
        return results

    # -------------------------------------------------------------- responder

    def _learn_offer(self, msg: dict[str, Any]) -> bool:
        """Learn template and values from an honest ModelOffer; False if it is not one."""
        raw = msg.get("tensors")
        if not isinstance(raw, list) or not raw:
            return False
        model: dict[str, np.ndarray] = {}
        for item in raw:
            if not (isinstance(item, list) and len(item) == 4):
                return False
            name, dt, shape, data = item
            if dt not in WIRE_DTYPES or not isinstance(data, bytes):
                return False
            arr = np.frombuffer(data, dtype=WIRE_DTYPES[dt])
            if arr.size != math.prod(shape):
                return False
            model[str(name)] = arr.reshape(shape).copy()
        template = Template.from_arrays(model)
        self.template = template
        self.learnt = model
        n = msg.get("n")
        self.learnt_samples = n if isinstance(n, int) and not isinstance(n, bool) else None
        fp = msg.get("fp")
        self.learnt_fp = fp if isinstance(fp, bytes) else None
        self._template_learnt.set()
        return True

    async def _on_exchange(self, stream: INetStream) -> None:
        """Answer an honest peer's exchange (we are the responder). Never raises."""
        out = Outcome(kind=self.responder, role="responder")
        try:
            out.target = str(stream.muxed_conn.peer_id)
        except Exception:
            out.target = "?"
        wire = Wire(stream)
        start = trio.current_time()
        try:
            with trio.move_on_after(self.attack_timeout) as scope:
                await self._respond(wire, out)
            out.timed_out = scope.cancelled_caught
        except Exception as exc:  # an exception escaping a handler kills the host
            out.error = f"{type(exc).__name__}: {exc}"
        finally:
            _record(out, wire)
            out.elapsed = round(trio.current_time() - start, 3)
            self.inbound.append(out)
            await wire.abort()

    async def _respond(self, wire: Wire, out: Outcome) -> None:
        propose = await wire.read_message(CONTROL_LIMIT)
        if propose is None or propose.get("t") != "propose":
            out.error = out.error or "no propose"
            return
        if isinstance(propose.get("fp"), bytes) and isinstance(propose.get("task"), bytes):
            _TASKS[propose["fp"]] = propose["task"]  # answer as a peer of the proposer's task
        if not await wire.write(frame(pack({"v": 1, "t": "accept"}))):
            return
        out.answer = "accept"
        theirs = await wire.read_message()
        if theirs is None or theirs.get("t") != "model" or not self._learn_offer(theirs):
            out.error = out.error or "no model offer from the initiator"
            return
        out.target_model = True
        template = self.template
        assert template is not None and self.learnt is not None
        mode = self.responder if self.responder != "attack" else self.mode
        out.kind = mode
        fp = theirs["fp"] if isinstance(theirs.get("fp"), bytes) else template.fingerprint()
        if mode == "honest-echo":
            steps = theirs.get("steps") if isinstance(theirs.get("steps"), int) else 0
            offer = frame(offer_body(fp, self.samples, wire_tensors(self.learnt), steps=steps))
        elif mode in ("stream-flood", "slow-drip"):
            kind = "sign-flip"
            out.variant = VARIANTS[kind][0]
            offer = _poison(kind, out.variant, template, self.learnt, self.samples, self.rng).offer
            if mode == "slow-drip":
                out.variant = "drip"
                for pos in range(0, len(offer), self.drip_chunk):
                    if not await wire.write(offer[pos : pos + self.drip_chunk]):
                        return
                    await trio.sleep(self.drip_period)
                out.sent_all = True
                await wire.close_write()
                await wire.wait_end()
                return
        elif mode == "random-bytes":
            offer = self.rng.bytes(int(self.rng.integers(1024, 64 * 1024)))
        elif mode == "huge-frame":
            offer = HEADER.pack(0xFFFFFFFF) + self.rng.bytes(4096)
        elif mode == "truncated-frame":
            body = offer_body(fp, self.samples, wire_tensors(self.learnt))
            offer = HEADER.pack(len(body)) + body[: len(body) // 2]
        elif mode == "garbage-msgpack":
            offer = frame(b"\xc1garbage")
        else:
            variants = VARIANTS[mode]
            out.variant = variants[int(self.rng.integers(len(variants)))]
            base = {k: v.copy() for k, v in self.learnt.items()}
            offer = _poison(mode, out.variant, template, base, self.samples, self.rng).offer
        out.sent_all = await wire.write(offer)
        await wire.close_write()
        await wire.wait_end()


# ------------------------------------------------------------------------------------ CLI


def summarize(outcomes: Sequence[Outcome], inbound: Sequence[Outcome]) -> dict[str, Any]:
    per_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        per_kind.setdefault(o.kind, {})
        per_kind[o.kind][o.result] = per_kind[o.kind].get(o.result, 0) + 1
    responder: dict[str, dict[str, int]] = {}
    for o in inbound:
        responder.setdefault(o.kind, {})
        responder[o.kind][o.result] = responder[o.kind].get(o.result, 0) + 1
    drips = [o.gave_up_after for o in outcomes if o.gave_up_after is not None]
    return {
        "attacks": len(outcomes),
        "per_kind": per_kind,
        "responder": responder,
        "slow_drip_gave_up_after": drips,
        "outcomes": [o.to_json() for o in outcomes],
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="A hostile gossiplearn consortium member.")
    p.add_argument("--target", action="append", required=True, help="multiaddr ending /p2p/ID")
    p.add_argument("--psk-file", help="libp2p private-network key file (/key/swarm/psk/1.0.0/)")
    p.add_argument("--seed-hex", help="64 hex digits: the Ed25519 identity seed")
    p.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    p.add_argument("--kinds", default="mixed", help="comma-separated attack kinds, or 'mixed'")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--interval", type=float, default=0.5, help="pause between attacks (s)")
    p.add_argument("--responder", default="attack", choices=RESPONDER_MODES)
    p.add_argument("--learn-timeout", type=float, default=10.0, help="wait for a template (s)")
    p.add_argument("--samples", type=int, help="the sample count `n` to claim")
    p.add_argument("--attack-timeout", type=float, default=30.0)
    p.add_argument("--drip-cap", type=float, default=120.0)
    p.add_argument("--report", help="write a JSON report here")
    p.add_argument("--rng-seed", type=int)
    args = p.parse_args(argv)
    kinds = list(ATTACKS) if args.kinds == "mixed" else args.kinds.split(",")
    unknown = [k for k in kinds if k not in ATTACKS]
    if unknown:
        p.error(f"unknown attack kind(s) {unknown}; known: mixed, {', '.join(ATTACKS)}")
    args.kind_list = kinds
    return args


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    seed = bytes.fromhex(args.seed_hex) if args.seed_hex else None
    psk = read_psk_file(args.psk_file) if args.psk_file else None
    async with Attacker.open(seed, psk, args.listen, rng_seed=args.rng_seed) as atk:
        atk.responder = args.responder
        atk.claim_samples = args.samples
        atk.attack_timeout = args.attack_timeout
        atk.drip_cap = args.drip_cap
        print(f"peer {atk.peer_id}")
        for addr in atk.addrs():
            print(addr)
        sys.stdout.flush()
        started = time.time()
        with trio.CancelScope() as scope:

            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        scope.cancel()
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(on_signal)
                with trio.move_on_after(args.learn_timeout):
                    for target in args.target:
                        try:
                            await atk.introduce(target)
                        except AttackFailed as exc:
                            print(f"introduce: {exc}", file=sys.stderr)
                    await atk.wait_template(args.learn_timeout)
                rng = random.Random(args.rng_seed)
                await atk.campaign(
                    args.target, args.duration, args.kind_list, rng, interval=args.interval
                )
                nursery.cancel_scope.cancel()
        report = summarize(atk.history, atk.inbound)
        report |= {
            "peer": atk.peer_id,
            "targets": args.target,
            "template_learnt": atk.learnt is not None,
            "seconds": round(time.time() - started, 3),
        }
        return report


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    report = trio.run(_main, args)
    text = json.dumps(report, indent=2, sort_keys=True, default=str)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    summary = {k: report[k] for k in ("attacks", "per_kind", "responder")}
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
