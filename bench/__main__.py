"""Run every benchmark and rewrite docs/benchmarks.md."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from bench import demo_accuracy, exchange_speed, hostile, simulation_consensus
from bench.report import machine

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def main() -> None:
    started = time.monotonic()
    sections = []
    for name, module in (
        ("exchange speed", exchange_speed),
        ("simulation consensus", simulation_consensus),
        ("demo accuracy", demo_accuracy),
        ("hostile member", hostile),
    ):
        print(f"benchmark: {name}", flush=True)
        sections.append(module.run())
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


main()
