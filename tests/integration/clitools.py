"""Running the ``gossiplearn`` command as a real process, for the CLI tests."""

from __future__ import annotations

import subprocess
import sys

CLI = [sys.executable, "-m", "gossiplearn"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``gossiplearn ARGS...`` to completion; output captured as text, never raises on exit."""
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
