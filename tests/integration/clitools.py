"""Running the ``gossiplearn`` command as a real process, for the CLI tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
        """``status --json`` of the running peer, or None while it is not serving yet."""
        assert self.proc.poll() is None, self.log()
        done = run("status", "--home", str(self.home), "--json", timeout=30)
        if done.returncode != 0:
            return None
        data: dict[str, Any] = json.loads(done.stdout)
        return data

    def log(self, tail: int = 3000) -> str:
        self.err.seek(0)
        return self.err.read()[-tail:]

    def stop(self) -> int:
        """SIGTERM, then the exit code (30 s at most)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.out.close()
            self.err.close()
