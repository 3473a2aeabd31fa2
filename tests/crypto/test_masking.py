"""Masks, seeds, signatures and the fixed-point format of secure group averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import (
    MODEL_FORMAT,
    STATS_FORMAT,
    Contribution,
    OutOfRange,
    VectorLayout,
    decode_sum,
)
from gossiplearn.crypto.identity import Identity
from gossiplearn.crypto.masking import KeyAnnouncement, RoundContext
from gossiplearn.errors import LocalProtocolError

IDS = [Identity(bytes([i + 1]) * 32) for i in range(8)]
LAYOUT = VectorLayout.of([("w", "float32", (2, 3)), ("b", "float64", (4,))], stats=3)


def ctx(n: int = 3, round_id: bytes = bytes(16)) -> RoundContext:
    return RoundContext(round_id, tuple(i.peer_id for i in IDS[:n]), b"f" * 32, b"t" * 32)


def key(i: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes([100 + i]) * 32)


# ---------------------------------------------------------------------------- signatures


def test_an_announcement_verifies_for_exactly_its_round_group_model_and_task() -> None:
    c = ctx()
    ann = masking.announce(IDS[1], c, key(1), 7)
    assert ann.peer_id == IDS[1].peer_id and ann.samples == 7
    assert masking.verify(ann, c)
    other = [
        RoundContext(b"r" * 16, c.group, c.fingerprint, c.task),
        RoundContext(c.round_id, c.group[::-1], c.fingerprint, c.task),
        RoundContext(c.round_id, c.group, b"g" * 32, c.task),
        RoundContext(c.round_id, c.group, c.fingerprint, b"u" * 32),
    ]
    assert not any(masking.verify(ann, o) for o in other)


def test_a_changed_announcement_does_not_verify() -> None:
    c = ctx()
    ann = masking.announce(IDS[1], c, key(1), 7)
    forged = [
        KeyAnnouncement(ann.peer_id, masking.public_bytes(key(2)), ann.samples, ann.signature),
        KeyAnnouncement(ann.peer_id, ann.public_key, 8, ann.signature),
        KeyAnnouncement(IDS[2].peer_id, ann.public_key, ann.samples, ann.signature),
        KeyAnnouncement("not a peer id", ann.public_key, ann.samples, ann.signature),
        KeyAnnouncement(ann.peer_id, ann.public_key, ann.samples, bytes(64)),
    ]
    assert not any(masking.verify(f, c) for f in forged)


# ---------------------------------------------------------------------------- seeds and masks


def test_both_sides_of_a_pair_derive_the_same_seed_and_it_is_bound_to_the_round() -> None:
    c = ctx()
    a, b = IDS[0].peer_id, IDS[1].peer_id
    pub = masking.public_bytes
    seed = masking.pair_seed(key(0), c, a, b, pub(key(1)))
    assert len(seed) == 32
    assert seed == masking.pair_seed(key(1), c, b, a, pub(key(0)))
    assert seed != masking.pair_seed(key(0), ctx(round_id=b"x" * 16), a, b, pub(key(1)))
    assert seed != masking.pair_seed(key(0), ctx(4), a, b, pub(key(1)))
    assert seed != masking.pair_seed(key(0), c, a, IDS[2].peer_id, pub(key(2)))


def test_each_phase_of_a_round_has_its_own_seed() -> None:
    """The statistics' phase derives with another HKDF info than the model's (docs/protocol.md
    16.3), so no keystream masks two vectors; both sides agree on each."""
    c = ctx()
    a, b = IDS[0].peer_id, IDS[1].peer_id
    pub = masking.public_bytes
    model = masking.pair_seed(key(0), c, a, b, pub(key(1)))
    stats = masking.pair_seed(key(0), c, a, b, pub(key(1)), domain=masking.STATS_SEED_DOMAIN)
    assert stats != model
    assert stats == masking.pair_seed(
        key(1), c, b, a, pub(key(0)), domain=masking.STATS_SEED_DOMAIN
    )
    assert not np.array_equal(masking.mask_words(stats, 8), masking.mask_words(model, 8))
    with pytest.raises(LocalProtocolError):
        masking.pair_seed(key(0), c, a, b, pub(key(1)), domain=b"gossiplearn/other/v1")


@pytest.mark.parametrize("public", [bytes(32), (1).to_bytes(32, "little"), b"short"])
def test_a_small_order_or_malformed_public_key_gives_no_seed(public: bytes) -> None:
    with pytest.raises(masking.BadKey):
        masking.pair_seed(key(0), ctx(), IDS[0].peer_id, IDS[1].peer_id, public)


def test_masks_are_the_chacha20_keystream_as_little_endian_words() -> None:
    seed = bytes(range(32))
    words = masking.mask_words(seed, 5)
    assert words.dtype == np.uint64 and words.shape == (5,)
    assert np.array_equal(masking.mask_words(seed, 9)[:5], words)  # one stream, any length
    assert not np.array_equal(masking.mask_words(bytes(32), 5), words)
    # RFC 8439 A.1, test vector 1: all-zero key and nonce, block 0 starts 76 b8 e0 ad a0 f1 ..
    assert masking.mask_words(bytes(32), 1)[0] == int.from_bytes(
        bytes.fromhex("76b8e0ada0f13d90"), "little"
    )


def _masked_group(
    n: int, values: list[np.ndarray], weights: list[int]
) -> tuple[list[np.ndarray], list[np.ndarray], VectorLayout]:
    """Every member's unmasked and masked words for one round."""
    c = ctx(n, round_id=bytes(range(16)))
    layout = VectorLayout.of([("x", "float64", (values[0].size,))], stats=None)
    plain, masked = [], []
    for i in range(n):
        seeds = {
            c.group[j]: masking.pair_seed(
                key(i), c, c.group[i], c.group[j], masking.public_bytes(key(j))
            )
            for j in range(n)
            if j != i
        }
        own = Contribution.of(layout, {"x": values[i]}, None)
        words = own.encode(weight=weights[i] / sum(weights), stats_weight=1 / n)
        plain.append(words)
        masked.append(masking.apply_masks(words, c.group[i], seeds))
    return plain, masked, layout


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(3, 8),
    size=st.integers(1, 6),
    data=st.data(),
)
def test_the_masked_sum_is_the_weighted_average_to_fixed_point_precision(
    n: int, size: int, data: st.DataObject
) -> None:
    floats = st.floats(-1e6, 1e6, allow_nan=False)
    values = [np.array(data.draw(st.lists(floats, min_size=size, max_size=size))) for _ in range(n)]
    weights = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n))
    plain, masked, layout = _masked_group(n, values, weights)
    total = masking.sum_words(masked, size)
    assert np.array_equal(total, masking.sum_words(plain, size))  # the masks cancel exactly
    avg, _ = decode_sum(layout, total)
    expected = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
    # n roundings of 2^-33, plus float64 rounding of weight * value (values up to 1e6)
    assert np.allclose(avg["x"], expected, rtol=0, atol=n * 2.0**-32 + 1e-9)
    assert not any(np.array_equal(m, p) for m, p in zip(masked, plain, strict=True))


