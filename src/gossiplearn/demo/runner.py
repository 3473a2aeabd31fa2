"""``gossiplearn demo``: a local consortium of real peer processes on 127.0.0.1.

Each peer is ``python -m gossiplearn start`` with its own home in a temporary folder, its own
digits shard, bootstrapped off the first peer, all in one private network (a consortium key
made for the run). ``DemoSettings.companions`` may start more processes once the peers are up
(the hostile-member benchmark starts an attacker there). The demo polls every peer's status
endpoint for a live table, stops them with SIGTERM (each saves its model), then evaluates every
saved model on the common held-out test set beside local-only and centralised training.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trio
from rich.console import Console
from rich.live import Live
from rich.table import Table

from gossiplearn.crypto.consortium import ConsortiumKey, write_key_file
from gossiplearn.demo.baselines import (
    centralised_accuracy,
    local_only_accuracy,
    saved_model_accuracy,
    shard_task,
)
from gossiplearn.errors import UserError
from gossiplearn.peer.home.config import TrainingConfig
from gossiplearn.peer.home.home import Home, init_home
from gossiplearn.peer.status import fetch_status
from gossiplearn.tasks.base import TaskOptions
from gossiplearn.tasks.partition import parse_partition

START_TIMEOUT = 90.0  # seconds for all peers to come up (imports torch and libp2p each)
STOP_TIMEOUT = 30.0
KEY_FILE = "consortium.key"

# Started once every peer is up: (run folder, every peer's first address, consortium key file)
# → processes, stopped with SIGTERM when the run ends.
Companions = Callable[[Path, list[str], Path], list[subprocess.Popen[bytes]]]


@dataclass(frozen=True)
class DemoSettings:
    peers: int = 6
    seconds: float = 30.0
    partition: str = "dirichlet:0.5"
    seed: int = 0
    keep: bool = False
    steps_per_second: float = 25.0
    gossip_interval: float = 0.3
    compression: str = "none"  # gossip.compression of every peer
    # training stops after this share of the run; the rest is averaging only, so the peers'
    # models meet (consensus) before they are saved
    train_share: float = 0.85
    training: TrainingConfig = field(default_factory=TrainingConfig)
    companions: Companions | None = None
    # more `gossiplearn start` arguments for every peer (e.g. ("--dp", "--target-epsilon", "3"));
    # the demo itself passes none
    extra_args: tuple[str, ...] = ()

    @property
    def max_steps(self) -> int:
        return max(1, int(self.steps_per_second * self.seconds * self.train_share))


@dataclass
class PeerProcess:
    index: int
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path
    out: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_peer(
    s: DemoSettings, root: Path, index: int, listen: str, bootstrap: str | None
) -> PeerProcess:
    home = root / f"peer{index}"
    out, log = root / f"peer{index}.out", root / f"peer{index}.log"
    cmd = [
        sys.executable, "-m", "gossiplearn", "start",
        "--home", str(home),
        "--listen", listen,
        "--task", "digits",
        "--shard", f"{index}/{s.peers}",
        "--partition", s.partition,
        "--seed", str(s.seed),
        "--steps-per-second", str(s.steps_per_second),
        "--max-steps", str(s.max_steps),
        "--gossip-interval", str(s.gossip_interval),
        "--compression", s.compression,
        "--learning-rate", str(s.training.learning_rate),
        "--batch-size", str(s.training.batch_size),
        "--lr-schedule", s.training.lr_schedule,
        "--eval-interval", "1",
        "--threads", "1",
        "--consortium-key", str(root / KEY_FILE),
    ]  # fmt: skip
    if bootstrap:
        cmd += ["--bootstrap", bootstrap]
    cmd += list(s.extra_args)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with out.open("wb") as fo, log.open("wb") as fl:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fl, env=env, start_new_session=True)  # noqa: S603
    return PeerProcess(index, home, proc, log, out)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _check_alive(peers: list[PeerProcess]) -> None:
    for p in peers:
        if p.proc.poll() is not None:
            raise UserError(
                f"peer {p.index} exited with code {p.proc.returncode}; "
                f"its log ends:\n{_tail(p.log)}"
            )


def _status(home: Path) -> dict[str, Any] | None:
    try:
        return trio.run(fetch_status, Home(home))
    except UserError:
        return None


def _table(
    peers: list[PeerProcess], statuses: list[dict[str, Any] | None], elapsed: float, s: DemoSettings
) -> Table:
    phase = (
        "training + gossip" if elapsed < s.seconds * s.train_share else "gossip only (consensus)"
    )
    t = Table(
        title=f"{s.peers} peers, digits {s.partition} — {elapsed:4.0f}/{s.seconds:.0f} s, {phase}",
        title_justify="left",
    )
    for col in (
        "peer",
        "neighbours",
        "exchanges",
        "steps",
        "val. accuracy",
        "loss",
        "consensus distance",
    ):
        t.add_column(col, justify="right")
    for p, st in zip(peers, statuses, strict=True):
        if st is None:
            t.add_row(str(p.index), "—", "—", "—", "starting", "—", "—")
            continue
        m = st["metrics"]
        cd = st.get("consensus_distance_mean10")
        t.add_row(
            f"{p.index} …{st['peer_id'][-6:]}",
            str(len(st["neighbours"])),
            str(st["exchanges"]["completed"]),
            str(st["training"]["steps"]),
            "—" if m["accuracy"] is None else f"{100 * m['accuracy']:.1f}%",
            "—" if m["loss"] is None else f"{m['loss']:.3f}",
            "—" if cd is None else f"{cd:.4f}",
        )
    return t


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(s: DemoSettings, console: Console | None = None) -> dict[str, Any]:
    """Run the demo; returns the summary numbers (also printed)."""
    console = console or Console()
    parse_partition(s.partition)
    root = Path(tempfile.mkdtemp(prefix="gl-demo-"))
    peers: list[PeerProcess] = []
    extra: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    try:
        console.print(
            f"[bold]gossiplearn demo[/]: {s.peers} peer processes on 127.0.0.1, homes in {root}"
        )
        # Peer 1's address is known before it starts (its identity is created here, its port
        # picked here), so all peers start at once; the others retry until peer 1 is up.
        homes = [init_home(root / f"peer{i}") for i in range(1, s.peers + 1)]
        key = ConsortiumKey.generate()
        write_key_file(root / KEY_FILE, key)
        console.print(f"private network: consortium key {key.key_id}")
        first = f"/ip4/127.0.0.1/tcp/{_free_port()}"
        addr = f"{first}/p2p/{homes[0].peer_id}"
        console.print(f"peer 1 listens on {addr}; the others bootstrap off it", soft_wrap=True)
        peers.append(_start_peer(s, root, 1, first, None))
        peers += [
            _start_peer(s, root, i, "/ip4/127.0.0.1/tcp/0", addr) for i in range(2, s.peers + 1)
        ]
        deadline = time.monotonic() + START_TIMEOUT
        while any(_status(p.home) is None for p in peers):
            _check_alive(peers)
            if time.monotonic() > deadline:
                raise UserError("not every peer started in time; logs in " + str(root))
            time.sleep(0.2)
        console.print(f"all {s.peers} peers up after {time.monotonic() - t0:.1f} s")
        if s.companions is not None:
            addrs = [st["addrs"][0] for p in peers if (st := _status(p.home))]
            extra = s.companions(root, addrs, root / KEY_FILE)
        start = time.monotonic()
        live_terminal = console.is_terminal
        last_print = 0.0
        with (
            Live(console=console, refresh_per_second=2, transient=False, auto_refresh=False)
            if live_terminal
            else _Null() as live
        ):
            while (elapsed := time.monotonic() - start) < s.seconds:
                _check_alive(peers)
                table = _table(peers, [_status(p.home) for p in peers], elapsed, s)
                if live_terminal:
                    live.update(table, refresh=True)
                elif elapsed - last_print >= 10:
                    console.print(table)
                    last_print = elapsed
                time.sleep(1.0)
            final = [_status(p.home) for p in peers]
            table = _table(peers, final, time.monotonic() - start, s)
            if live_terminal:
                live.update(table, refresh=True)
            else:
                console.print(table)
        _stop(extra)
        _stop([p.proc for p in peers])
        for p in peers:
            if p.proc.returncode != 0:
                raise UserError(
                    f"peer {p.index} did not stop cleanly (exit {p.proc.returncode}):\n"
                    f"{_tail(p.log)}"
                )
        summary = _summarise(s, peers, final, console)
        summary["seconds_total"] = time.monotonic() - t0
        console.print(f"demo finished in {summary['seconds_total']:.0f} s")
        return summary
    finally:
        _stop(extra)
        _stop([p.proc for p in peers])
        if s.keep:
            console.print(f"homes and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


class _Null:
    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *args: object, **kwargs: object) -> None:
        return None


def _summarise(
    s: DemoSettings, peers: list[PeerProcess], final: list[dict[str, Any] | None], console: Console
) -> dict[str, Any]:
    console.print("evaluating every peer's saved model on the common test set, and the baselines …")
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and leaves a core free
    options = TaskOptions(seed=s.seed, shard=(1, s.peers), partition=s.partition)
    config = s.training
    gossip, local, steps = [], [], []
    for p in peers:
        task = shard_task(options, p.index)
        acc, n = saved_model_accuracy(Home(p.home).model_file, task, config)
        gossip.append(acc)
        steps.append(n)
        local.append(local_only_accuracy(task, config, n, seed=s.seed + p.index))
    central = centralised_accuracy(options, config, sum(steps))
    exchanges = [st["exchanges"]["completed"] for st in final if st]
    distances = [
        st["consensus_distance_mean10"]
        for st in final
        if st and st.get("consensus_distance_mean10") is not None
    ]
    groups = [st["exchanges"]["group"]["completed"] for st in final if st]
    abandoned: Counter[str] = Counter()
    for st in final:
        if st:
            abandoned.update(st["exchanges"]["group"]["abandoned"])
    refused: Counter[str] = Counter()
    for st in final:
        if st:
            refused.update(st["exchanges"]["refused_by_reason"])
            refused.update(st["security"]["connections_refused"])
            refused.update(st["security"]["streams_refused"])
    summary: dict[str, Any] = {
        "refused": dict(refused),
        "clipped": sum(st["exchanges"]["clipped"] for st in final if st),
        "bans": sum(st["security"]["bans"] for st in final if st),
        "peers": s.peers,
        "partition": s.partition,
        "gossip_mean": statistics.fmean(gossip),
        "gossip_worst": min(gossip),
        "local_mean": statistics.fmean(local),
        "local_worst": min(local),
        "centralised": central,
        "steps_per_peer": statistics.fmean(steps),
        "exchanges_per_peer": statistics.fmean(exchanges) if exchanges else 0.0,
        # secure averaging: group rounds merged (led or joined), and rounds ended unmerged
        "group_rounds_per_peer": statistics.fmean(groups) if groups else 0.0,
        "group_abandoned": dict(abandoned),
        "traffic_per_peer": statistics.fmean(
            st["bytes_sent"] + st["bytes_received"] for st in final if st
        )
        if any(final)
        else 0.0,
        "final_consensus_distance": max(distances) if distances else None,
        "statuses": final,  # every peer's last status (None: it did not answer)
    }
    t = Table(title="test accuracy (common held-out digits test set)", title_justify="left")
    t.add_column("")
    t.add_column("mean", justify="right")
    t.add_column("worst peer", justify="right")
    t.add_column("how", justify="left")
    t.add_row(
        "gossip",
        f"{100 * summary['gossip_mean']:.1f}%",
        f"{100 * summary['gossip_worst']:.1f}%",
        f"{s.peers} peers, {summary['steps_per_peer']:.0f} steps and "
        f"{summary['exchanges_per_peer']:.0f} exchanges each",
    )
    t.add_row(
        "local-only",
        f"{100 * summary['local_mean']:.1f}%",
        f"{100 * summary['local_worst']:.1f}%",
        "each shard alone, same steps, no gossip",
    )
    t.add_row(
        "centralised", f"{100 * central:.1f}%", "", f"one model on the union, {sum(steps)} steps"
    )
    console.print(t)
    gap = 100 * (central - summary["gossip_mean"])
    gain = 100 * (summary["gossip_mean"] - summary["local_mean"])
    console.print(
        f"gossip is {gap:.1f} points from centralised and {gain:.1f} points above local-only"
    )
    if refused or summary["clipped"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(refused.items())) or "none"
        console.print(
            f"hostile input: refused {reasons}; {summary['clipped']} models clipped; "
            f"{summary['bans']} bans"
        )
    return summary
