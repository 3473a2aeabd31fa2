"""Checkpoint files: what a peer needs to resume exactly where it stopped, and their rotation.

File layout (all integers big-endian)::

    b"GLCKPT"  version (u16)  body length (u64)  SHA-256 of the body (32 bytes)  body

The body is a msgpack map (never pickle): model tensors and SGD momentum buffers are encoded
as the wire codec encodes tensors (name, dtype, shape, little-endian bytes); the batch-order
generator state and permutation as raw bytes; counters, bytes and histories as plain values
(the secure group rounds' counters under ``group``, absent in checkpoints written before they
were kept: they read as zero); the privacy ledger as ``Ledger.to_state`` gives it, with the
count of steps trained without differential privacy (both absent in checkpoints written before
privacy).

Invariants:
- ``decode_checkpoint`` raises ``CheckpointError`` and nothing else, whatever the bytes: a
  truncated file fails the length check, a flipped bit the magic, version, length or checksum.
- ``save_checkpoint`` keeps the last good checkpoint: the current file is renamed to
  ``checkpoint.prev.glc`` (an atomic rename), then the new one is written with
  ``files.write_atomic`` (a temporary file, fsynced, renamed to ``checkpoint.glc``, the folder
  fsynced). A SIGKILL at any instant leaves
  at least one complete checkpoint once one has been written.
- ``load_checkpoint`` never raises: it tries the newest file, then the previous one, and says
  which file it skipped and why. A corrupt newest file is moved aside (``checkpoint.bad.glc``)
  so that the next save does not rotate it over the good previous one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from gossiplearn.crypto.privacy import Ledger
from gossiplearn.errors import CheckpointError, DecodeError
from gossiplearn.gossip.messages import Limits, decode_tensor, encode_tensor
from gossiplearn.gossip.stats import ExchangeCounters, GroupCounters, MetricPoint
from gossiplearn.peer.home.files import write_atomic
from gossiplearn.peer.learning.state import TrainerState

log = logging.getLogger(__name__)

MAGIC = b"GLCKPT"
FORMAT_VERSION = 1
_HEADER = struct.Struct(">6sHQ32s")
CURRENT_NAME = "checkpoint.glc"
PREVIOUS_NAME = "checkpoint.prev.glc"
BAD_NAME = "checkpoint.bad.glc"
_ORDER_DTYPE = np.dtype("<i8")
_COUNTER_FIELDS = tuple(f.name for f in fields(ExchangeCounters) if f.name != "refused_by_reason")
_GROUP_COUNTS = ("led", "joined", "completed", "declined_inbound", "clipped")
_GROUP_TABLES = ("skipped", "abandoned")


@dataclass(frozen=True, slots=True)
class NodeState:
    """What ``gossiplearn status`` counts, so that it never goes backwards across restarts."""

    counters: ExchangeCounters
    bytes_sent: int
    bytes_received: int
    history: tuple[MetricPoint, ...]
    consensus: tuple[tuple[float, float], ...]  # (unix time, consensus distance)
    age_offset: float = 0.0  # the model's age minus the trainer's samples_seen (``Node``)
    group: GroupCounters = field(default_factory=GroupCounters)  # secure group rounds


@dataclass(frozen=True, slots=True)
class Checkpoint:
    created: float  # unix seconds
    trainer: TrainerState
    node: NodeState


# ---------------------------------------------------------------------------------- format


def encode_checkpoint(cp: Checkpoint) -> bytes:
    """The complete file contents for ``cp`` (header included)."""
    t, n = cp.trainer, cp.node
    counters: dict[str, Any] = {name: getattr(n.counters, name) for name in _COUNTER_FIELDS}
    counters["refused_by_reason"] = dict(n.counters.refused_by_reason)
    body: bytes = msgpack.packb(
        {
            "created": float(cp.created),
            "fp": t.fingerprint,
            "steps": t.steps,
            "seen": t.samples_seen,
            "model": [encode_tensor(k, v) for k, v in t.tensors.items()],
            "momentum": [encode_tensor(k, v) for k, v in t.momentum.items()],
            "rng": t.rng_state,
            "order": np.ascontiguousarray(t.order, dtype=_ORDER_DTYPE).tobytes(),
            "pos": t.position,
            "counters": counters,
            "sent": n.bytes_sent,
            "received": n.bytes_received,
            "history": [
                [p.time, p.steps, p.accuracy, p.loss, *([p.scores] if p.scores else [])]
                for p in n.history
            ],
            "consensus": [[time, distance] for time, distance in n.consensus],
            "age_offset": float(n.age_offset),
            "group": _group_body(n.group),
            **({"task": t.task} if t.task else {}),
            **({"stats": encode_tensor("stats", t.stats)} if t.stats is not None else {}),
            **(
                {"local_stats": encode_tensor("local_stats", t.local_stats)}
                if t.local_stats is not None
                else {}
            ),
            **({"ledger": Ledger(t.ledger).to_state()} if t.ledger is not None else {}),
            **({"plain_steps": t.plain_steps} if t.plain_steps is not None else {}),
        },
        use_bin_type=True,
    )
    digest = hashlib.sha256(body).digest()
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(body), digest) + body


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Parse a checkpoint file's contents. Raises ``CheckpointError``, and only that."""
    if len(data) < _HEADER.size:
        raise CheckpointError(f"truncated: {len(data)} bytes, shorter than the header")
    magic, version, length, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CheckpointError("not a gossiplearn checkpoint (bad magic)")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"format version {version}; this gossiplearn reads {FORMAT_VERSION}")
    body = data[_HEADER.size :]
    if len(body) != length:
        raise CheckpointError(f"truncated: {len(body)} bytes of body, the header says {length}")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError("corrupt: checksum mismatch")
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=True, max_ext_len=0)
        return _decode_body(raw, len(body))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - msgpack and numpy raise many types; all mean invalid
        raise CheckpointError(f"undecodable: {type(exc).__name__}: {exc}") from None


