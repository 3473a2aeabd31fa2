"""Applying a received model to ours: the merge plan, screening, adoption and the model's age.

``ModelMerger.apply`` is what a node does once an exchange has delivered a structurally valid
model (``gossip.exchange``): it follows the plan (``gossip.merge.plan_merge``), screens what it
merges (``gossip.screening``) and moves our model through the ``Learner``. The node counts and
logs the outcome and penalises the sender where the outcome says so.

Invariants:
- ``keep``: nothing is screened or merged; our model and age are untouched (but for a move to
  the exchange's statistics, which does not change what the model computes).
- Statistics (``gossip.aggregate``) are averaged in every exchange that is not refused,
  whatever the merge kind: they are sums of data, and a fresh peer's data counts as much as
  anyone's.
- ``adopt`` happens only for a model that passes the norm rule and whose loss on our validation
  data is no worse than our own model's; otherwise it falls back to the screened average.
- The model's age is ``learner.samples_seen + age_offset`` and moves with every merge as a
  parameter does: ``age += pull * (their_age - age)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gossiplearn.gossip.exchange import Merge, Refused
from gossiplearn.gossip.merge import MergeKind, merge_weight, merged_age
from gossiplearn.gossip.screening import Action, Measures, Screen
from gossiplearn.peer.learning.learner import Learner


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``ModelMerger.apply`` did with one received model."""

    kind: MergeKind  # AVERAGE also when a planned adoption was not taken
    pull: float  # how far we moved toward it: 1 adopted, 0 kept
    clipped: str = ""  # screening capped the pull: why
    far: bool = False  # a far outlier (an offence by its sender)
    not_adopted: str = ""  # a planned adoption that was not taken: why


class ModelMerger:
    def __init__(self, learner: Learner, screen: Screen) -> None:
        self.learner = learner
        self.screen = screen
        self.age_offset = 0.0  # model age minus our own SGD examples (checkpointed)

    def age(self) -> float:
        """Examples of SGD behind our model: our own, plus what merges brought in."""
        return self.learner.samples_seen + self.age_offset

    async def apply(
        self,
        snapshot: Mapping[str, np.ndarray],
        own_age: float,
        merge: Merge,
        measures: Measures,
        stats: np.ndarray | None = None,
    ) -> Applied:
        """Apply ``merge`` (theirs against the ``snapshot`` we sent, when our age was
        ``own_age``; in our statistics' coordinates), and move to the exchange's statistics
        ``stats`` if the task has them. Raises ``Refused`` when screening refuses the model
        (nothing applied)."""
        theirs = merge.offer.tensors
        if merge.kind is MergeKind.KEEP:  # a fresh peer takes our model; its own holds nothing
            await self._move(snapshot, merge, own_age, 0.0, stats)
            return Applied(MergeKind.KEEP, 0.0)
        if merge.kind is MergeKind.ADOPT:
            why_not = await self._adoption_refusal(snapshot, theirs, measures)
            if why_not is None:
                await self._move(snapshot, merge, own_age, 1.0, stats)
                return Applied(MergeKind.ADOPT, 1.0)
            alpha = merge_weight(self.learner.samples, merge.offer.samples)
        else:
            alpha = merge.alpha
            why_not = ""
        verdict = self.screen.assess(measures)
        if verdict.action is Action.REFUSE:
            raise Refused(verdict.reason, verdict.detail)
        pull = alpha * verdict.scale
        await self._move(snapshot, merge, own_age, pull, stats)
        clipped = verdict.detail if verdict.action is Action.CLIP else ""
        return Applied(MergeKind.AVERAGE, pull, clipped, verdict.far, why_not)

    async def apply_average(
        self,
        snapshot: Mapping[str, np.ndarray],
        average: Mapping[str, np.ndarray],
        measures: Measures,
        stats: np.ndarray | None = None,
    ) -> Applied:
        """Move our model to a secure group's ``average`` (``gossip.group``), as a delta
        against the ``snapshot`` we contributed, screened as one received model. With
        ``stats`` (the group's average statistics: ``snapshot`` and ``average`` are in their
        coordinates) we first move to them, rebased as after a pairwise exchange, then apply
        the delta there. Raises ``Refused`` (no offence: nobody can tell which member poisoned
        it) when screening refuses it or it is a far outlier; nothing is applied then (nor the
        statistics). Ages are not exchanged in a group round: ours stays as it is."""
        verdict = self.screen.assess(measures)
        if verdict.action is Action.REFUSE or verdict.far:
            raise Refused(verdict.reason, verdict.detail, offence=False)
        if stats is not None:
            # Statistics first, then the delta in their coordinates: with a full pull we land
            # on the average itself, like every member, even where rebasing there and back is
            # no identity (a column constant under our statistics, tasks/tabular.py). Training
            # steps taken meanwhile are rebased with the model, under the trainer's lock.
            await self.learner.merge(average, average, 0.0, stats)  # moves, adds nothing
        await self.learner.merge(snapshot, average, verdict.scale)
        clipped = verdict.detail if verdict.action is Action.CLIP else ""
        return Applied(MergeKind.AVERAGE, verdict.scale, clipped)

    async def _move(
        self,
        snapshot: Mapping[str, np.ndarray],
        merge: Merge,
        own_age: float,
        pull: float,
        stats: np.ndarray | None,
    ) -> None:
        await self.learner.merge(snapshot, merge.offer.tensors, pull, stats)
        self.age_offset += merged_age(own_age, merge.offer.age, pull) - own_age

    async def _adoption_refusal(
        self,
        snapshot: Mapping[str, np.ndarray],
        theirs: Mapping[str, np.ndarray],
        measures: Measures,
    ) -> str | None:
        """Why we should not adopt ``theirs`` outright (None: adopt it). A fresh model is cheap
        to give up, but a poisoned one must not replace it: the norm rule, then no worse than
        our own model on our validation data."""
        verdict = self.screen.assess_adoption(measures)
        if verdict.action is Action.REFUSE:
            return verdict.detail
        ours = await self.learner.evaluate_tensors(snapshot)
        candidate = await self.learner.evaluate_tensors(theirs)
        if "loss" not in ours or "loss" not in candidate:
            return "there is no validation data to check it on"
        if not candidate["loss"] <= ours["loss"]:  # NaN fails too
            return f"its validation loss {candidate['loss']:.4g} is above ours {ours['loss']:.4g}"
        return None
