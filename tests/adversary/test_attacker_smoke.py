"""The hostile member (``attacker.py``, raw py-libp2p) against a real honest node.

Each attack runs against one in-process honest node on real libp2p hosts. Whatever the attacks
do, the node must keep serving (a fresh honest peer still completes an exchange with it
afterwards) and its model must stay finite. The outcomes are printed (``pytest -s``) so a
change in how the honest peer reacts shows up.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attacker
import numpy as np
import pytest
import trio
from attacker import (
    ATTACKS,
    DIGITS_TASK,
    DIGITS_TEMPLATE,
    Attacker,
    AttackFailed,
    Outcome,
    Template,
)

from gossiplearn.crypto.identity import Identity
from gossiplearn.gossip.messages import fingerprint
from gossiplearn.peer.home.config import GossipConfig, TrainingConfig
from gossiplearn.peer.learning.learner import ThreadedLearner
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.net.host import Libp2pTransport
from gossiplearn.peer.node.node import Node, NodeConfig
from gossiplearn.tasks.base import TaskOptions, task_identity
from gossiplearn.tasks.contract import identity_digest
from gossiplearn.tasks.digits import make_task

TRAINING = TrainingConfig(enabled=False, eval_interval=60.0)
# The target never starts exchanges itself (so it is never busy on its own account), and
# gives up on a stalled exchange after 3 s.
PASSIVE = GossipConfig(interval=1000.0, exchange_timeout=3.0, discovery_interval=0.5)
ACTIVE = GossipConfig(interval=0.2, exchange_timeout=3.0, discovery_interval=0.5)
NEVER_MERGED = {
    "random-bytes",
    "truncated-frame",
    "huge-frame",
    "garbage-msgpack",
    "wrong-shapes",
    "wrong-dtypes",
    "nan",
    "inf",
    "other-architecture",
    "slow-drip",
    "stream-flood",
}


@asynccontextmanager
async def honest_nodes(
    gossips: list[GossipConfig], bootstrap: tuple[str, ...] = ()
) -> AsyncIterator[list[tuple[Node, Trainer, str]]]:
    """One honest digits node (MLP 64-16-10) per config, each joining through ``bootstrap``.
    Hosts close after every node task has ended (as in ``run_peer``)."""
    async with AsyncExitStack() as stack:
        out: list[tuple[Node, Trainer, str]] = []
        transports = [
            await stack.enter_async_context(
                Libp2pTransport.open(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"], dial_timeout=5)
            )
            for _ in gossips
        ]
        nursery = await stack.enter_async_context(trio.open_nursery())
        for i, (gossip, transport) in enumerate(zip(gossips, transports, strict=True)):
            task = make_task(
                TaskOptions(seed=0, shard=(i + 1, 2), partition="iid", params={"hidden": 16})
            )
            trainer = Trainer(task, TRAINING, seed=i)
            node = Node(
                transport,
                ThreadedLearner(trainer),
                NodeConfig(gossip=gossip, training=TRAINING, bootstrap=bootstrap),
            )
            await nursery.start(node.run)
            out.append((node, trainer, transport.addrs()[0]))
        yield out
        nursery.cancel_scope.cancel()


def finite(trainer: Trainer) -> bool:
    return all(bool(np.isfinite(a).all()) for a in trainer.snapshot().values())


def test_template_fingerprint_is_the_specified_one() -> None:
    # docs/protocol.md §12.1, computed by the attacker's own canonical encoder
    assert DIGITS_TEMPLATE.fingerprint().hex() == (
        "dc1cd007ad2525616dcfe9761705f2300e15e80c995d9eb65d3df81d93571b60"
    )
    assert DIGITS_TEMPLATE.model_bytes() == 19834  # §12.2
    # the digits task's identity digest, computed independently of gossiplearn (§5.5)
    trainer_task = make_task(TaskOptions())
    assert identity_digest(task_identity(trainer_task, trainer_task.build_model())) == DIGITS_TASK
    trainer = Trainer(
        make_task(TaskOptions(seed=0, shard=(1, 2), partition="iid", params={"hidden": 16})),
        TRAINING,
    )
    template = Template.from_arrays(trainer.snapshot())
    assert template.fingerprint() == fingerprint(trainer.specs())
    assert template.model_bytes() == trainer.model_bytes()
    assert set(ATTACKS) == set(attacker.VARIANTS)


def test_psk_file_is_parsed_and_checked(tmp_path: Path) -> None:
    key = "ab" * 32
    good = tmp_path / "swarm.key"
    good.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{key}\n")
    assert attacker.read_psk_file(str(good)) == key
    bad = tmp_path / "bad.key"
    bad.write_text(f"/key/swarm/psk/1.0.0/\n/base64/\n{key}\n")
    with pytest.raises(ValueError, match="base16"):
        attacker.read_psk_file(str(bad))


async def test_template_is_learnt_as_responder_and_honest_echo_is_benign() -> None:
    async with (
        honest_nodes([ACTIVE]) as [(node, trainer, addr)],
        Attacker.open(rng_seed=1) as atk,
    ):
        atk.responder = "honest-echo"
        before = trainer.snapshot()
        with trio.fail_after(15):
            assert await atk.introduce(addr)
            template = await atk.wait_template(15)
            while not atk.inbound:
                await trio.sleep(0.05)
        assert template is not None
        assert template.fingerprint() == node.local.fingerprint
        assert atk.learnt_samples == trainer.samples
        assert atk.inbound[0].result == "merged", atk.inbound[0]
        after = trainer.snapshot()
        assert all(np.allclose(before[k], after[k]) for k in before)  # echo changes nothing


async def test_psk_hosts_connect_only_with_the_same_key() -> None:
    key = "cd" * 32
    async with (
        Attacker.open(psk_hex=key, rng_seed=1) as victim,
        Attacker.open(psk_hex=key, rng_seed=2) as same,
        Attacker.open(psk_hex="ef" * 32, upgrade_timeout=1.0, rng_seed=3) as other,
    ):
        victim.responder = "honest-echo"
        with trio.fail_after(10):
            outcome = await same.attack(victim.addrs()[0], "sign-flip", DIGITS_TEMPLATE)
        assert outcome.answer == "accept"
        assert outcome.target_model
        other.dial_timeout = 2.0
        with trio.fail_after(10), pytest.raises(AttackFailed, match="dial"):
            await other.attack(victim.addrs()[0], "nan", DIGITS_TEMPLATE)


async def test_every_attack_leaves_the_honest_node_serving_and_finite() -> None:
    outcomes: list[Outcome] = []
    async with honest_nodes([PASSIVE]) as [(node, trainer, addr)]:
        template = Template.from_arrays(trainer.snapshot())
        learnt = trainer.snapshot()
        for kind in ATTACKS:
            # a fresh identity per kind: the node may ban an identity after a few offences
            async with Attacker.open(rng_seed=len(outcomes)) as atk:
                atk.learnt, atk.learnt_samples = learnt, trainer.samples
                atk.responder = "honest-echo"
                atk.attack_timeout = 8.0
                atk.drip_cap = 15.0
                atk.flood_hold = 5.0
                with trio.fail_after(25):
                    outcome = await atk.attack(addr, kind, template)
            outcomes.append(outcome)
            print(
                f"{kind:18} {outcome.variant:16} {outcome.result:22} {outcome.elapsed:6.2f}s",
                outcome.counts or "",
            )
            assert finite(trainer), kind
        print("counters", node.stats.counters)

        by_kind = {o.kind: o for o in outcomes}
        for kind in NEVER_MERGED:
            assert by_kind[kind].result != "merged", by_kind[kind]
        assert all(o.result not in ("no-answer", "timeout") for o in outcomes), outcomes
        drip = by_kind["slow-drip"]
        assert drip.gave_up_after is not None and drip.gave_up_after < 15.0, drip
        assert by_kind["stream-flood"].counts.get("opened", 0) > 0
        report = attacker.summarize(outcomes, [])
        json.dumps(report)  # JSON-serialisable
        assert report["attacks"] == len(ATTACKS)

        # A fresh honest peer still completes an exchange with the attacked node.
        answered = node.stats.counters.answered
        async with honest_nodes([ACTIVE], bootstrap=(addr,)) as [(other, other_trainer, _)]:
            with trio.fail_after(15):
                while (
                    other.stats.counters.completed == 0 or node.stats.counters.answered == answered
                ):
                    await trio.sleep(0.05)
            assert finite(other_trainer)
        assert finite(trainer)


async def test_mixed_campaign_returns_outcomes_and_never_raises() -> None:
    async with (
        honest_nodes([PASSIVE]) as [(_node, trainer, addr)],
        Attacker.open(rng_seed=7) as atk,
    ):
        atk.attack_timeout = 4.0
        template = Template.from_arrays(trainer.snapshot())
        atk.template = template
        kinds = ["garbage-msgpack", "random-bytes", "nan", "wrong-shapes", "huge-frame"]
        with trio.fail_after(15):
            outcomes = await atk.campaign([addr], 2.0, kinds, random.Random(7), interval=0.05)
        assert outcomes
        assert {o.kind for o in outcomes} <= set(kinds)
        assert all(o.result != "merged" for o in outcomes)
        assert finite(trainer)


async def test_runs_as_a_process_and_writes_a_report(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    script = Path(attacker.__file__)
    async with honest_nodes([PASSIVE]) as [(_node, trainer, addr)]:
        with trio.fail_after(30):
            result = await trio.run_process(
                [
                    sys.executable,
                    str(script),
                    "--target",
                    addr,
                    "--kinds",
                    "garbage-msgpack,random-bytes",
                    "--duration",
                    "1.5",
                    "--interval",
                    "0.1",
                    "--learn-timeout",
                    "0.5",
                    "--report",
                    str(report),
                    "--seed-hex",
                    "11" * 32,
                ],
                capture_stdout=True,
                capture_stderr=True,
            )
        assert finite(trainer)
    lines = result.stdout.decode().splitlines()
    assert lines[0].startswith("peer 12D3KooW")
    peer = lines[0].split()[1]
    assert lines[1].startswith("/ip4/127.0.0.1/tcp/") and lines[1].endswith(f"/p2p/{peer}")
    data = json.loads(report.read_text())
    assert data["peer"] == peer
    assert data["attacks"] >= 1
    assert set(data["per_kind"]) <= {"garbage-msgpack", "random-bytes"}
