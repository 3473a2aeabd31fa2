"""Learning quality with real peer processes over libp2p: 8 `gossiplearn start` processes (the
demo's machinery: private network, TCP + Noise + yamux on 127.0.0.1), beside FedAvg given the
same steps per peer and the same bytes per peer, and local-only and centralised training."""

from __future__ import annotations

from dataclasses import replace

from bench.learning_quality import SEEDS, fedavg_curve
from bench.report import Section
from gossiplearn.demo.runner import DemoSettings, run_demo
from gossiplearn.gossip.compression import encode as compression_encode
from gossiplearn.gossip.messages import encoded_model_size
from gossiplearn.peer.config import TrainingConfig
from gossiplearn.peer.trainer import Trainer
from gossiplearn.tasks.base import TaskOptions
from gossiplearn.tasks.digits import make_task

PEERS = 8
PARTITIONS = ("iid", "dirichlet:0.5", "dirichlet:0.1")
COMPRESSION = "int8"  # also run once per partition (first seed): a quarter of the bytes
BASE = DemoSettings(peers=PEERS, training=TrainingConfig(lr_schedule="cosine"))


def _model_bytes(compression: str) -> int:
    """What one model message carries, sent exactly or with ``compression``."""
    tensors = Trainer(make_task(TaskOptions(shard=(1, PEERS))), TrainingConfig()).snapshot()
    if compression != "none":
        encoded = compression_encode(tensors, compression)
        assert encoded is not None
        tensors = encoded.tensors
    return encoded_model_size(tensors)


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
            "models on the common held-out test set; seconds are wall-clock. The int8 rows are "
            f"the same runs with `--compression {COMPRESSION}` (a quarter of the bytes a "
            "model); their FedAvg gets as many model messages as gossip sent (rounds = "
            "traffic / (2 × int8 model size)), with exact models: an upper bound for an int8 "
            "FedAvg."
        ),
        header=[
            "partition", "seed", "compression", "gossip mean", "gossip worst",
            "FedAvg, same bytes and steps",
            "gossip − FedAvg", "local-only mean", "centralised", "MB per peer",
            "exchanges per peer", "seconds",
        ],
    )  # fmt: skip
    runs = [(p, seed, "none") for p in PARTITIONS for seed in SEEDS]
    runs += [(p, SEEDS[0], COMPRESSION) for p in PARTITIONS]
    for partition, seed, compression in runs:
        print(f"  {PEERS} peer processes, {partition}, seed {seed}, {compression} …", flush=True)
        summary = run_demo(replace(s, partition=partition, seed=seed, compression=compression))
        steps = round(summary["steps_per_peer"])
        traffic = summary["traffic_per_peer"]
        rounds = max(1, round(traffic / (2 * _model_bytes(compression))))
        fedavg = fedavg_curve(PEERS, partition, seed, rounds, max(1, steps // rounds)).final
        gap = summary["gossip_mean"] - fedavg.mean
        section.rows.append(
                [
                    partition, str(seed), compression, f"{100 * summary['gossip_mean']:.1f}%",
                    f"{100 * summary['gossip_worst']:.1f}%",
                    f"{100 * fedavg.mean:.1f}% ({rounds} rounds of {max(1, steps // rounds)})",
                    f"{100 * gap:+.1f} points", f"{100 * summary['local_mean']:.1f}%",
                    f"{100 * summary['centralised']:.1f}%", f"{traffic / 1e6:.1f}",
                    f"{summary['exchanges_per_peer']:.0f}",
                    f"{summary['seconds_total']:.0f}",
                ]
            )  # fmt: skip
    return section
