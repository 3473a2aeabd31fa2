"""A hostile member in the demo setting: honest peers' accuracy with and without it.

The attacker is ``tests/adversary/attacker.py``, a consortium member written on raw py-libp2p
(it holds the consortium key). Three runs of the demo with the same settings and seed:

- **calm**: 6 honest peers;
- **mixed**: the same, plus an attacker cycling through every attack (malformed frames, NaN,
  scaled, other architecture, slow drip, stream flood, poisoned models), which gets banned;
- **poison**: an attacker that only sends plausible poisoned models (sign-flipped, or noise of
  the honest norm) and claims 2^40 samples, never an invalid message, so it is never banned:
  only screening (weight cap, norm rule, centred clipping) limits it.

Usage: ``python -m bench.hostile`` (one section, printed), or through ``make bench``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.report import Section
from gossiplearn.demo.runner import DemoSettings, run_demo

ATTACKER = Path(__file__).resolve().parent.parent / "tests" / "adversary" / "attacker.py"
POISON = "sign-flip,noise"


def attacker(
    kinds: str, seconds: float, samples: int | None = None
) -> Callable[[Path, list[str], Path], list[subprocess.Popen[bytes]]]:
    def start(root: Path, addrs: list[str], key: Path) -> list[subprocess.Popen[bytes]]:
        cmd = [sys.executable, str(ATTACKER), "--psk-file", str(key), "--kinds", kinds]
        cmd += ["--duration", str(seconds), "--interval", "0.3", "--rng-seed", "1"]
        cmd += ["--report", str(root / f"attacker-{kinds.replace(',', '+')}.json")]
        if samples is not None:
            cmd += ["--samples", str(samples)]
        for addr in addrs:
            cmd += ["--target", addr]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with (root / "attacker.log").open("wb") as log:  # the child keeps its own descriptor
            return [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)]

    return start


def run(calm: dict[str, Any] | None = None) -> Section:
    """``calm``: a demo run with the default settings already measured (``make bench`` passes
    the demo benchmark's), so it is not run twice."""
    base = DemoSettings()
    runs: list[tuple[str, dict[str, Any]]] = []
    todo: list[tuple[str, Any]] = [
        ("mixed attacks", attacker("mixed", base.seconds)),
        (f"poison only ({POISON}, claims 2^40 samples)", attacker(POISON, base.seconds, 2**40)),
    ]
    if calm is None:
        todo.insert(0, ("calm (no attacker)", None))
    else:
        runs.append(("calm (no attacker)", calm))
    for label, companions in todo:
        print(f"hostile bench: {label}", flush=True)
        runs.append((label, run_demo(DemoSettings(companions=companions))))
    calm_run = runs[0][1]
    section = Section(
        title="A hostile member (demo setting)",
        command="python -m bench.hostile",
        settings=(
            f"`gossiplearn demo` settings ({base.peers} honest peer processes, digits "
            f"{base.partition}, {base.seconds:.0f} s), plus one attacker process holding the "
            "consortium key (tests/adversary/attacker.py, raw py-libp2p) that targets every "
            "honest peer and answers their exchanges with attacks. Accuracy of the honest peers' "
            "saved models on the common held-out test set. Under `make bench` the calm run is the "
            "demo run above."
        ),
        header=[
            "run",
            "mean accuracy",
            "worst peer",
            "vs calm",
            "refused (by reason, all peers)",
            "clipped",
            "bans",
        ],
    )
    for label, s in runs:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(s["refused"].items())) or "—"
        section.rows.append(
            [
                label,
                f"{100 * s['gossip_mean']:.1f}%",
                f"{100 * s['gossip_worst']:.1f}%",
                f"{100 * (s['gossip_mean'] - calm_run['gossip_mean']):+.1f} points",
                refused,
                str(s["clipped"]),
                str(s["bans"]),
            ]
        )
    section.notes.append(
        f"Centralised training on the union: {100 * calm_run['centralised']:.1f}%; local-only: "
        f"{100 * calm_run['local_mean']:.1f}%."
    )
    return section


if __name__ == "__main__":
    print(run().markdown())
