"""A model as one vector of integers modulo 2^64, for secure group averaging (docs/protocol.md 16).

Additive masking (``crypto.masking``) needs a group: its members' values must add up exactly,
whatever the masks. Floats do not; integers modulo 2^64 do (numpy's uint64 arithmetic wraps).
So a member's model becomes one uint64 vector:

- the layout (``VectorLayout``): the tensors flattened in C order, one after another in sorted
  name order, then the statistics vector (``gossip.aggregate``), if any. A round of a task with
  statistics sums them alone first (a layout of no tensors), then the model alone (a layout
  without statistics): docs/protocol.md 16.4;
- the format (``FixedPoint``): a value ``x`` of a part with ``F`` fractional bits is the int64
  ``round(x · 2^F)`` (round half to even), read as uint64 (two's complement). A sum of words
  modulo 2^64, read back as int64 and divided by 2^F, is the sum of the values within
  ``g · 2^-(F+1)`` for ``g`` summands, as long as the true sum lies in [-2^63, 2^63).

Two formats: tensors use ``F = 32`` (|x| ≤ 2^30 ≈ 1.07e9, resolution 2^-32 ≈ 2.3e-10), one
word a value. The statistics are sums over a member's rows, from a column's sum of squares
(large) to the sums of a column of values around 10^-3 (small), and the consortium's means and
deviations are ratios of them: they need range and relative precision both (a company's
column of revenues in the millions over a million rows has a sum of squares near 10^18; a
column of rates near 10^-6 sums of squares near 10^-12 a row). So they take five words a value
(``SplitFixedPoint``): a first word with ``F = -48`` (|x| ≤ 2^110 ≈ 1.3e33), then four of 32
bits each, down to a resolution of 2^-80 ≈ 8.3e-25.

Each member contributes ``weight · x``: its sample count over the group's total for tensors
(the sum is then the sample-weighted average), ``1/g`` for statistics (sums are averaged
plainly, docs/protocol.md 7.8). The weights of a group sum to 1.

Invariants:
- Nothing is encoded that could make the group's sum wrap: every value must be finite and
  ``|x| ≤ bound = 2^(62−F)`` (``Contribution.of`` raises ``OutOfRange`` before any word is
  made). With weights summing to 1 the sum is then within ``2^62 + g/2 < 2^63``; a word after
  a statistic's first is at most 2^32, so ``g ≤ 16`` of them sum below 2^37.
- ``decode_sum`` refuses (``OutOfRange``) a sum beyond the bound: one that honest members
  cannot produce, so at least one of them broke the rule above.
- Pure: numpy only; no randomness.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from gossiplearn.errors import GossipError, LocalProtocolError

MODEL_FRACTION_BITS = 32
STATS_FRACTION_BITS = -48  # the statistics' first word counts units of 2^48
STATS_WORDS = 5  # then four words of 32 bits: down to 2^-80
LOW_WORD_BITS = 32  # every word of a statistic after its first (SplitFixedPoint)
WORD = np.dtype("<u8")  # a word on the wire: little-endian uint64


class OutOfRange(GossipError):
    """A vector cannot be encoded (or a sum decoded) without risk of wrapping modulo 2^64.
    ``reason``: ``"non-finite"`` or ``"out-of-range"``. Raised before anything is sent: the
    round is abandoned rather than fed a value that would corrupt every member's average."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FixedPoint:
    """Signed fixed point with ``fraction_bits`` fractional bits, as uint64 modulo 2^64."""

    fraction_bits: int

    @property
    def bound(self) -> float:
        """The largest magnitude a member may contribute (see the module's invariants)."""
        return float(2 ** (62 - self.fraction_bits))

    @property
    def resolution(self) -> float:
        """One step of the format: an encoded value is within half of it of the true one."""
        return 2.0**-self.fraction_bits

    def check(self, values: np.ndarray, what: str) -> None:
        """Raise ``OutOfRange`` unless every value is finite and within ``bound``."""
        if values.size == 0:
            return
        if not np.isfinite(values).all():
            raise OutOfRange("non-finite", f"{what} holds NaN or Inf")
        peak = float(np.max(np.abs(values)))
        if peak > self.bound:
            raise OutOfRange(
                "out-of-range", f"{what} holds {peak:.6g}, beyond the bound {self.bound:.6g}"
            )

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The words of float64 ``values`` that ``check`` accepted (their weighted share)."""
        scaled = np.rint(np.asarray(values, dtype=np.float64) * 2.0**self.fraction_bits)
        return scaled.astype(np.int64).view(np.uint64)

    def decode(self, words: np.ndarray) -> np.ndarray:
        """Float64 values of summed words (read as signed)."""
        signed = np.asarray(words, dtype=np.uint64).view(np.int64)
        return signed.astype(np.float64) / 2.0**self.fraction_bits


@dataclass(frozen=True, slots=True)
class SplitFixedPoint:
    """``words`` words a value: ``x`` rounded to the resolution ``2^-(F + 32 (words - 1))`` as
    an integer, in two's complement, cut into a first word ``floor(x · 2^F)`` (an int64, as
    ``FixedPoint`` writes one) and the following 32 bits each, in [0, 2^32). ``encode`` writes
    the ``n`` first words, then the ``n`` second words, and so on; sums of each, modulo 2^64,
    decode to ``Σ_j Σw_j · 2^-(F + 32j)``. The range is ``FixedPoint(F)``'s. Python integers
    do the cutting and the joining: in float64, ``x · 2^F − floor(x · 2^F)`` for a small
    negative ``x`` rounds to 1, and adding the words' floats back cancels bits."""

    fraction_bits: int  # F, of the first word (negative: the first word counts 2^-F units)
    words: int  # at least 2; the 32-bit words after the first never wrap for g ≤ 16 members

    @property
    def high(self) -> FixedPoint:
        return FixedPoint(self.fraction_bits)

    @property
    def bound(self) -> float:
        return self.high.bound

    @property
    def resolution(self) -> float:
        """One step of the last word: an encoded value is within half of it of the true one."""
        return 2.0 ** -(self.fraction_bits + LOW_WORD_BITS * (self.words - 1))

    def check(self, values: np.ndarray, what: str) -> None:
        """Raise ``OutOfRange`` unless every value is finite and within ``bound``."""
        self.high.check(values, what)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """The ``words · n`` words of ``n`` float64 ``values`` that ``check`` accepted. Each
        value becomes the integer ``round(x · 2^R)``, ``R = -F + ...`` the resolution's bits,
        exactly (a float64 is a ratio of integers), then is cut into words from the last:
        32 bits each, the rest (signed) in the first."""
        shift = self.fraction_bits + LOW_WORD_BITS * (self.words - 1)
        low = (1 << LOW_WORD_BITS) - 1
        flat = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
        out = np.zeros((self.words, len(flat)), dtype=np.int64)
        for i, x in enumerate(flat):
            top, below = x.as_integer_ratio()  # below is a power of two
            bits = below.bit_length() - 1
            if bits <= shift:
                whole = top << (shift - bits)
            else:  # round half up to the resolution
                cut = bits - shift
                whole = (top + (1 << (cut - 1))) >> cut
            for j in range(self.words - 1, 0, -1):
                out[j, i] = whole & low
                whole >>= LOW_WORD_BITS  # floor: a negative value's first word is negative
            out[0, i] = whole
        return out.reshape(-1).view(np.uint64)

    def decode(self, words: np.ndarray) -> np.ndarray:
        """Float64 values of summed words (``words · n`` of them, in ``encode``'s order): each
        value's words are first combined exactly (as a Python integer: up to ~190 bits), then
        rounded once to float64 (adding the words' floats would cancel and lose bits)."""
        signed = np.asarray(words, dtype=np.uint64).view(np.int64)
        n = signed.size // self.words
        columns = [signed[j * n : (j + 1) * n].tolist() for j in range(self.words)]
        scale = -(self.fraction_bits + LOW_WORD_BITS * (self.words - 1))
        out = np.empty(n, dtype=np.float64)
        for i in range(n):
            total = 0
            for column in columns:
                total = (total << LOW_WORD_BITS) + column[i]
            out[i] = math.ldexp(float(total), scale)
        return out


