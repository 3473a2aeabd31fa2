"""Saving a running peer's progress and resuming it: the checkpoint service and start-up restore.

``Checkpointer.run`` writes a checkpoint (``peer/home/checkpoint.py``) every ``checkpoint_interval``
seconds; ``run_peer`` writes a last one at shutdown, with ``model.glm`` (read by the demo and by
older versions). ``resume`` restores the newest usable checkpoint into the trainer; its node
part is applied with ``resume_node`` before the node runs, so counters and histories continue.

Invariants:
- Start-up never fails because of what is saved: every unusable file is reported with its name
  and the reason, and the peer falls back to the previous checkpoint, then ``model.glm`` (homes
  written before checkpoints existed), then a fresh model.
- The node's counters are read in the trio thread (where they change); the trainer's state is
  taken under its lock and the file written in a worker thread, one write at a time.
- The status only reports a checkpoint once it is durably on disk.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from gossiplearn.errors import UserError
from gossiplearn.gossip.messages import ModelOffer, fingerprint, specs_of
from gossiplearn.peer.home.checkpoint import Checkpoint, NodeState, encode_checkpoint
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.node.node import Node
from gossiplearn.peer.node.stats import StatsState

log = logging.getLogger(__name__)


def resume(trainer: Trainer, home: Home) -> Checkpoint | None:
    """Restore the newest usable checkpoint of ``home`` into ``trainer`` and return it; else
    load ``model.glm`` if there is a usable one, and return None. Then reconcile the privacy
    ledger with the home's (``Privacy.begin``).

    Never raises for bad model or checkpoint files. Raises ``UserError`` when the trainer has
    differential privacy on and the ledger file is unusable (the privacy spent is unknown) or
    the model resumed was trained without it."""

    def check(cp: Checkpoint) -> str | None:
        return trainer.incompatibility(cp.trainer)

    loaded = home.load_checkpoint(check)
    resumed = None
    if loaded is not None:
        trainer.restore(loaded.checkpoint.trainer)
        log.info(
            "resumed from checkpoint %s (%d steps, written %s)",
            loaded.path,
            loaded.checkpoint.trainer.steps,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(loaded.checkpoint.created)),
        )
        resumed = loaded.checkpoint
    elif not _restore_model_file(trainer, home):
        log.info("no usable checkpoint or model in %s: starting from a fresh model", home)
    try:
        saved = home.privacy_ledger()
    except UserError as exc:
        if trainer.privacy.enabled:
            raise
        log.warning("%s", exc)
        saved = None
    trainer.privacy.begin(saved, trainer.steps)
    return resumed


def _restore_model_file(trainer: Trainer, home: Home) -> bool:
    """Load the model (not the optimiser or counters) saved by a peer without checkpoints."""
    path = home.model_file
    try:
        saved = home.saved_model()
    except UserError as exc:
        log.warning("%s; not using it", exc)
        return False
    if saved is None:
        return False
    ours = fingerprint(trainer.specs())
    if saved.fingerprint != ours or fingerprint(specs_of(saved.tensors)) != ours:
        log.warning("the saved model in %s belongs to another model architecture", path)
        return False
    if saved.task and saved.task != trainer.task_digest:
        log.warning("the saved model in %s belongs to another task contract", path)
        return False
    trainer.load(saved.tensors, saved.stats)
    trainer.steps = saved.steps
    trainer.privacy.restore(None, None)  # a model file has no ledger: its steps may be plain
    log.info("resumed the model saved in %s (%d steps)", path, saved.steps)
    return True


def model_offer(trainer: Trainer) -> ModelOffer:
    """The trainer's model as a ``ModelOffer``: tensors, task digest and statistics (what
    ``model.glm`` holds). Blocking."""
    return ModelOffer(
        fingerprint=fingerprint(trainer.specs()),
        samples=trainer.samples,
        steps=trainer.steps,
        accuracy=None,
        loss=None,
        tensors=trainer.snapshot(),
        task=trainer.task_digest,
        stats=trainer.statistics(),
    )


def save_model_file(trainer: Trainer, home: Home) -> None:
    """Write ``model.glm`` (blocking): the model alone, for the demo, evaluate, predict and
    export."""
    home.save_model(model_offer(trainer))


def node_state(node: Node) -> NodeState:
    """A copy of the node's counters and histories (``NodeStats``) and its model's age offset
    (call in the trio thread)."""
    st = node.stats.state()
    return NodeState(
        counters=st.counters,
        bytes_sent=st.bytes_sent,
        bytes_received=st.bytes_received,
        history=st.history,
        consensus=st.consensus,
        age_offset=node.merger.age_offset,
        group=st.group,
    )


def resume_node(node: Node, state: NodeState) -> None:
    """Continue ``state``'s counters and histories in a node that has not run yet."""
    node.stats.restore(
        StatsState(
            counters=state.counters,
            bytes_sent=state.bytes_sent,
            bytes_received=state.bytes_received,
            history=state.history,
            consensus=state.consensus,
            group=state.group,
        )
    )
    node.merger.age_offset = state.age_offset


class Checkpointer:
    """Writes checkpoints of one peer to its home; ``status()`` says what was last written."""

    def __init__(
        self, home: Home, trainer: Trainer, interval: float, resumed: Checkpoint | None = None
    ) -> None:
        self.home = home
        self.trainer = trainer
        self.interval = interval  # seconds; 0 = only when ``save`` is called (at shutdown)
        self._limiter = trio.CapacityLimiter(1)  # one write at a time: they share a temp name
        self._last: Checkpoint | None = None
        self._resumed = resumed  # what ``resume`` restored at start-up, for the status

    async def run(self, node: Node) -> None:
        """Checkpoint every ``interval`` seconds until cancelled. A failed write (disk full,
        permissions) is logged and retried at the next interval; the peer keeps running."""
        if self.interval <= 0:
            return
        while True:
            await trio.sleep(self.interval)
            try:
                await self.save(node)
            except OSError as exc:
                log.warning("checkpoint not written to %s: %s", self.home, exc)

    async def save(self, node: Node) -> None:
        """Write one checkpoint now. A cancelled save still completes the write in progress
        (``trio.to_thread.run_sync`` does not abandon it). Raises ``OSError``."""
        state = node_state(node)
        self._last = await trio.to_thread.run_sync(self._write, state, limiter=self._limiter)

    def _write(self, state: NodeState) -> Checkpoint:
        cp = Checkpoint(created=time.time(), trainer=self.trainer.state(), node=state)
        self.home.save_checkpoint(encode_checkpoint(cp))
        return cp

    def status(self) -> dict[str, Any]:
        """``status --json`` → ``checkpoint``: the last one written and the one resumed from."""
        return {
            "interval": self.interval,
            **_summary(self._last),
            "resumed": _summary(self._resumed) if self._resumed is not None else None,
        }


def _summary(cp: Checkpoint | None) -> dict[str, Any]:
    if cp is None:
        return {
            "time": None,
            "steps": None,
            "samples_seen": None,
            "exchanges": None,
            "group_rounds": None,
        }
    return {
        "time": cp.created,
        "steps": cp.trainer.steps,
        "samples_seen": cp.trainer.samples_seen,
        "exchanges": cp.node.counters.completed,  # pairwise
        "group_rounds": cp.node.group.completed,  # secure group rounds merged
    }
