"""Run every benchmark and rewrite docs/benchmarks.md."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

from bench import (
    demo_accuracy,
    exchange_speed,
    hostile,
    learning_quality,
    peer_memory,
    process_quality,
    simulation_consensus,
)
from bench.report import Section, machine
from gossiplearn.demo.runner import DemoSettings, run_demo

DOCS = Path(__file__).resolve().parent.parent / "docs"
OUT = DOCS / "benchmarks.md"
IMAGES = DOCS / "img"  # the PNG plots, linked from benchmarks.md


def main() -> None:
    started = time.monotonic()
    sections: list[Section] = []
    demo: dict[str, Any] = {}  # the demo run, also the hostile benchmark's calm run

    def demo_section() -> Section:
        demo.update(run_demo(DemoSettings()))
        return demo_accuracy.section(demo)

    for name, run in (
        ("exchange speed", exchange_speed.run),
        ("learning quality", lambda: learning_quality.run(images=IMAGES)),
        ("learning quality, real processes", process_quality.run),
        ("scale", simulation_consensus.run),
        ("memory per peer", peer_memory.run),
        ("demo accuracy", demo_section),
        ("hostile member", lambda: hostile.run(calm=demo)),
    ):
        print(f"benchmark: {name}", flush=True)
        t0 = time.monotonic()
        result = run()
        sections += result if isinstance(result, list) else [result]
        print(f"  {name}: {time.monotonic() - t0:.0f} s", flush=True)
    total = time.monotonic() - started
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    text = [
        "# Benchmarks",
        "",
        f"Written by `make bench` on {today} in {total:.0f} s. Machine: {machine()}.",
        "",
    ]
    text += [s.markdown() for s in sections]
    OUT.write_text("\n".join(text), encoding="utf-8")
    print(f"wrote {OUT} ({total:.0f} s)")


if __name__ == "__main__":
    main()