MODEL_FORMAT = FixedPoint(MODEL_FRACTION_BITS)
STATS_FORMAT = SplitFixedPoint(STATS_FRACTION_BITS, STATS_WORDS)


@dataclass(frozen=True, slots=True)
class Part:
    """One tensor of the layout: its name, the dtype it is restored to, its shape."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, slots=True)
class VectorLayout:
    """Where each tensor, and the statistics, sit in the vector. ``stats``: the statistics
    vector's length, None for a task without statistics."""

    parts: tuple[Part, ...]
    stats: int | None = None

    def __post_init__(self) -> None:
        names = [p.name for p in self.parts]
        if names != sorted(set(names)):
            raise ValueError("layout parts must have unique names in sorted order")

    @staticmethod
    def of(specs: Iterable[tuple[str, str, tuple[int, ...]]], stats: int | None) -> VectorLayout:
        """The layout of (name, dtype, shape) triples (any order) and a statistics length."""
        parts = sorted((Part(n, d, tuple(s)) for n, d, s in specs), key=lambda p: p.name)
        return VectorLayout(tuple(parts), stats)

    @property
    def model_length(self) -> int:
        return sum(p.size for p in self.parts)

    @property
    def length(self) -> int:
        """Words in the whole vector: the tensors, then ``STATS_FORMAT.words`` a statistic."""
        return self.model_length + STATS_FORMAT.words * (self.stats or 0)


