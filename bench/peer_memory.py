"""Memory of a real peer process: two `gossiplearn start` processes on 127.0.0.1 exchange models;
their resident set size is read from /proc once both have completed exchanges."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench.report import Section
from gossiplearn.errors import UserError
from gossiplearn.peer.home.home import Home, init_home
from gossiplearn.peer.status import fetch_status

HIDDEN = (64, 65536)  # the digits MLP 64-H-10: 4,810 and 4,916,234 parameters
EXCHANGES = 10  # completed by each peer before measuring
DEADLINE = 180.0


def _params(hidden: int) -> int:
    return 64 * hidden + hidden + hidden * 10 + 10


def _rss_mib(pid: int) -> tuple[float, float]:
    """(resident now, peak resident) in MiB, from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def _status(home: Path) -> dict[str, Any] | None:
    try:
        return trio.run(fetch_status, Home(home))
    except UserError:
        return None


def measure(hidden: int) -> list[tuple[float, float]]:
    with tempfile.TemporaryDirectory(prefix="gl-mem-") as root:
        homes = [Path(root) / f"p{i}" for i in (1, 2)]
        for home in homes:
            init_home(home)
            (home / "peer.toml").write_text(f"[task]\nhidden = {hidden}\n", encoding="utf-8")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for i, home in enumerate(homes):
                args = [
                    sys.executable, "-m", "gossiplearn", "start", "--home", str(home),
                    "--listen", "/ip4/127.0.0.1/tcp/0", "--shard", f"{i + 1}/2",
                    "--gossip-interval", "0.5", "--threads", "1", "--log-level", "warning",
                ]  # fmt: skip
                if procs:
                    first = _wait(homes[0], procs[0], lambda st: st["addrs"])["addrs"][0]
                    args += ["--bootstrap", first]
                procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
            for home, proc in zip(homes, procs, strict=True):
                _wait(home, proc, lambda st: st["exchanges"]["completed"] >= EXCHANGES)
            return [_rss_mib(p.pid) for p in procs]
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=30)


def _wait(
    home: Path, proc: subprocess.Popen[bytes], ok: Callable[[dict[str, Any]], Any]
) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"peer in {home} exited with {proc.returncode}")
        st = _status(home)
        if st is not None and ok(st):
            return st
        time.sleep(0.2)
    raise RuntimeError(f"peer in {home} did not get there in {DEADLINE:.0f} s")


def run() -> Section:
    section = Section(
        title="Memory per peer process",
        command="python -m bench",
        settings=(
            "Two `gossiplearn start` processes on 127.0.0.1 (digits task, MLP 64-H-10, "
            f"training and gossip on), measured once each has completed {EXCHANGES} exchanges: "
            "resident set size now and at its peak (VmRSS, VmHWM in /proc), per process."
        ),
        header=["model", "parameters", "float32 MB", "resident MiB", "peak MiB"],
    )
    for hidden in HIDDEN:
        print(f"  two peers with a 64-{hidden}-10 MLP …", flush=True)
        usage = measure(hidden)
        rss = max(u[0] for u in usage)
        peak = max(u[1] for u in usage)
        params = _params(hidden)
        section.rows.append(
            [f"MLP 64-{hidden}-10", f"{params:,}", f"{4 * params / 1e6:.2f}", f"{rss:.0f}",
             f"{peak:.0f}"]
        )  # fmt: skip
    section.notes.append(
        "Most of a small peer's memory is the Python interpreter with torch, libp2p and their "
        "dependencies loaded; each further parameter costs a few copies of itself (the model, a "
        "snapshot, the encoded frame, the received model)."
    )
    return section
