"""SIGKILL at any moment, mid-write included, leaves a loadable checkpoint: a real writer process
killed many times at random instants. Whole peers killed and restarted at random instants and
when a checkpoint is due, their counters compared with what they resumed: ``test_chaos.py``."""

from __future__ import annotations

import random
import signal
import subprocess
import textwrap
import time
from pathlib import Path

from clitools import CLI

from gossiplearn.peer.home.checkpoint import CURRENT_NAME, PREVIOUS_NAME, load_checkpoint

DEADLINE = 60.0


# A writer that saves bigger and bigger-numbered checkpoints as fast as it can and prints each
# step once its save has returned; the test kills it at random instants, mostly mid-write.
WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from gossiplearn.gossip.stats import ExchangeCounters
    from gossiplearn.peer.home.checkpoint import (
        Checkpoint, NodeState, encode_checkpoint, save_checkpoint)
    from gossiplearn.peer.learning.state import TrainerState
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
