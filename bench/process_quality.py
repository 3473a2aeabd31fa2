"""Learning quality with real peer processes over libp2p: 8 `gossiplearn start` processes (the
demo's machinery: private network, TCP + Noise + yamux on 127.0.0.1), beside FedAvg given the
same steps per peer and the same bytes per peer, and local-only and centralised training."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.learning_quality import SEEDS, fedavg_curve
from bench.report import Section
from gossiplearn.demo.runner import DemoSettings, run_demo
from gossiplearn.gossip.compression import encode as compression_encode
from gossiplearn.gossip.messages import encoded_model_size
from gossiplearn.peer.home.config import TrainingConfig
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.tasks.base import TaskOptions
from gossiplearn.tasks.digits import make_task

PEERS = 8
PARTITIONS = ("iid", "dirichlet:0.5", "dirichlet:0.1")
COMPRESSION = "int8"  # the partitions of the target again with int8: a quarter of the bytes
COMPRESSED_PARTITIONS = ("iid", "dirichlet:0.5")
# Constant learning rate: with an exchange every few local steps the peers stay close, and a
# cosine decay to 0 measured worse here (gossip − FedAvg at equal bytes, seeds 0/1: iid −0.6/−1.1,
# dirichlet:0.5 −1.1/−1.4, dirichlet:0.1 −2.8/−1.7 points, against the constant rate's rows).
BASE = DemoSettings(peers=PEERS, training=TrainingConfig(lr_schedule="constant"))


def _model_bytes(compression: str) -> int:
    """What one model message carries, sent exactly or with ``compression``."""
    tensors = Trainer(make_task(TaskOptions(shard=(1, PEERS))), TrainingConfig()).snapshot()
    if compression != "none":
        encoded = compression_encode(tensors, compression)
        assert encoded is not None
        tensors = encoded.tensors
    return encoded_model_size(tensors)


def _fedavg(partition: str, seed: int, summary: dict[str, Any], model_bytes: int) -> list[str]:
    """FedAvg with the gossip run's steps per peer and as many rounds as its traffic per peer
    buys models of ``model_bytes``: its accuracy, and the gossip run's gap to it."""
    steps = round(summary["steps_per_peer"])
    rounds = max(1, round(summary["traffic_per_peer"] / (2 * model_bytes)))
    local = max(1, steps // rounds)
    final = fedavg_curve(PEERS, partition, seed, rounds, local).final
    gap = summary["gossip_mean"] - final.mean
    return [f"{100 * final.mean:.1f}% ({rounds} rounds of {local})", f"{100 * gap:+.1f} points"]


def run() -> Section:
    s = BASE
    section = Section(
        title=f"Learning quality with {PEERS} real peer processes (digits)",
        command="python -m bench",
        settings=(
            f"`gossiplearn demo` machinery with {PEERS} peer processes on 127.0.0.1 (private "
            f"network, TCP + Noise + yamux), {s.seconds:.0f} s, {s.steps_per_second:g} steps/s, "
            f"gossip interval {s.gossip_interval} s, constant learning rate "
            f"{s.training.learning_rate:g}; "
            f"training stops at {100 * s.train_share:.0f}% of the run, then averaging only (a "
            "cosine decay to 0 at that point measured 0.6 to 1.4 points worse against FedAvg for "
            "iid and dirichlet:0.5). FedAvg gets the same "
            "steps per peer and the same traffic per peer as the gossip run measured (rounds = "
            "traffic / (2 × model size), local steps = steps / rounds). Accuracy of the saved "
            "models on the common held-out test set; seconds are wall-clock. The int8 rows are "
            f"the same runs with `--compression {COMPRESSION}` (a quarter of the bytes a "
            "model, so four times the exchanges for the bytes of an exact FedAvg round). Beside "
            "FedAvg at the same bytes, they show FedAvg given as many model messages as gossip "
            "sent, exact: four times the bytes, an upper bound for an int8 FedAvg."
        ),
        header=[
            "partition", "seed", "compression", "gossip mean", "gossip worst",
            "FedAvg, same bytes and steps", "gossip − FedAvg",
            "FedAvg, same messages", "gossip − FedAvg, same messages", "local-only mean",
            "centralised", "MB per peer",
            "exchanges per peer", "seconds",
        ],
    )  # fmt: skip
    runs = [(p, seed, "none") for p in PARTITIONS for seed in SEEDS]
    runs += [(p, seed, COMPRESSION) for p in COMPRESSED_PARTITIONS for seed in SEEDS]
    exact_bytes = _model_bytes("none")
    for partition, seed, compression in runs:
        print(f"  {PEERS} peer processes, {partition}, seed {seed}, {compression} …", flush=True)
        summary = run_demo(replace(s, partition=partition, seed=seed, compression=compression))
        traffic = summary["traffic_per_peer"]

        args = (partition, seed, summary)
        same_bytes = _fedavg(*args, exact_bytes)
        same_messages = (
            same_bytes if compression == "none" else _fedavg(*args, _model_bytes(compression))
        )
        section.rows.append(
                [
                    partition, str(seed), compression, f"{100 * summary['gossip_mean']:.1f}%",
                    f"{100 * summary['gossip_worst']:.1f}%", *same_bytes, *same_messages,
                    f"{100 * summary['local_mean']:.1f}%",
                    f"{100 * summary['centralised']:.1f}%", f"{traffic / 1e6:.1f}",
                    f"{summary['exchanges_per_peer']:.0f}",
                    f"{summary['seconds_total']:.0f}",
                ]
            )  # fmt: skip
    return section