@dataclass(frozen=True, slots=True)
class Contribution:
    """One member's values, flattened and checked: what it may add to a group's sum."""

    layout: VectorLayout
    model: np.ndarray  # float64, ``layout.model_length``
    stats: np.ndarray  # float64, ``layout.stats`` (empty without statistics)

    @staticmethod
    def of(
        layout: VectorLayout, tensors: Mapping[str, np.ndarray], stats: np.ndarray | None
    ) -> Contribution:
        """Flatten our own ``tensors`` and ``stats``. Raises ``OutOfRange`` for a value that
        may not be encoded, ``LocalProtocolError`` when they do not match ``layout``."""
        if set(tensors) != {p.name for p in layout.parts}:
            raise LocalProtocolError("the tensors do not match the round's layout")
        flat = []
        for part in layout.parts:
            arr = np.asarray(tensors[part.name])
            if tuple(arr.shape) != part.shape:
                raise LocalProtocolError(f"tensor {part.name!r} has shape {list(arr.shape)}")
            flat.append(arr.astype(np.float64).reshape(-1))
        model = np.concatenate(flat) if flat else np.zeros(0)
        if (stats is None) != (layout.stats is None):
            raise LocalProtocolError("statistics present exactly when the layout has them")
        vec = np.zeros(0) if stats is None else np.asarray(stats, dtype=np.float64).reshape(-1)
        if vec.size != (layout.stats or 0):
            raise LocalProtocolError(f"statistics of length {vec.size}, layout {layout.stats}")
        MODEL_FORMAT.check(model, "the model")
        STATS_FORMAT.check(vec, "the statistics")
        return Contribution(layout, model, vec)

    def encode(self, *, weight: float, stats_weight: float) -> np.ndarray:
        """The words of ``weight · model`` then ``stats_weight · stats`` (weights in [0, 1])."""
        if not (0.0 <= weight <= 1.0 and 0.0 <= stats_weight <= 1.0):
            raise LocalProtocolError("a contribution's weights lie in [0, 1]")
        return np.concatenate(
            [
                MODEL_FORMAT.encode(self.model * weight),
                STATS_FORMAT.encode(self.stats * stats_weight),
            ]
        )


def decode_sum(
    layout: VectorLayout, words: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The tensors (in their layout dtypes) and statistics (float64) of a group's summed words.
    Raises ``OutOfRange`` for a sum no group of honest members can produce."""
    if words.shape != (layout.length,):
        raise LocalProtocolError(f"{words.shape} words for a layout of {layout.length}")
    model = MODEL_FORMAT.decode(words[: layout.model_length])
    stats = STATS_FORMAT.decode(words[layout.model_length :])
    # Honest sums stay within the bound plus rounding (g/2 steps, far below 1).
    for values, fmt, what in ((model, MODEL_FORMAT, "model"), (stats, STATS_FORMAT, "stats")):
        if values.size and float(np.max(np.abs(values))) > fmt.bound + 1.0:
            raise OutOfRange("out-of-range", f"the summed {what} lies beyond the bound")
    tensors: dict[str, np.ndarray] = {}
    at = 0
    for part in layout.parts:
        tensors[part.name] = model[at : at + part.size].reshape(part.shape).astype(part.dtype)
        at += part.size
    return tensors, (None if layout.stats is None else stats)
