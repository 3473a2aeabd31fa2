"""Running the ``gossiplearn`` command as a real process, for the CLI tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from gossiplearn.errors import UserError
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.status import fetch_status

CLI = [sys.executable, "-m", "gossiplearn"]
START_DEADLINE = 90.0  # seconds for a peer to print its address (imports torch and libp2p)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``gossiplearn ARGS...`` to completion; output captured as text, never raises on exit."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class Peer:
    """A ``gossiplearn start`` process on a free localhost port, with quick test settings;
    ``extra`` flags are appended (a later flag wins)."""

    def __init__(self, home: Path, shard: str, *extra: str, bootstrap: str | None = None) -> None:
        self.home = home
        args = [
            "start", "--home", str(home), "--listen", "/ip4/127.0.0.1/tcp/0",
            "--shard", shard, "--partition", "iid", "--gossip-interval", "0.5",
            "--steps-per-second", "20", "--eval-interval", "0.5", "--log-level", "info",
        ]  # fmt: skip
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        args += extra
        self.out = (home.parent / f"{home.name}.out").open("w+")
        self.err = (home.parent / f"{home.name}.err").open("w+")
        self.proc = subprocess.Popen([*CLI, *args], stdout=self.out, stderr=self.err, text=True)
        self.terminated = False

    def address(self, deadline: float | None = None) -> str:
        """The first address the peer printed (waits until ``deadline``, monotonic)."""
        deadline = deadline if deadline is not None else time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            self.out.seek(0)
            for line in self.out.read().splitlines():
                if "/p2p/" in line and line.strip().startswith("/ip4/"):
                    return line.strip()
            time.sleep(0.1)
        raise AssertionError(f"no address printed: {self.log()}")

    def status(self) -> dict[str, Any] | None:
        """The running peer's status, or None while it is not serving yet. Read in this
        process (``fetch_status``, what ``gossiplearn status --json`` prints): the tests poll
        it every half second, and a ``status`` process each time would cost a Python start-up
        per peer per poll. ``cli_status`` runs the command."""
        assert self.proc.poll() is None, self.log()
        try:
            data: dict[str, Any] = trio.run(fetch_status, Home(self.home))
        except UserError:
            return None
        return data

    def cli_status(self) -> dict[str, Any]:
        """``gossiplearn status --json`` of the running peer (it must be serving)."""
        assert self.proc.poll() is None, self.log()
        done = run("status", "--home", str(self.home), "--json", timeout=30)
        assert done.returncode == 0, done.stderr
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    def log(self, tail: int = 3000) -> str:
        self.err.seek(0)
        return self.err.read()[-tail:]

    def terminate(self) -> None:
        """SIGTERM, once (a second one would interrupt the clean stop)."""
        if self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> int:
        """SIGTERM, then the exit code (30 s at most)."""
        self.terminate()
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.out.close()
            self.err.close()


def stop_all(peers: list[Peer]) -> list[int]:
    """Stop every peer, all at once (each takes about a second to save and close); their exit
    codes, in order."""
    for p in peers:
        p.terminate()
    return [p.stop() for p in peers]
