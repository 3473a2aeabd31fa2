"""ModelMerger: what a node does with a received model, on a real (numpy) learner."""

from __future__ import annotations

import numpy as np
import pytest

from gossiplearn.gossip.exchange import Merge, Refused
from gossiplearn.gossip.merge import MergeKind, measure
from gossiplearn.gossip.messages import ModelOffer
from gossiplearn.gossip.screening import Screen, ScreeningConfig
from gossiplearn.peer.node.merging import Applied, ModelMerger
from gossiplearn.peer.sim import VectorLearner

TARGET = {"w": np.full(8, 3.0)}


def merger(start: float, target: dict[str, np.ndarray] | None = TARGET) -> ModelMerger:
    """A merger over a learner whose model is all ``start``, trained toward ``target``."""
    learner = VectorLearner({"w": np.full(8, start)}, samples=100, target=target)
    return ModelMerger(learner, Screen(ScreeningConfig()))


def offer(w: np.ndarray, age: float = 50_000.0) -> ModelOffer:
    return ModelOffer(b"fp", 100, 10, None, None, {"w": w}, age=age)


async def apply(m: ModelMerger, kind: MergeKind, alpha: float, w: np.ndarray) -> Applied:
    learner = m.learner
    snapshot = await learner.snapshot()
    theirs = offer(w)
    return await m.apply(
        snapshot, m.age(), Merge(theirs, alpha, kind), measure(snapshot, theirs.tensors)
    )


def weights(m: ModelMerger) -> np.ndarray:
    learner = m.learner
    assert isinstance(learner, VectorLearner)
    return learner.tensors["w"]


async def test_a_better_model_is_adopted_outright_with_its_age() -> None:
    m = merger(1.0)
    applied = await apply(m, MergeKind.ADOPT, 1.0, np.full(8, 2.9))
    assert applied.kind is MergeKind.ADOPT and applied.pull == 1.0
    np.testing.assert_allclose(weights(m), 2.9)
    assert m.age() == 50_000.0


async def test_an_adoption_worse_on_our_validation_data_is_averaged_instead() -> None:
    m = merger(2.0)
    applied = await apply(m, MergeKind.ADOPT, 1.0, np.full(8, 1.0))  # farther from our target
    assert applied.kind is MergeKind.AVERAGE
    assert "validation loss" in applied.not_adopted
    np.testing.assert_allclose(weights(m), 1.5)  # the usual halfway average
    assert m.age() == 25_000.0


async def test_without_validation_data_nothing_is_adopted() -> None:
    m = merger(1.0, target=None)
    applied = await apply(m, MergeKind.ADOPT, 1.0, np.full(8, 1.2))
    assert applied.kind is MergeKind.AVERAGE
    assert "no validation data" in applied.not_adopted
    np.testing.assert_allclose(weights(m), 1.1)


async def test_an_adoption_of_a_scaled_model_is_refused_by_the_norm_rule() -> None:
    m = merger(1.0)
    with pytest.raises(Refused) as info:
        await apply(m, MergeKind.ADOPT, 1.0, np.full(8, 1000.0))
    assert info.value.reason == "norm"
    np.testing.assert_allclose(weights(m), 1.0)  # untouched
    assert m.age() == 0.0


async def test_keep_merges_nothing_and_screens_nothing() -> None:
    m = merger(1.0)
    applied = await apply(m, MergeKind.KEEP, 0.0, np.full(8, 1000.0))  # would fail the norm rule
    assert applied.kind is MergeKind.KEEP and applied.pull == 0.0
    np.testing.assert_allclose(weights(m), 1.0)
    assert m.age() == 0.0
    assert m.screen.reference_norm(1.0) == 1.0  # nothing recorded