# ---------------------------------------------------------------------------- fixed point


def test_fixed_point_encodes_negative_values_in_twos_complement() -> None:
    words = MODEL_FORMAT.encode(np.array([-1.0, 0.5, -(2.0**-32)]))
    assert words.dtype == np.uint64
    assert list(words) == [2**64 - 2**32, 2**31, 2**64 - 1]
    assert list(MODEL_FORMAT.decode(words)) == [-1.0, 0.5, -(2.0**-32)]
    assert MODEL_FORMAT.bound == 2.0**30 and STATS_FORMAT.bound == 2.0**110


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.floats(-(2.0**105), 2.0**105) | st.floats(-1e-3, 1e-3) | st.floats(-1e-9, 1e-9),
        min_size=1,
        max_size=8,
    ),
    g=st.integers(3, 16),
)
def test_statistics_take_five_words_each_and_sum_to_float64_precision(
    values: list[float], g: int
) -> None:
    """The first word is ``floor(x · 2^-48)``, each next one the following 32 bits: a sum of
    ``g`` members' values decodes to float64's precision, for a sum of squares of revenues
    (10^18 and more) as for the sums of a column of rates (10^-9)."""
    x = np.array(values)
    words = STATS_FORMAT.encode(x)
    assert words.shape == (5 * x.size,)
    assert (words[x.size :].astype(np.uint64) <= np.uint64(2**32)).all()
    total = masking.sum_words([words] * g, words.size)
    exact = [math.fsum([v] * g) for v in values]
    np.testing.assert_allclose(
        STATS_FORMAT.decode(total), exact, rtol=1e-15, atol=g * STATS_FORMAT.resolution
    )


def test_the_layout_flattens_in_sorted_name_order_then_the_statistics() -> None:
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": -np.arange(4.0)}
    own = Contribution.of(LAYOUT, tensors, np.array([10.0, 20.0, 30.0]))
    words = own.encode(weight=1.0, stats_weight=1.0)
    assert words.shape == (LAYOUT.length,) == (25,)  # five words a statistic
    assert list(MODEL_FORMAT.decode(words[:10])) == [0, -1, -2, -3, 0, 1, 2, 3, 4, 5]
    # the third words of the statistics hold their integer parts × 2^16
    assert not words[10:16].any() and not words[19:].any()
    assert list(words[16:19]) == [10 << 16, 20 << 16, 30 << 16]
    back, stats = decode_sum(LAYOUT, words)
    assert back["w"].dtype == np.float32 and back["w"].shape == (2, 3)
    assert np.array_equal(back["w"], tensors["w"]) and np.array_equal(back["b"], tensors["b"])
    assert stats is not None and list(stats) == [10.0, 20.0, 30.0]


