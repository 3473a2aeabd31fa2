"""Lossy wire encodings: error bounds, error feedback, refusals of bad encoded input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossiplearn.gossip.compression import (
    FP16_MAX,
    Undecodable,
    bf16_bits,
    bf16_values,
    decode,
    encode,
)
from gossiplearn.gossip.messages import ENCODINGS, Limits, ModelOffer
from gossiplearn.gossip.messages import decode as decode_message
from gossiplearn.gossip.messages import encode as encode_message

models = st.dictionaries(
    st.sampled_from(["w", "b", "emb"]),
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=0, max_dims=2, max_side=6),
        elements=st.floats(-1e4, 1e4, width=32),
    ),
    min_size=1,
)
DTYPES = {"w": "float32", "b": "float32", "emb": "float32"}
# worst relative error of one value (fp16: 11-bit significand, bf16: 8-bit)
RELATIVE = {"fp16": 2**-11, "bf16": 2**-8}


@settings(deadline=None)
@given(models, st.sampled_from(ENCODINGS))
def test_encodings_round_trip_within_their_resolution(
    model: dict[str, np.ndarray], enc: str
) -> None:
    encoded = encode(model, enc)
    assert encoded is not None
    back = decode(encoded.tensors, enc, encoded.scales, DTYPES)
    for name, x in model.items():
        y = back[name]
        assert y.dtype == np.float32 and y.shape == x.shape
        if enc == "int8":
            scale = encoded.scales[list(model).index(name)]
            assert np.all(np.abs(y - x) <= scale / 2 * (1 + 1e-6) + 1e-30)
        else:
            tiny = 6.2e-5 if enc == "fp16" else 1.2e-38  # below: subnormal, absolute error
            assert np.all(np.abs(y - x) <= RELATIVE[enc] * np.abs(x) + tiny)
        # what was lost is exactly what the residual holds
        np.testing.assert_allclose(encoded.residual[name], x - y, rtol=0, atol=1e-6)


@pytest.mark.parametrize("enc", ENCODINGS)
def test_error_feedback_keeps_the_sent_models_on_average_exact(enc: str) -> None:
    rng = np.random.default_rng(0)
    x = {"w": rng.normal(size=1000).astype(np.float32)}
    residual = None
    total = np.zeros(1000, np.float64)
    rounds = 200
    for _ in range(rounds):
        encoded = encode(x, enc, residual)
        assert encoded is not None
        sent = decode(encoded.tensors, enc, encoded.scales, {"w": "float32"})["w"]
        total += sent
        residual = encoded.residual
    # errors telescope: the mean of what was sent differs from x by (r_0 - r_T) / rounds
    one = encode(x, enc)
    assert one is not None
    single = np.abs(decode(one.tensors, enc, one.scales, {"w": "float32"})["w"] - x["w"]).max()
    drift = np.abs(total / rounds - x["w"]).max()
    assert drift <= 2 * single / rounds + 1e-7
    assert drift < single / 10 or single == 0


def test_fp16_out_of_range_and_non_finite_models_are_sent_exactly() -> None:
    assert encode({"w": np.array([FP16_MAX * 2], np.float32)}, "fp16") is None
    for enc in ENCODINGS:
        assert encode({"w": np.array([1.0, np.nan], np.float32)}, enc) is None
        assert encode({"w": np.array([np.inf], np.float32)}, enc) is None
    assert encode({"w": np.array([3e38], np.float32)}, "bf16") is not None  # float32's range


def test_bf16_rounds_to_nearest_even() -> None:
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 0.0], np.float32)
    got = bf16_values(bf16_bits(x))
    assert got.tolist() == [1.0, 1.0, 1.0 + 4 * 2**-8, -2.5, 0.0]


@pytest.mark.parametrize(
    ("enc", "tensors", "scales", "reason"),
    [
        ("fp16", {"w": np.zeros(2, np.float32)}, (), "incompatible"),  # not float16
        ("bf16", {"w": np.zeros(2, np.float16)}, (), "incompatible"),
        ("int8", {"w": np.zeros(2, np.int8)}, (), "malformed"),  # no scale
        ("int8", {"w": np.zeros(2, np.int8)}, (1.0, 2.0), "malformed"),
        ("int8", {"w": np.zeros(2, np.int8)}, (-1.0,), "malformed"),
        ("int8", {"w": np.zeros(2, np.int8)}, (float("nan"),), "malformed"),
        ("fp16", {"w": np.zeros(2, np.float16)}, (1.0,), "malformed"),
        ("fp16", {"w": np.array([np.inf, 0], np.float16)}, (), "non-finite"),
        ("bf16", {"w": np.array([0x7F80, 0], np.uint16)}, (), "non-finite"),  # bf16 +inf
        ("int8", {"w": np.array([127, 1], np.int8)}, (3e38,), "non-finite"),  # overflows f32
    ],
)
def test_bad_encoded_models_are_refused_with_a_reason(
    enc: str, tensors: dict[str, np.ndarray], scales: tuple[float, ...], reason: str
) -> None:
    with pytest.raises(Undecodable) as info:
        decode(tensors, enc, scales, {"w": "float32"})
    assert info.value.reason == reason


@pytest.mark.parametrize("enc", ENCODINGS)
def test_encoded_offers_survive_the_codec(enc: str) -> None:
    model = {"w": np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)}
    encoded = encode(model, enc)
    assert encoded is not None
    offer = ModelOffer(b"f" * 32, 5, 1, None, None, encoded.tensors, enc=enc, scales=encoded.scales)
    body = encode_message(offer)
    got = decode_message(body, limits=Limits())
    assert isinstance(got, ModelOffer)
    assert (got.enc, got.scales) == (enc, encoded.scales)
    assert got.tensors["w"].tobytes() == encoded.tensors["w"].tobytes()
    # a quarter (int8) or half (16-bit) of the exact offer's tensor bytes
    exact = len(encode_message(ModelOffer(b"f" * 32, 5, 1, None, None, model)))
    assert len(body) < exact
