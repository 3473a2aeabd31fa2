"""Run the benchmarks and write docs/benchmarks.md.

``python -m bench``: every benchmark; rewrites the whole file.
``python -m bench NAME [NAME ...]``: only those (names below, e.g. ``own_data``); their
sections replace the sections of the same title in docs/benchmarks.md, new ones are appended,
the rest of the file is kept as it is.
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any

from bench.report import Section, machine

DOCS = Path(__file__).resolve().parent.parent / "docs"
OUT = DOCS / "benchmarks.md"
IMAGES = DOCS / "img"  # the PNG plots, linked from benchmarks.md


def benchmarks() -> list[tuple[str, str, Callable[[], Section | list[Section]]]]:
    """(name on the command line, description, run) in the order of the file. The modules
    are imported when their benchmark runs (learning_quality needs matplotlib, the others
    not)."""
    demo: dict[str, Any] = {}  # the demo run, also the hostile benchmark's calm run

    def bench(module: str, **kwargs: Any) -> Callable[[], Section | list[Section]]:
        return lambda: import_module(f"bench.{module}").run(**kwargs)

    def demo_section() -> Section:
        from bench.demo_accuracy import section  # noqa: PLC0415
        from gossiplearn.demo.runner import DemoSettings, run_demo  # noqa: PLC0415

        demo.update(run_demo(DemoSettings()))
        return section(demo)

    def hostile() -> Section:
        from bench.hostile import run as run_hostile  # noqa: PLC0415

        # without the demo benchmark before it, it runs its own calm run
        return run_hostile(calm=demo or None)

    return [
        ("exchange_speed", "exchange speed", bench("exchange_speed")),
        ("learning_quality", "learning quality", bench("learning_quality", images=IMAGES)),
        ("process_quality", "learning quality, real processes", bench("process_quality")),
        ("scale", "scale", bench("simulation_consensus")),
        ("peer_memory", "memory per peer", bench("peer_memory")),
        ("demo", "demo accuracy", demo_section),
        ("hostile", "hostile member", hostile),
        ("own_data", "own data (task contracts)", bench("own_data")),
        ("secure_averaging", "secure averaging", bench("secure_averaging")),
        ("privacy", "differential privacy", bench("privacy")),
    ]


def run(names: list[str] | None) -> tuple[list[Section], float]:
    started = time.monotonic()
    sections: list[Section] = []
    for name, description, bench in benchmarks():
        if names is not None and name not in names:
            continue
        print(f"benchmark: {description}", flush=True)
        t0 = time.monotonic()
        result = bench()
        sections += result if isinstance(result, list) else [result]
        print(f"  {description}: {time.monotonic() - t0:.0f} s", flush=True)
    return sections, time.monotonic() - started


def splice(text: str, sections: list[Section]) -> str:
    """``text`` (a benchmarks.md) with each of ``sections`` in place of the ``## `` section of
    the same title, or appended when there is none."""
    parts: list[list[str]] = [[]]  # the preamble, then one list of lines per section
    for line in text.splitlines():
        if line.startswith("## "):
            parts.append([])
        parts[-1].append(line)
    chunks = ["\n".join(p).rstrip("\n") + "\n" for p in parts]
    titles = [p[0][3:].strip() if p and p[0].startswith("## ") else None for p in parts]
    for section in sections:
        new = section.markdown()
        if section.title in titles:
            chunks[titles.index(section.title)] = new
        else:
            chunks.append(new)
            titles.append(section.title)
    return "\n".join(chunks)


def main(argv: list[str]) -> None:
    known = [name for name, _, _ in benchmarks()]
    unknown = [a for a in argv if a not in known]
    if unknown:
        sys.exit(f"unknown benchmark {unknown[0]!r}; the benchmarks are: {', '.join(known)}")
    if argv:
        sections, total = run(argv)
        OUT.write_text(splice(OUT.read_text(encoding="utf-8"), sections), encoding="utf-8")
        print(f"updated {len(sections)} section(s) of {OUT} ({total:.0f} s)")
        return
    sections, total = run(None)
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
    main(sys.argv[1:])
