"""A consortium of real peer processes, optionally under chaos: a random member SIGKILLed and
restarted every few seconds. Used by ``test_chaos.py``; run this file to print one calm and
one chaos run side by side (``python tests/integration/chaos.py``).

What a run records, for the test to judge:
- every kill (the bootstrap node first, then any member that has answered since it last
  started; half at a random instant, half at the instant the victim's next checkpoint is due,
  often mid-write), and what the killed peer had on disk afterwards (``load_checkpoint``: every
  checkpoint must load and fit the model);
- counters that went backwards: within one process lifetime, any polled status counter that
  fell; across a restart, a restarted peer whose first status shows less than the checkpoint it
  resumed from, or a checkpoint on disk older than the last one its status had reported
  (status reports a checkpoint only once it is durable);
- at the end, after a SIGTERM of everyone (exit codes kept): the last checkpoint and model.glm
  written at the clean stop agree, no temporary file is left, and each peer's saved model is
  evaluated on the common digits test set.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gossiplearn.crypto.consortium import ConsortiumKey, write_key_file
from gossiplearn.demo.baselines import saved_model_accuracy, shard_task
from gossiplearn.errors import UserError
from gossiplearn.peer.home.checkpoint import load_checkpoint
from gossiplearn.peer.home.config import TrainingConfig
from gossiplearn.peer.home.home import Home, init_home
from gossiplearn.peer.home.modelfile import MODEL_FILE_NAME
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.status import fetch_status
from gossiplearn.tasks.base import TaskOptions

CLI = [sys.executable, "-m", "gossiplearn"]
# status counters that must never go backwards: (section or None, key)
COUNTERS = (
    ("training", "steps"),
    ("training", "samples_seen"),
    ("exchanges", "completed"),
    ("exchanges", "initiated"),
    ("exchanges", "answered"),
    ("exchanges", "failed"),
    ("exchanges", "declined"),
    (None, "bytes_sent"),
    (None, "bytes_received"),
)
CHECKPOINT_COUNTERS = {  # status counter → how to read it from a checkpoint on disk
    ("training", "steps"): lambda cp: cp.trainer.steps,
    ("training", "samples_seen"): lambda cp: cp.trainer.samples_seen,
    ("exchanges", "completed"): lambda cp: cp.node.counters.completed,
    ("exchanges", "initiated"): lambda cp: cp.node.counters.initiated,
    ("exchanges", "answered"): lambda cp: cp.node.counters.answered,
    ("exchanges", "failed"): lambda cp: cp.node.counters.failed,
    ("exchanges", "declined"): lambda cp: cp.node.counters.declined,
    (None, "bytes_sent"): lambda cp: cp.node.bytes_sent,
    (None, "bytes_received"): lambda cp: cp.node.bytes_received,
}


@dataclass(frozen=True)
class Settings:
    peers: int = 6
    partition: str = "iid"
    seed: int = 0
    steps_per_second: float = 25.0
    max_steps: int = 1250  # training ends here; gossip goes on, so the models meet
    gossip_interval: float = 0.3
    checkpoint_interval: float = 2.0
    chaos_seconds: float = 60.0  # 0: a calm run; training (~50 s calm) ends about when it does
    kill_gap: tuple[float, float] = (1.0, 3.0)  # seconds between kills, uniform
    down_time: tuple[float, float] = (0.0, 1.0)  # seconds a killed peer stays down, uniform
    tail_seconds: float = 6.0  # after every peer has finished training
    start_deadline: float = 120.0
    finish_deadline: float = 240.0  # for every peer to finish training after the chaos


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _value(status: dict[str, Any], key: tuple[str | None, str]) -> int:
    section, name = key
    return int((status[section] if section else status)[name])


@dataclass
class Member:
    index: int
    home: Path
    port: int
    peer_id: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    last: dict[tuple[str | None, str], int] = field(default_factory=dict)  # this lifetime
    reported_checkpoint: int | None = None  # steps of the last checkpoint status reported
    checkpoint_time: float | None = None  # unix time of that checkpoint, this lifetime
    resumed_floor: dict[tuple[str | None, str], int] | None = None  # checkpoint on disk
    checked_restart: bool = True

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    def start(self) -> None:
        log = (self.home.parent / f"{self.home.name}.log").open("ab")
        with log:
            self.proc = subprocess.Popen(
                [*CLI, "start", *self.args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=dict(os.environ, OMP_NUM_THREADS="1"),
            )
        self.starts += 1
        self.last = {}
        self.checkpoint_time = None
        self.checked_restart = self.starts == 1

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.home.parent / f"{self.home.name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@dataclass
class Result:
    settings: Settings
    kills: int = 0
    kill_instants: Counter[str] = field(default_factory=Counter)  # "random", "checkpoint due"
    victims: Counter[int] = field(default_factory=Counter)  # member index → times killed
    accuracies: list[float] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # counters that went backwards
    unloadable: list[str] = field(default_factory=list)  # checkpoints that did not load
    unsaved: list[str] = field(default_factory=list)  # a clean stop that did not save it all
    checkpoints_checked: int = 0
    restarts_checked: int = 0  # restarts whose first status was compared with their checkpoint
    nothing_to_resume: int = 0  # kills that came before the victim's first checkpoint
    bans: int = 0
    adopted: int = 0
    seconds: float = 0.0
    timeline: list[str] = field(default_factory=list)  # the kills: when, whom, at which step

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def worst(self) -> float:
        return min(self.accuracies)

    def summary(self) -> str:
        return (
            f"{'chaos' if self.settings.chaos_seconds else 'calm '}: {self.kills} kills "
            f"({self.kill_instants['checkpoint due']} when a checkpoint was due, members "
            f"{sorted(self.victims)}), "
            f"accuracy mean {100 * self.mean:.1f}% worst {100 * self.worst:.1f}%, "
            f"{self.checkpoints_checked} checkpoints loaded, {self.restarts_checked} restarts "
            f"checked, {len(self.violations)} counters backwards, {self.bans} bans, "
            f"{self.adopted} adoptions, {self.seconds:.0f} s"
        )


class Consortium:
    """``settings.peers`` members on fixed localhost ports in a private network under ``root``;
    member 1 is the first bootstrap node, and restarted members rejoin through their address
    books when it is down."""

    def __init__(self, root: Path, settings: Settings, rng: random.Random) -> None:
        self.root = root
        self.settings = settings
        self.rng = rng
        self.result = Result(settings)
        key_file = root / "consortium.key"
        write_key_file(key_file, ConsortiumKey.generate())
        self.members: list[Member] = []
        s = settings
        for i in range(1, s.peers + 1):
            home = root / f"p{i}"
            peer_id = init_home(home).peer_id
            port = _free_port()
            args = [
                "--home", str(home), "--listen", f"/ip4/127.0.0.1/tcp/{port}",
                "--shard", f"{i}/{s.peers}", "--partition", s.partition, "--seed", str(s.seed),
                "--steps-per-second", str(s.steps_per_second), "--max-steps", str(s.max_steps),
                "--gossip-interval", str(s.gossip_interval), "--eval-interval", "1",
                "--checkpoint-interval", str(s.checkpoint_interval), "--threads", "1",
                "--consortium-key", str(key_file), "--log-level", "info",
            ]  # fmt: skip
            self.members.append(Member(i, home, port, peer_id, args))
        first = self.members[0].addr
        for m in self.members[1:]:
            m.args += ["--bootstrap", first]

    # ---------------------------------------------------------------- observation

    def status(self, m: Member) -> dict[str, Any] | None:
        if not m.alive():
            return None
        try:
            return trio.run(fetch_status, Home(m.home))
        except UserError:
            return None

    def observe(self, m: Member) -> dict[str, Any] | None:
        """Poll ``m``'s status and record any counter that went backwards."""
        st = self.status(m)
        if st is None:
            return None
        if st["peer_id"] != m.peer_id:
            self._violation(m, f"restart {m.starts} came back as {st['peer_id']}")
        for key in COUNTERS:
            value = _value(st, key)
            before = m.last.get(key)
            if before is not None and value < before:
                self._violation(m, f"{key} fell from {before} to {value} while running")
            m.last[key] = value
        if not m.checked_restart and m.resumed_floor is not None:
            m.checked_restart = True
            self.result.restarts_checked += 1
            for key, floor in m.resumed_floor.items():
                if _value(st, key) < floor:
                    self._violation(
                        m,
                        f"restart {m.starts}: {key} = {_value(st, key)} below its checkpoint's "
                        f"{floor}",
                    )
            resumed = st["checkpoint"]["resumed"]
            if resumed is None or resumed["steps"] < m.resumed_floor[("training", "steps")]:
                self._violation(m, f"restart {m.starts} did not resume its checkpoint: {resumed}")
        cp = st["checkpoint"]
        if cp["time"] is not None:
            m.reported_checkpoint = max(m.reported_checkpoint or 0, int(cp["steps"]))
            m.checkpoint_time = float(cp["time"])
        return st

    def _violation(self, m: Member, what: str) -> None:
        self.result.violations.append(f"peer {m.index}: {what}")

    def _check_disk(self, m: Member) -> None:
        """After a kill: the checkpoint on disk loads, fits the model, and is at least the one
        the peer's status last reported; it is the floor for the restart."""
        if m.reported_checkpoint is None and not (m.home / "checkpoint.glc").exists():
            m.resumed_floor = None  # killed before its first checkpoint: nothing to resume
            m.checked_restart = True
            self.result.nothing_to_resume += 1
            return
        task = shard_task(self._options(), m.index)
        trainer = Trainer(task, TrainingConfig())
        loaded = load_checkpoint(m.home, lambda cp: trainer.incompatibility(cp.trainer))
        self.result.checkpoints_checked += 1
        if loaded is None:
            self.result.unloadable.append(f"peer {m.index} after kill {self.result.kills}")
            m.resumed_floor = None
            return
        cp = loaded.checkpoint
        if m.reported_checkpoint is not None and cp.trainer.steps < m.reported_checkpoint:
            self._violation(
                m,
                f"checkpoint on disk has {cp.trainer.steps} steps, status had reported "
                f"{m.reported_checkpoint}",
            )
        m.resumed_floor = {key: read(cp) for key, read in CHECKPOINT_COUNTERS.items()}
        m.reported_checkpoint = cp.trainer.steps

    def _options(self) -> TaskOptions:
        s = self.settings
        return TaskOptions(seed=s.seed, shard=(1, s.peers), partition=s.partition)

    # ---------------------------------------------------------------- the run

    def _wait(self, what: str, done: Any, deadline: float) -> None:
        while True:
            statuses = [self.observe(m) for m in self.members]
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise AssertionError(f"peer {m.index} exited: {m.log_tail()}")
            if done(statuses):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting until {what}: {statuses}")
            time.sleep(0.3)

    def _watch(self, seconds: float) -> None:
        """Keep observing every member for ``seconds``."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for m in self.members:
                self.observe(m)
            time.sleep(0.2)

    def run(self) -> Result:
        s = self.settings
        self.t0 = t0 = time.monotonic()
        try:
            for m in self.members:
                m.start()
            self._wait(
                "every peer serves its status",
                lambda sts: all(st is not None for st in sts),
                time.monotonic() + s.start_deadline,
            )
            self._chaos()
            self._wait(
                "every peer finished training",
                lambda sts: all(st and st["training"]["steps"] >= s.max_steps for st in sts),
                time.monotonic() + s.finish_deadline,
            )
            self._watch(s.tail_seconds)
        finally:
            self._stop()
        self._collect()
        self.result.seconds = time.monotonic() - t0
        return self.result

    def _chaos(self) -> None:
        s = self.settings
        end = time.monotonic() + s.chaos_seconds
        while (now := time.monotonic()) < end:
            self._watch(min(self.rng.uniform(*s.kill_gap), end - now))
            if time.monotonic() >= end:
                break
            # the first victim is the bootstrap node every other member was started with; then
            # any member that has answered since it last started (one killed again while it
            # still imports would leave its restart unchecked)
            serving = [m for m in self.members if m.last]
            if not serving:
                continue
            victim = self.rng.choice(serving) if self.result.kills else self.members[0]
            self.observe(victim)
            when = "random"
            if victim.checkpoint_time is not None and self.rng.random() < 0.5:
                # at the instant its next checkpoint is due: often in the middle of writing it
                due = victim.checkpoint_time + s.checkpoint_interval - time.time()
                time.sleep(min(max(0.0, due), s.checkpoint_interval))
                when = "checkpoint due"
            self.result.timeline.append(
                f"{time.monotonic() - self.t0:.0f}s: peer {victim.index} at "
                f"{victim.last.get(('training', 'steps'))} steps, {when}"
            )
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            self.result.kills += 1
            self.result.kill_instants[when] += 1
            self.result.victims[victim.index] += 1
            self._check_disk(victim)
            time.sleep(self.rng.uniform(*s.down_time))
            victim.start()

    def _stop(self) -> None:
        for m in self.members:
            if m.alive():
                assert m.proc is not None
                m.proc.send_signal(signal.SIGTERM)
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait()

    def _collect(self) -> None:
        r = self.result
        r.exit_codes = [m.proc.returncode if m.proc else None for m in self.members]
        config = TrainingConfig()
        for m in self.members:
            task = shard_task(self._options(), m.index)
            trainer = Trainer(task, config)
            loaded = load_checkpoint(m.home, lambda cp, t=trainer: t.incompatibility(cp.trainer))
            r.checkpoints_checked += 1
            accuracy, steps = saved_model_accuracy(m.home / MODEL_FILE_NAME, task, config)
            r.accuracies.append(accuracy)
            if loaded is None:
                r.unloadable.append(f"peer {m.index} at the end")
            else:
                r.adopted += loaded.checkpoint.node.counters.adopted
                if loaded.checkpoint.trainer.steps != steps:  # both written at the clean stop
                    r.unsaved.append(
                        f"peer {m.index}: model.glm has {steps} steps, its last checkpoint "
                        f"{loaded.checkpoint.trainer.steps}"
                    )
            left = [p.name for p in m.home.iterdir() if p.name.endswith(".tmp")]
            r.unsaved += [f"peer {m.index}: {name} left behind" for name in left]
            r.bans += m.log_tail(1 << 30).count("after repeated invalid data")  # node._offend


def run_consortium(settings: Settings, seed: int) -> Result:
    with tempfile.TemporaryDirectory(prefix="gl-chaos-") as root:
        return Consortium(Path(root), settings, random.Random(seed)).run()


if __name__ == "__main__":
    import concurrent.futures

    # python chaos.py [calm|chaos ...] [seed]: the runs given (default: one of each), at once
    kinds = [a for a in sys.argv[1:] if a in ("calm", "chaos")] or ["calm", "chaos"]
    seed = int(next((a for a in sys.argv[1:] if a.isdigit()), "1"))
    chosen = [Settings() if k == "chaos" else Settings(chaos_seconds=0.0) for k in kinds]
    with concurrent.futures.ThreadPoolExecutor(len(chosen)) as pool:
        futures = [pool.submit(run_consortium, s, seed + i) for i, s in enumerate(chosen)]
        for f in futures:
            print(f.result().summary(), f.result().violations[:5], f.result().unloadable)