def _decode_body(raw: Any, size: int) -> Checkpoint:
    if not isinstance(raw, dict):
        raise CheckpointError("undecodable: the body is not a map")
    limits = Limits(max_frame=size, max_tensors=1 << 16)
    counters_raw = _get(raw, "counters", dict)
    counters = ExchangeCounters()
    for name in _COUNTER_FIELDS:
        if name in counters_raw:  # a counter added later starts at 0 in older checkpoints
            setattr(counters, name, _count(counters_raw, name))
    reasons = _get(counters_raw, "refused_by_reason", dict)
    for reason, count in reasons.items():
        if not isinstance(reason, str) or not _is_count(count):
            raise CheckpointError("undecodable: bad refused_by_reason entry")
        counters.refused_by_reason[reason] = count
    order = _get(raw, "order", bytes)
    if len(order) % _ORDER_DTYPE.itemsize:
        raise CheckpointError("undecodable: the batch order is not a whole number of int64")
    trainer = TrainerState(
        fingerprint=_get(raw, "fp", bytes),
        steps=_count(raw, "steps"),
        samples_seen=_count(raw, "seen"),
        tensors=_tensors(_get(raw, "model", list), limits),
        momentum=_tensors(_get(raw, "momentum", list), limits),
        rng_state=_get(raw, "rng", bytes),
        order=np.frombuffer(order, dtype=_ORDER_DTYPE),
        position=_count(raw, "pos"),
        task=raw.get("task", b"") if isinstance(raw.get("task", b""), bytes) else _bad("task"),
        stats=_vector(raw, "stats", limits),
        local_stats=_vector(raw, "local_stats", limits),
        ledger=Ledger.from_state(_get(raw, "ledger", dict)).history if "ledger" in raw else None,
        plain_steps=_count(raw, "plain_steps") if "plain_steps" in raw else None,
    )
    history = []
    for item in _get(raw, "history", list):
        if not isinstance(item, list) or len(item) not in (4, 5) or not _is_count(item[1]):
            raise CheckpointError("undecodable: bad metrics history point")
        scores = item[4] if len(item) == 5 else {}
        if not isinstance(scores, dict) or not all(isinstance(k, str) for k in scores):
            raise CheckpointError("undecodable: bad metrics history scores")
        history.append(
            MetricPoint(
                _real(item[0]),
                item[1],
                _opt_real(item[2]),
                _opt_real(item[3]),
                {k: _real(v) for k, v in scores.items()},
            )
        )
    consensus = []
    for item in _get(raw, "consensus", list):
        if not isinstance(item, list) or len(item) != 2:
            raise CheckpointError("undecodable: bad consensus history point")
        consensus.append((_real(item[0]), _real(item[1])))
    node = NodeState(
        counters=counters,
        bytes_sent=_count(raw, "sent"),
        bytes_received=_count(raw, "received"),
        history=tuple(history),
        consensus=tuple(consensus),
        age_offset=_real(raw.get("age_offset", 0.0)),  # absent in checkpoints before adoption
        group=_group(raw["group"]) if "group" in raw else GroupCounters(),  # absent before
    )
    if not math.isfinite(node.age_offset):
        raise CheckpointError("undecodable: the model age is not finite")
    return Checkpoint(created=_real(raw.get("created")), trainer=trainer, node=node)


