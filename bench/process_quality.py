"""Learning quality with real peer processes over libp2p: 8 `gossiplearn start` processes (the
demo's machinery: private network, TCP + Noise + yamux on 127.0.0.1), beside FedAvg given the
same steps per peer and the same bytes per peer, and local-only and centralised training."""

from __future__ import annotations

from dataclasses import replace

from bench.learning_quality import SEEDS, fedavg_curve
from bench.report import Section
from gossiplearn.demo.runner import DemoSettings, run_demo
from gossiplearn.gossip.messages import encoded_model_size
from gossiplearn.peer.config import TrainingConfig
from gossiplearn.peer.trainer import Trainer
from gossiplearn.tasks.base import TaskOptions
from gossiplearn.tasks.digits import make_task

PEERS = 8
PARTITIONS = ("iid", "dirichlet:0.5", "dirichlet:0.1")
BASE = DemoSettings(peers=PEERS, training=TrainingConfig(lr_schedule="cosine"))


def _model_bytes() -> int:
    trainer = Trainer(make_task(TaskOptions(shard=(1, PEERS))), TrainingConfig())
    return encoded_model_size(trainer.snapshot())


def run() -> Section:
    s = BASE
    section = Section(
        title=f"Learning quality with {PEERS} real peer processes (digits)",
        command="python -m bench",
        settings=(
            f"`gossiplearn demo` machinery with {PEERS} peer processes on 127.0.0.1 (private "
            f"network, TCP + Noise + yamux), {s.seconds:.0f} s, {s.steps_per_second:g} steps/s, "
            f"gossip interval {s.gossip_interval} s, cosine learning-rate decay to 0 at "
            f"{100 * s.train_share:.0f}% of the run, then averaging only. FedAvg gets the same "
            "steps per peer and the same traffic per peer as the gossip run measured (rounds = "
            "traffic / (2 × model size), local steps = steps / rounds). Accuracy of the saved "
            "models on the common held-out test set; seconds are wall-clock."
        ),
        header=[
            "partition", "seed", "gossip mean", "gossip worst", "FedAvg, same bytes and steps",
            "gossip − FedAvg", "local-only mean", "centralised", "MB per peer",
            "exchanges per peer", "seconds",
        ],
    )  # fmt: skip
    model = _model_bytes()
    for partition in PARTITIONS:
        for seed in SEEDS:
            print(f"  {PEERS} peer processes, {partition}, seed {seed} …", flush=True)
            summary = run_demo(replace(s, partition=partition, seed=seed))
            steps = round(summary["steps_per_peer"])
            traffic = summary["traffic_per_peer"]
            rounds = max(1, round(traffic / (2 * model)))
            fedavg = fedavg_curve(PEERS, partition, seed, rounds, max(1, steps // rounds)).final
            gap = summary["gossip_mean"] - fedavg.mean
            section.rows.append(
                [
                    partition, str(seed), f"{100 * summary['gossip_mean']:.1f}%",
                    f"{100 * summary['gossip_worst']:.1f}%",
                    f"{100 * fedavg.mean:.1f}% ({rounds} rounds of {max(1, steps // rounds)})",
                    f"{100 * gap:+.1f} points", f"{100 * summary['local_mean']:.1f}%",
                    f"{100 * summary['centralised']:.1f}%", f"{traffic / 1e6:.1f}",
                    f"{summary['exchanges_per_peer']:.0f}",
                    f"{summary['seconds_total']:.0f}",
                ]
            )  # fmt: skip
    return section
