"""Wiring for ``gossiplearn start``: home, identity, task, host, node.

``run_peer`` owns the peer's whole lifetime: it takes the home's lock (one peer per home), builds
the task and the libp2p host, resumes from the newest checkpoint, runs the node, the status
endpoint, the periodic checkpoints and the address book (``peers.json``, loaded at start so known
peers are redialled), and on SIGINT/SIGTERM stops gossip gracefully (the exchange in flight may
finish) and saves the address book, the model and a last checkpoint before returning. Every file
and path in the home is the ``Home``'s to name (``peer/home/home.py``).
"""

from __future__ import annotations

import hashlib
import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any

import torch
import trio

from gossiplearn.crypto.identity import Identity
from gossiplearn.errors import UserError
from gossiplearn.peer.home.addressbook import keep_address_book, save_if_changed
from gossiplearn.peer.home.config import PeerConfig
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.home.modelfile import model_file_bytes
from gossiplearn.peer.home.resume import (
    Checkpointer,
    model_offer,
    resume,
    resume_node,
    save_model_file,
)
from gossiplearn.peer.learning.learner import ThreadedLearner
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.net.host import Libp2pTransport
from gossiplearn.peer.node.config import GroupSettings
from gossiplearn.peer.node.node import Node, NodeConfig
from gossiplearn.peer.preflight import preflight
from gossiplearn.peer.status import serve_model, serve_status
from gossiplearn.tasks.base import Task, TaskOptions
from gossiplearn.tasks.partition import parse_partition, parse_shard
from gossiplearn.tasks.registry import load_task

log = logging.getLogger(__name__)

STOP_GRACE = 10.0  # seconds an exchange in flight may take to finish at shutdown
MEMBERS_POLL = 2.0  # seconds between checks of peer.toml for a changed member list


async def watch_members(home: Home, node: Node) -> None:
    """Adopt edits of ``[members]`` in peer.toml (``gossiplearn members add|remove``) while
    running. A file that does not load is reported and the current list kept."""
    seen = home.config_version()
    while True:
        await trio.sleep(MEMBERS_POLL)
        version = home.config_version()
        if version == seen:
            continue
        seen = version
        try:
            members = home.members()
        except UserError as exc:
            log.warning("member list not reloaded: %s", exc)
            continue
        if members != node.members:
            log.info("member list changed: %d member(s)", len(members))
            await node.update_members(members)


def task_name(config: PeerConfig) -> str:
    """``task.name``; with a contract, ``digits`` or empty means ``tabular`` (the digits task
    has no contract file, and peer.toml templates before contracts said ``digits``); without
    one, empty means ``digits``."""
    t = config.task
    if t.params.get("contract"):
        return "tabular" if t.name in ("", "digits") else t.name
    return t.name or "digits"


def build_task(config: PeerConfig, home: Home, *, need_data: bool = True) -> Task:
    """The configured task (its files found from ``home``). ``need_data`` False: only what
    using a saved model needs (a tabular task then reads its contract, not the member's
    data)."""
    t = config.task
    parse_partition(t.partition)
    options = TaskOptions(
        seed=t.seed,
        shard=parse_shard(t.shard),
        partition=t.partition,
        validation_fraction=t.validation_fraction,
        params=home.task_params(config),
        need_data=need_data,
    )
    return load_task(task_name(config), options)


def peer_seed(task_seed: int, identity: Identity) -> int:
    """Per-peer seed for model initialisation and batch order: members start independently."""
    digest = hashlib.sha256(identity.public_key + task_seed.to_bytes(8, "big", signed=True))
    return int.from_bytes(digest.digest()[:4], "big")