def _group_body(g: GroupCounters) -> dict[str, Any]:
    body: dict[str, Any] = {name: getattr(g, name) for name in _GROUP_COUNTS}
    body["last_size"] = g.last_size
    body |= {name: dict(getattr(g, name)) for name in _GROUP_TABLES}
    return body


def _group(raw: Any) -> GroupCounters:
    """The group counters of a checkpoint (a counter added later starts at 0)."""
    if not isinstance(raw, dict):
        raise CheckpointError("undecodable: field 'group' must be dict")
    g = GroupCounters()
    for name in _GROUP_COUNTS:
        if name in raw:
            setattr(g, name, _count(raw, name))
    if raw.get("last_size") is not None:
        g.last_size = _count(raw, "last_size")
    for name in _GROUP_TABLES:
        table = _get(raw, name, dict) if name in raw else {}
        for reason, count in table.items():
            if not isinstance(reason, str) or not _is_count(count):
                raise CheckpointError(f"undecodable: bad group {name} entry")
            getattr(g, name)[reason] = count
    return g


def _bad(key: str) -> Any:
    raise CheckpointError(f"undecodable: field {key!r} has the wrong type")


def _vector(raw: dict[str, Any], key: str, limits: Limits) -> np.ndarray | None:
    """An optional float64 vector (statistics); absent in older checkpoints."""
    if key not in raw:
        return None
    try:
        _, arr = decode_tensor(raw[key], limits)
    except DecodeError as exc:
        raise CheckpointError(f"undecodable: {key}: {exc}") from None
    if arr.ndim != 1 or arr.dtype != np.dtype("<f8") or not np.isfinite(arr).all():
        raise CheckpointError(f"undecodable: {key} is not a finite float64 vector")
    return arr


def _tensors(items: list[Any], limits: Limits) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for item in items:
        try:
            name, arr = decode_tensor(item, limits)
        except DecodeError as exc:
            raise CheckpointError(f"undecodable: {exc}") from None
        if name in out:
            raise CheckpointError(f"undecodable: tensor {name!r} appears twice")
        out[name] = arr
    return out


def _get(raw: dict[str, Any], key: str, typ: type) -> Any:
    value = raw.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise CheckpointError(f"undecodable: field {key!r} must be {typ.__name__}")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(f"undecodable: field {key!r} must be an integer >= 0")
    return value


def _real(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CheckpointError(f"undecodable: {value!r} is not a number")
    return float(value)


def _opt_real(value: Any) -> float | None:
    if value is None:
        return None
    number = _real(value)
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------------------------- files


def save_checkpoint(home: Path, data: bytes) -> None:
    """Make ``data`` (from ``encode_checkpoint``) the newest checkpoint in ``home``, keeping the
    one it replaces as the previous. Blocking (fsync); raises ``OSError``."""
    current = home / CURRENT_NAME
    if current.exists():
        # an atomic rename: at every instant one of the two names holds a complete checkpoint
        os.replace(current, home / PREVIOUS_NAME)
    write_atomic(current, data)


@dataclass(frozen=True, slots=True)
class Loaded:
    checkpoint: Checkpoint
    path: Path


def load_checkpoint(
    home: Path, check: Callable[[Checkpoint], str | None] = lambda cp: None
) -> Loaded | None:
    """The newest valid checkpoint in ``home`` that ``check`` accepts (``check`` returns why a
    checkpoint is unusable, or None), or None. Never raises; logs each file it skips and why."""
    for name in (CURRENT_NAME, PREVIOUS_NAME):
        path = home / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("checkpoint %s cannot be read (%s); trying the previous one", path, exc)
            continue
        try:
            cp = decode_checkpoint(data)
        except CheckpointError as exc:
            log.warning("checkpoint %s is unusable: %s; trying the previous one", path, exc)
            if name == CURRENT_NAME:
                _set_aside(path)
            continue
        reason = check(cp)
        if reason is not None:
            log.warning("checkpoint %s is unusable: %s; trying the previous one", path, reason)
            continue
        return Loaded(cp, path)
    return None


def _set_aside(path: Path) -> None:
    """Move a corrupt newest checkpoint out of the rotation (kept for inspection)."""
    try:
        os.replace(path, path.with_name(BAD_NAME))
    except OSError as exc:
        log.warning("could not move %s aside: %s", path, exc)
    else:
        log.warning("moved %s to %s", path.name, BAD_NAME)