@pytest.mark.parametrize(
    ("w", "stats", "reason"),
    [
        (2.0**30 * 1.0001, 0.0, "out-of-range"),
        (-(2.0**31), 0.0, "out-of-range"),
        (np.nan, 0.0, "non-finite"),
        (np.inf, 0.0, "non-finite"),
        (0.0, 2.0**111, "out-of-range"),
        (0.0, -np.inf, "non-finite"),
    ],
)
def test_a_value_that_could_wrap_the_sum_is_refused_before_encoding(
    w: float, stats: float, reason: str
) -> None:
    tensors = {"w": np.full((2, 3), w, np.float32), "b": np.zeros(4)}
    with pytest.raises(OutOfRange) as info:
        Contribution.of(LAYOUT, tensors, np.full(3, stats))
    assert info.value.reason == reason


def test_values_at_the_bound_in_every_member_still_sum_without_wrapping() -> None:
    n = 8
    plain, _, layout = _masked_group(n, [np.array([-(2.0**30), 2.0**30])] * n, [1] * n)
    avg, _ = decode_sum(layout, masking.sum_words(plain, 2))
    assert list(avg["x"]) == [-(2.0**30), 2.0**30]


def test_a_sum_beyond_the_bound_is_refused_on_decoding() -> None:
    words = np.zeros(LAYOUT.length, np.uint64)
    words[0] = np.uint64(2**62 + 2**40)
    with pytest.raises(OutOfRange):
        decode_sum(LAYOUT, words)


def test_tensors_that_do_not_match_the_layout_are_our_bug() -> None:
    good = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(4)}
    with pytest.raises(LocalProtocolError):
        Contribution.of(LAYOUT, {"w": good["w"]}, np.zeros(3))
    with pytest.raises(LocalProtocolError):
        Contribution.of(LAYOUT, {**good, "b": np.zeros(5)}, np.zeros(3))
    with pytest.raises(LocalProtocolError):
        Contribution.of(LAYOUT, good, None)


def test_the_worked_example_of_protocol_md_16_8() -> None:
    ids = [Identity(bytes([i + 1]) * 32) for i in range(3)]
    keys = [X25519PrivateKey.from_private_bytes(bytes([0x40 + i]) * 32) for i in range(3)]
    c = RoundContext(bytes(range(16)), tuple(i.peer_id for i in ids), b"f" * 32, b"t" * 32)
    assert c.group[1] == "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"
    assert masking.public_bytes(keys[0]).hex().startswith("d7b5e81d336e578b")
    signed = masking.announcement_bytes(c, c.group[1], masking.public_bytes(keys[1]), 20)
    assert len(signed) == 365 and signed.startswith(b"\x98\xc4\x18gossiplearn/group-key/v1")
    assert masking.announce(ids[1], c, keys[1], 20).signature.hex() == (
        "f4bb59a8e0589ad991f052d725ee74fec1f3dbe7b9a707d72a9ee47ecf490f1c"
        "e2d408367e3ca06592d9796e9dfe31ef826c720307df1fb0f37677bb49396805"
    )
    seed = masking.pair_seed(keys[0], c, c.group[0], c.group[1], masking.public_bytes(keys[1]))
    assert seed.hex() == "646e113bea736fd65eddf6b6851c2484f2433e192e5c7fee5508d8215e241cf2"
    assert list(masking.mask_words(seed, 2)) == [0x56869450B125F98B, 0x7A9A851EEA4AF122]
    assert masking.precedes(c.group[1], c.group[0])
    assert list(MODEL_FORMAT.encode(np.array([1.5, -0.25]))) == [0x180000000, 0xFFFFFFFFC0000000]
    stats = masking.pair_seed(
        keys[0],
        c,
        c.group[0],
        c.group[1],
        masking.public_bytes(keys[1]),
        domain=masking.STATS_SEED_DOMAIN,
    )
    assert stats.hex() == "311c0450f938e5523d1b07d5444dd736ed1bed484b146aee58da17e40336760e"
    assert list(masking.mask_words(stats, 2)) == [0xF3D2F91B29FFDAE7, 0x0BFD517E7A8BD79A]
    assert list(STATS_FORMAT.encode(np.array([2.5, -0.25, 1 / 3]))) == [
        0,  # the first words: floor(x · 2^-48)
        0xFFFFFFFFFFFFFFFF,
        0,
        0,  # the second words: the next 32 bits
        0xFFFFFFFF,
        0,
        0x28000,  # the third words
        0xFFFFC000,
        0x5555,
        0,  # the fourth words
        0,
        0x55555555,
        0,  # the fifth words (the last, rounded)
        0,
        0x54000000,
    ]
