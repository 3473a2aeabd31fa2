"""SIGKILL at any moment loses at most the work since the last checkpoint: real processes, killed
many times at random instants (mid-write included), always restart and never go backwards."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from clitools import CLI

from gossiplearn.errors import UserError
from gossiplearn.peer.checkpoint import CURRENT_NAME, PREVIOUS_NAME, load_checkpoint
from gossiplearn.peer.modelfile import MODEL_FILE_NAME, load_model
from gossiplearn.peer.status import fetch_status

DEADLINE = 60.0


# A writer that saves bigger and bigger-numbered checkpoints as fast as it can and prints each
# step once its save has returned; the test kills it at random instants, mostly mid-write.
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from gossiplearn.gossip.stats import ExchangeCounters
    from gossiplearn.peer.checkpoint import (
        Checkpoint, NodeState, TrainerState, encode_checkpoint, save_checkpoint)
    home, step = Path(sys.argv[1]), int(sys.argv[2])
    weights = np.random.default_rng(step).standard_normal(1 << 20).astype(np.float32)  # 4 MiB
    while True:
        step += 1
        state = TrainerState(b"f" * 32, step, step, {"w": weights}, {"w": weights}, b"", weights[:0].astype(np.int64), 0)
        node = NodeState(ExchangeCounters(completed=step), 0, 0, (), ())
        save_checkpoint(home, encode_checkpoint(Checkpoint(time.time(), state, node)))
        print(step, flush=True)
    """  # noqa: E501
)


def test_a_writer_killed_at_random_instants_always_leaves_a_checkpoint(short_tmp: Path) -> None:
    rng = random.Random(1)
    home = short_tmp
    saved = 0  # the newest step a writer reported as saved
    report = short_tmp.parent / f"{short_tmp.name}.writer"
    for _ in range(25):
        with report.open("w") as out:
            proc = subprocess.Popen([*CLI[:1], "-c", WRITER, str(home), str(saved)], stdout=out)
        deadline = time.monotonic() + DEADLINE
        while not report.read_text() and time.monotonic() < deadline:  # a first save is done
            assert proc.poll() is None
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reported = [int(line) for line in report.read_text().split()]
        loaded = load_checkpoint(home)
        assert loaded is not None
        assert loaded.checkpoint.trainer.steps >= max(reported)
        assert loaded.checkpoint.node.counters.completed == loaded.checkpoint.trainer.steps
        saved = loaded.checkpoint.trainer.steps
    assert {p.name for p in home.iterdir() if not p.name.startswith(".")} <= {
        CURRENT_NAME,
        PREVIOUS_NAME,
    }


def status(home: Path) -> dict[str, Any] | None:
    try:
        return trio.run(fetch_status, home)
    except UserError:
        return None


def start(home: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [
        *CLI, "start", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0",
        "--gossip-interval", "0.3", "--eval-interval", "0.3", "--steps-per-second", "50",
        "--log-level", "info", *args,
    ]  # fmt: skip
    with (home.parent / f"{home.name}.err").open("ab") as log:  # the child keeps its own copy
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)


def wait_for(home: Path, proc: subprocess.Popen[bytes], ok: Any) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        assert proc.poll() is None, (home.parent / f"{home.name}.err").read_text()[-3000:]
        st = status(home)
        if st is not None and ok(st):
            return st
        time.sleep(0.05)
    raise AssertionError(f"condition not reached in {home}: {status(home)}")


@pytest.mark.slow
def test_a_peer_killed_many_times_resumes_and_its_counters_never_go_backwards(
    short_tmp: Path,
) -> None:
    rng = random.Random(7)
    partner_home, home = short_tmp / "a", short_tmp / "b"
    for h in (partner_home, home):
        assert subprocess.run([*CLI, "init", "--home", str(h)], check=False).returncode == 0
    partner = start(partner_home, "--shard", "1/2", "--checkpoint-interval", "0")
    victim: subprocess.Popen[bytes] | None = None
    try:
        st = wait_for(partner_home, partner, lambda s: s["addrs"])
        bootstrap = next(a for a in st["addrs"] if "/tcp/" in a)
        peer_id = None
        floor = {"steps": 0, "exchanges": 0}  # from the newest checkpoint known to be on disk
        resumed_steps: list[int] = []
        for round_ in range(10):
            victim = start(
                home, "--shard", "2/2", "--bootstrap", bootstrap, "--checkpoint-interval", "0.5"
            )
            st = wait_for(home, victim, lambda s: True)
            peer_id = peer_id or st["peer_id"]
            assert st["peer_id"] == peer_id
            resumed = st["checkpoint"]["resumed"]
            if round_ == 0:
                assert resumed is None
            else:
                assert resumed is not None and resumed["steps"] >= floor["steps"]
                assert resumed["exchanges"] >= floor["exchanges"]
                assert not resumed_steps or resumed["steps"] >= resumed_steps[-1]
                resumed_steps.append(resumed["steps"])
            assert st["training"]["steps"] >= floor["steps"]
            assert st["exchanges"]["completed"] >= floor["exchanges"]
            if round_ % 4 == 3:  # killed as soon as it answers, before any checkpoint of its own
                victim.send_signal(signal.SIGKILL)
            else:
                done = floor["exchanges"]
                st = wait_for(
                    home,
                    victim,
                    lambda s, done=done: (
                        s["checkpoint"]["time"] is not None and s["exchanges"]["completed"] > done
                    ),
                )
                last = st["checkpoint"]
                if round_ % 2:  # at the instant the next checkpoint is due: often mid-write
                    time.sleep(max(0.0, last["time"] + 0.5 - time.time()))
                else:
                    time.sleep(rng.uniform(0, 1.0))
                victim.send_signal(signal.SIGKILL)
                floor = {"steps": last["steps"], "exchanges": last["exchanges"]}
            victim.wait()
            loaded = load_checkpoint(home)
            if round_ or floor["steps"]:
                assert loaded is not None
                assert loaded.checkpoint.trainer.steps >= floor["steps"]
        assert len(resumed_steps) == 9 and resumed_steps[-1] > 0
        # a clean stop after all this still saves the model and a last checkpoint
        victim = start(home, "--shard", "2/2", "--bootstrap", bootstrap)
        st = wait_for(home, victim, lambda s: s["training"]["steps"] > resumed_steps[-1])
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(timeout=30) == 0
        final = load_checkpoint(home)
        assert final is not None and final.checkpoint.trainer.steps >= st["training"]["steps"]
        assert final.checkpoint.node.counters.completed >= st["exchanges"]["completed"]
        assert load_model(home / MODEL_FILE_NAME).steps == final.checkpoint.trainer.steps
        assert not [p for p in os.listdir(home) if p.endswith(".tmp")]
    finally:
        for proc in (victim, partner):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