async def run_peer(
    home: Home,
    overrides: Mapping[str, Any],
    *,
    on_ready: Callable[[Node], None] = lambda node: None,
) -> None:
    """Run a peer in the foreground until SIGINT/SIGTERM.

    Raises ``UserError`` for set-up problems (no identity, bad config, home already in use).
    """
    with home.lock():
        checked = preflight(home, overrides)
        identity, config, key = checked.identity, checked.config, checked.key
        if key is None:
            log.warning(
                "no consortium key: any host that can reach our port may connect "
                "(set security.consortium_key; see docs/security.md)"
            )
        if config.members.restricted and identity.peer_id not in config.members:
            log.warning(
                "our own peer ID %s is not in [members]: other members will refuse us "
                "(add it with `gossiplearn members add %s NAME`)",
                identity.peer_id,
                identity.peer_id,
            )
        torch.set_num_threads(config.training.threads)
        task = build_task(config, home)
        home.keep_contract(config)
        trainer = Trainer(
            task,
            config.training,
            seed=peer_seed(config.task.seed, identity),
            privacy=config.privacy,
            save_ledger=home.save_privacy_ledger,
        )
        resumed = resume(trainer, home)
        checkpointer = Checkpointer(
            home, trainer, config.training.checkpoint_interval, resumed=resumed
        )
        learner = ThreadedLearner(trainer)
        node_config = NodeConfig(
            gossip=config.gossip,
            training=config.training,
            bootstrap=config.network.bootstrap,
            description=task.description or task.name,
            task_kind=task.kind,
            security=config.security,
            members=config.members,
            consortium_key_id=key.key_id if key is not None else None,
            group=GroupSettings(config.privacy.secure_averaging, config.privacy.group_size),
        )
        node: Node | None = None
        try:
            async with Libp2pTransport.open(
                identity,
                config.network.listen,
                dial_timeout=config.network.dial_timeout,
                consortium_key=key,
            ) as transport:
                node = Node(transport, learner, node_config, identity=identity)
                if resumed is not None:
                    resume_node(node, resumed.node)
                await load_known_peers(home, node)
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve_status, home, _status_of(node, checkpointer, trainer))
                    await nursery.start(serve_model, home, lambda: _model_file(trainer))
                    await nursery.start(node.run)
                    nursery.start_soon(watch_members, home, node)
                    nursery.start_soon(checkpointer.run, node)
                    nursery.start_soon(keep_address_book, home.address_book, node.view.entries)
                    on_ready(node)
                    await _wait_for_signal(node)
                    nursery.cancel_scope.cancel()
        finally:
            if node is not None:  # a peer that never ran has nothing new to save
                with trio.CancelScope(shield=True):  # bounded work; a second signal waits for it
                    await _save_at_shutdown(home, trainer, checkpointer, node)


async def load_known_peers(home: Home, node: Node) -> int:
    """Put the peers saved in the home's address book into ``node``'s view (only admissible
    ones: members, not banned; never ourselves), so a restarted peer redials them even when
    its bootstrap addresses are gone. Returns how many were added."""
    records = await trio.to_thread.run_sync(home.known_peers)
    now = trio.current_time()
    added = sum(
        node.view.learn(r, now, authoritative=False)
        for r in records
        if r.peer_id != node.peer_id and node.is_admissible(r.peer_id)
    )
    if added:
        log.info("loaded %d peer(s) from the address book", added)
    return added


def _status_of(
    node: Node, checkpointer: Checkpointer, trainer: Trainer
) -> Callable[[], dict[str, Any]]:
    def status() -> dict[str, Any]:
        out = {**node.status(), "checkpoint": checkpointer.status()}
        statistics, vector = trainer.task.statistics, trainer.stats
        if statistics is not None and vector is not None:
            out["statistics"] = statistics.describe(vector)
        return out

    return status


async def _model_file(trainer: Trainer) -> bytes:
    """The running model as model file bytes (``peer.modelfile``), for evaluate, predict and
    export: a snapshot under the trainer's lock, taken in a worker thread."""
    return await trio.to_thread.run_sync(lambda: model_file_bytes(model_offer(trainer)))


async def _save_at_shutdown(
    home: Home, trainer: Trainer, checkpointer: Checkpointer, node: Node
) -> None:
    """Write the address book, model.glm, a last checkpoint and the exact privacy ledger (the
    node has stopped: no step is taken after them); a write that fails is reported, not raised
    (the last periodic checkpoint is still there, the ledger file counts the steps ahead)."""
    await save_if_changed(home.address_book, node.view.entries())
    try:
        await trio.to_thread.run_sync(save_model_file, trainer, home)
        await checkpointer.save(node)
        await trio.to_thread.run_sync(trainer.settle_privacy)
    except OSError as exc:
        log.error("could not save the model or the checkpoint in %s: %s", home, exc)
        return
    log.info("model and checkpoint saved in %s", home)


async def _wait_for_signal(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("%s received: stopping (again to stop at once)", signal.Signals(signum).name)
            break
        async with trio.open_nursery() as nursery:

            async def second_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(second_signal)
            await node.stop(STOP_GRACE)
            nursery.cancel_scope.cancel()
