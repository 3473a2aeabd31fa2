"""Wiring for ``gossiplearn init`` and ``gossiplearn start``: home, identity, task, host, node.

``run_peer`` owns the peer's whole lifetime: it takes the home's lock (one peer per home), builds
the task and the libp2p host, runs the node and the status endpoint, and on SIGINT/SIGTERM stops
gossip gracefully (the exchange in flight may finish) and saves the model before returning.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import trio

from gossiplearn.crypto.identity import KEY_FILE_NAME, Identity, create_key_file, load_key_file
from gossiplearn.errors import UserError
from gossiplearn.gossip.messages import ModelOffer, fingerprint, specs_of
from gossiplearn.peer.config import (
    CONFIG_FILE_NAME,
    DEFAULT_CONFIG_TEXT,
    PeerConfig,
    load_config_file,
    with_overrides,
)
from gossiplearn.peer.host import Libp2pTransport
from gossiplearn.peer.learner import ThreadedLearner
from gossiplearn.peer.modelfile import MODEL_FILE_NAME, load_model, save_model
from gossiplearn.peer.node import Node, NodeConfig
from gossiplearn.peer.status import serve_status
from gossiplearn.peer.trainer import Trainer
from gossiplearn.tasks.base import Task, TaskOptions
from gossiplearn.tasks.partition import parse_partition, parse_shard
from gossiplearn.tasks.registry import load_task

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "peer.lock"
STOP_GRACE = 10.0  # seconds an exchange in flight may take to finish at shutdown


@dataclass(frozen=True)
class InitResult:
    home: Path
    peer_id: str
    created_key: bool
    created_config: bool


def init_home(home: Path) -> InitResult:
    """Create the home, its identity key (0600) and a commented peer.toml; never overwrite."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity, created_key = create_key_file(home / KEY_FILE_NAME)
        config = home / CONFIG_FILE_NAME
        created_config = False
        if not config.exists():
            config.write_text(DEFAULT_CONFIG_TEXT, encoding="utf-8")
            created_config = True
    except OSError as exc:
        raise UserError(f"cannot initialise {home}: {exc.strerror or exc}") from None
    return InitResult(home, identity.peer_id, created_key, created_config)


@contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold an exclusive lock on the home for the peer's lifetime."""
    path = home / LOCK_FILE_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise UserError(
                f"another peer (pid {other or '?'}) is already running in {home}; "
                "stop it first or use another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def load_peer_config(home: Path, overrides: Mapping[str, Any]) -> PeerConfig:
    return with_overrides(load_config_file(home / CONFIG_FILE_NAME), overrides)


def build_task(config: PeerConfig) -> Task:
    t = config.task
    parse_partition(t.partition)
    options = TaskOptions(
        seed=t.seed,
        shard=parse_shard(t.shard),
        partition=t.partition,
        validation_fraction=t.validation_fraction,
        params=dict(t.params),
    )
    return load_task(t.name, options)


def peer_seed(task_seed: int, identity: Identity) -> int:
    """Per-peer seed for model initialisation and batch order: members start independently."""
    digest = hashlib.sha256(identity.public_key + task_seed.to_bytes(8, "big", signed=True))
    return int.from_bytes(digest.digest()[:4], "big")


def _restore(trainer: Trainer, path: Path) -> None:
    if not path.exists():
        return
    try:
        saved = load_model(path)
    except UserError as exc:
        log.warning("%s; starting from a fresh model", exc)
        return
    ours = fingerprint(trainer.specs())
    if saved.fingerprint != ours or fingerprint(specs_of(saved.tensors)) != ours:
        log.warning(
            "the saved model in %s belongs to another model architecture; starting fresh "
            "(the old file is replaced at shutdown)",
            path,
        )
        return
    trainer.load(saved.tensors)
    trainer.steps = saved.steps
    log.info("resumed the model saved in %s (%d steps)", path, saved.steps)


def _save(trainer: Trainer, path: Path) -> None:
    offer = ModelOffer(
        fingerprint=fingerprint(trainer.specs()),
        samples=trainer.samples,
        steps=trainer.steps,
        accuracy=None,
        loss=None,
        tensors=trainer.snapshot(),
    )
    save_model(path, offer)


async def run_peer(
    home: Path,
    overrides: Mapping[str, Any],
    *,
    on_ready: Callable[[Node], None] = lambda node: None,
) -> None:
    """Run a peer in the foreground until SIGINT/SIGTERM. Raises ``UserError`` for set-up problems."""
    if not (home / KEY_FILE_NAME).exists():
        raise UserError(f"{home} has no identity yet; run `gossiplearn init --home {home}` first")
    with home_lock(home):
        config = load_peer_config(home, overrides)
        identity = load_key_file(home / KEY_FILE_NAME)
        torch.set_num_threads(config.training.threads)
        task = build_task(config)
        trainer = Trainer(task, config.training, seed=peer_seed(config.task.seed, identity))
        model_path = home / MODEL_FILE_NAME
        _restore(trainer, model_path)
        learner = ThreadedLearner(trainer)
        node_config = NodeConfig(
            gossip=config.gossip,
            training=config.training,
            bootstrap=config.network.bootstrap,
            description=task.description or task.name,
        )
        try:
            async with Libp2pTransport.open(
                identity, config.network.listen, dial_timeout=config.network.dial_timeout
            ) as transport:
                node = Node(transport, learner, node_config)
                async with trio.open_nursery() as nursery:
                    await nursery.start(serve_status, home, node.status)
                    await nursery.start(node.run)
                    on_ready(node)
                    await _wait_for_signal(node)
                    nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(_save, trainer, model_path)
            log.info("model saved to %s", model_path)


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
