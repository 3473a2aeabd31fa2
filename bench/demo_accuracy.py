"""Learning quality of a local consortium: the demo, run once."""

from __future__ import annotations

from typing import Any

from bench.report import Section
from gossiplearn.demo.runner import DemoSettings, run_demo


def run() -> Section:
    return section(run_demo(DemoSettings()))


def section(summary: dict[str, Any]) -> Section:
    """The table for one demo run with the default settings (``summary`` from ``run_demo``)."""
    settings = DemoSettings()
    section = Section(
        title="Demo: 6 peer processes, digits, dirichlet:0.5",
        command="gossiplearn demo",
        settings=(
            f"{settings.peers} real peer processes on 127.0.0.1, {settings.seconds:.0f} s, "
            f"{settings.steps_per_second:g} steps/s, gossip interval {settings.gossip_interval} s, "
            f"training stops after {100 * settings.train_share:.0f}% of the run. Accuracy on the "
            "common held-out test set (20% of digits, stratified)."
        ),
        header=["", "mean accuracy", "worst peer"],
    )
    s = summary
    section.rows += [
        ["gossip", f"{100 * s['gossip_mean']:.1f}%", f"{100 * s['gossip_worst']:.1f}%"],
        [
            "local-only (same steps)",
            f"{100 * s['local_mean']:.1f}%",
            f"{100 * s['local_worst']:.1f}%",
        ],
        ["centralised (union)", f"{100 * s['centralised']:.1f}%", ""],
    ]
    section.notes.append(
        f"{s['steps_per_peer']:.0f} steps and {s['exchanges_per_peer']:.0f} exchanges per peer; "
        f"the whole demo took {s['seconds_total']:.0f} s."
    )
    return section
