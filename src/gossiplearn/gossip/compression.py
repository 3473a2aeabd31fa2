"""Lossy wire encodings of a model, to send fewer bytes (pure: numpy only).

A ``ModelOffer`` normally carries each tensor in its own dtype. With an encoding (``enc``) the
sender quantises every tensor and the receiver turns it back into its own dtype before any
check or merge:

- ``fp16``: IEEE binary16 (wire dtype ``float16``), 2 bytes a value; a model that does not fit
  (a value beyond ±65504 would become infinite) is sent exactly instead;
- ``bf16``: the upper half of each float32 (wire dtype ``bfloat16``, rounded to nearest even),
  2 bytes a value, the float32 range with 8 bits of precision;
- ``int8``: symmetric per-tensor quantisation (wire dtype ``int8``), 1 byte a value plus one
  float32 scale per tensor: ``x ≈ q × scale``, ``scale = max|x| / 127``.

Error feedback (Seide et al. 2014; Karimireddy et al. 2019): the sender adds what the previous
encodings lost to the next model it encodes, ``sent = Q(x + r)``, ``r ← x + r − sent``, so the
errors do not add up: over a run the receivers see the model plus a bounded, telescoping
error. The residual is the caller's (one per peer), in float32.

Invariants: ``decode`` returns finite arrays of the requested dtype and shape, or raises
``Undecodable`` (the exchange turns it into a refusal under its ``reason``); nothing here trusts
the sender's scales.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gossiplearn.gossip.messages import ENCODING_WIRE, ENCODINGS

FP16_MAX = 65504.0


class Undecodable(ValueError):
    """An encoded model that cannot be decoded; ``reason`` is a refusal reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # "incompatible" (wire dtypes), "malformed" (scales), "non-finite"
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Encoded:
    tensors: dict[str, np.ndarray]  # wire arrays: float16, uint16 (bfloat16 bits) or int8
    scales: tuple[float, ...]  # int8: one per tensor, in ``tensors`` order; else empty
    residual: dict[str, np.ndarray]  # what this encoding lost, for the next one (float32)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → the upper 16 bits of each value, rounded to nearest even (NaN stays NaN)."""
    bits = np.asarray(x, dtype=np.float32, order="C").view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """The upper halves ``bits`` (uint16) as float32 values."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def encode(
    tensors: Mapping[str, np.ndarray],
    enc: str,
    residual: Mapping[str, np.ndarray] | None = None,
) -> Encoded | None:
    """Encode ``tensors`` (plus ``residual``, if any) as ``enc``; None when the model cannot be
    sent that way (fp16: out of range; any: not finite), in which case send it exactly."""
    if enc not in ENCODINGS:
        raise ValueError(f"unknown encoding {enc!r}; known: {', '.join(ENCODINGS)}")
    wire: dict[str, np.ndarray] = {}
    scales: list[float] = []
    lost: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            x = arr.astype(np.float32)
            if residual is not None and name in residual:
                x += residual[name]
        if not np.isfinite(x).all():
            return None
        if enc == "fp16":
            if x.size and float(np.max(np.abs(x))) > FP16_MAX:
                return None
            w = x.astype(np.float16)
            back = w.astype(np.float32)
        elif enc == "bf16":
            w = bf16_bits(x)
            back = bf16_values(w)
        else:
            peak = float(np.max(np.abs(x))) if x.size else 0.0
            scale = peak / 127.0 if peak > 0 else 0.0
            if not np.float32(scale):  # all zero, or so small that the scale underflows float32
                scale = 0.0
            w = (
                np.clip(np.rint(x / np.float32(scale)), -127, 127).astype(np.int8)
                if scale
                else np.zeros(x.shape, np.int8)
            )
            back = w.astype(np.float32) * np.float32(scale)
            scales.append(scale)
        wire[name] = w
        lost[name] = x - back
    return Encoded(wire, tuple(scales), lost)


def decode(
    tensors: Mapping[str, np.ndarray],
    enc: str,
    scales: tuple[float, ...],
    dtypes: Mapping[str, str],
) -> dict[str, np.ndarray]:
    """Wire arrays of encoding ``enc`` → arrays of ``dtypes[name]`` (the receiver's own).
    Raises ``Undecodable`` if a wire dtype, the scales or a decoded value is wrong."""
    if enc not in ENCODINGS:
        raise Undecodable("incompatible", f"unknown encoding {enc!r}")
    wire = ENCODING_WIRE[enc]
    if enc == "int8" and len(scales) != len(tensors):
        raise Undecodable("malformed", f"{len(scales)} scales for {len(tensors)} tensors")
    if enc != "int8" and scales:
        raise Undecodable("malformed", f"scales sent with encoding {enc}")
    out: dict[str, np.ndarray] = {}
    for i, (name, arr) in enumerate(tensors.items()):
        got = "bfloat16" if enc == "bf16" and arr.dtype == np.uint16 else arr.dtype.name
        if got != wire:
            raise Undecodable("incompatible", f"tensor {name!r} is {got}, {enc} sends {wire}")
        if enc == "fp16":
            values = arr.astype(np.float32)
        elif enc == "bf16":
            values = bf16_values(arr)
        else:
            scale = scales[i]
            if not (np.isfinite(scale) and scale >= 0):
                raise Undecodable("malformed", f"tensor {name!r}: scale {scale!r} is not >= 0")
            with np.errstate(over="ignore"):  # an absurd scale overflows: refused below
                values = arr.astype(np.float32) * np.float32(scale)
        with np.errstate(over="ignore"):
            result = values.astype(dtypes[name])
        if not np.isfinite(result).all():
            raise Undecodable("non-finite", f"tensor {name!r} holds NaN or Inf once decoded")
        out[name] = result
    return out
