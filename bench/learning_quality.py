"""Learning quality in the in-process simulation: gossip beside FedAvg, local-only and centralised.

Every configuration (peers N, partition, seed) trains the digits task's MLP with the peer's own
``Trainer``, so gossip and the baselines see the same data, model, optimiser and step budget:

- **gossip**: N ``Node``s on the in-memory transport (the deployed gossip core: exchange state
  machine, merge rule, screening, adoption), virtual time, ``STEPS_PER_SECOND`` local SGD steps
  per second, one exchange started every ``GOSSIP_INTERVAL`` s per peer (jittered), until every
  peer has taken ``STEPS`` steps.
- **FedAvg** (McMahan et al. 2017): a central server; each round every client loads the global
  model, takes ``LOCAL_STEPS`` SGD steps, and the server averages the N models weighted by their
  sample counts. ``ROUNDS`` × ``LOCAL_STEPS`` = ``STEPS``.
- **local-only**: each shard alone, ``STEPS`` steps; **centralised**: one model on the union of
  the shards' training data, ``STEPS`` steps.

Traffic per peer counts what crosses a peer's link, sent plus received: for a FedAvg client one
model down and one up per round. One FedAvg round a second and one gossip exchange started every
2 s per peer move about the same bytes per peer per second (a peer also answers about one
exchange per interval, and each exchange moves a model each way), so the two are compared at
equal bytes and equal steps.

The same comparison again with a quarter of the bytes a message: gossip sends int8 models
(``FAST_COMPRESSION``) every ``FAST_INTERVAL`` s, and FedAvg gets the same fourfold message budget
as four times the rounds of a quarter of the local steps (with exact models: an upper bound on an
int8 FedAvg). On non-iid shards gossip gains much more from talking more often than FedAvg does.
"""

from __future__ import annotations

import concurrent.futures
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import trio
import trio.testing

from bench.report import Section
from gossiplearn.gossip.messages import encoded_model_size
from gossiplearn.peer.home.config import GossipConfig, TrainingConfig
from gossiplearn.peer.home.privacy import PrivacyConfig
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.peer.sim import InlineLearner, build_simulation
from gossiplearn.tasks.base import Task, TaskOptions
from gossiplearn.tasks.digits import make_task, union_of_shards

PARTITIONS = ("iid", "dirichlet:0.5", "dirichlet:0.1")
SIZES = (8, 16)
SEEDS = (0, 1)
STEPS_PER_SECOND = 20.0
STEPS = 1500
GOSSIP_INTERVAL = 2.0
LOCAL_STEPS = 20  # FedAvg: one round per second of the same training pace
ROUNDS = STEPS // LOCAL_STEPS
SAMPLE_EVERY = 2.5  # virtual seconds between measurements of the gossip run
TARGET = 0.95  # of centralised accuracy
COMPRESSIONS = ("fp16", "bf16", "int8")  # measured at the largest N, every partition and seed
# Gossip with int8 on the wire (a quarter of the bytes) exchanges 4x as often for the same bytes;
# FedAvg gets the same 4x budget of messages as 4x the rounds of a quarter of the local steps.
FAST_COMPRESSION = "int8"
FAST_INTERVAL = GOSSIP_INTERVAL / 4
FAST_LOCAL_STEPS = LOCAL_STEPS // 4
TRAINING = TrainingConfig()  # lr 0.05, momentum 0.9, batch 32: what a peer uses by default
# Gossip peers decay the learning rate to 0 over their steps (``--lr-schedule cosine``), so their
# models settle together; FedAvg keeps it constant, which measured better for FedAvg (N = 16,
# seed 0: 95.5 / 95.5 / 94.4% constant, 95.3 / 94.4 / 93.9% cosine).
GOSSIP_TRAINING = TrainingConfig(lr_schedule="cosine", max_steps=STEPS)


@dataclass
class Point:
    seconds: float  # virtual seconds (gossip) or rounds × LOCAL_STEPS / STEPS_PER_SECOND
    rounds: float
    traffic: float  # bytes per peer, sent + received
    mean: float  # test accuracy, mean over peers
    worst: float
    consensus: float  # mean relative distance of the peers' models to their mean (0: FedAvg)


@dataclass
class Curve:
    points: list[Point] = field(default_factory=list)

    @property
    def final(self) -> Point:
        return self.points[-1]

    def at_traffic(self, traffic: float) -> float:
        """Mean accuracy once ``traffic`` bytes per peer have been spent (linear between
        measurements; the final accuracy beyond the last one)."""
        xs = [p.traffic for p in self.points]
        ys = [p.mean for p in self.points]
        return float(np.interp(traffic, xs, ys))

    def reach(self, accuracy: float) -> Point | None:
        """The first measurement at which the mean accuracy reached ``accuracy``."""
        return next((p for p in self.points if p.mean >= accuracy), None)


def _tasks(n: int, partition: str, seed: int) -> list[Task]:
    return [
        make_task(TaskOptions(seed=seed, shard=(i, n), partition=partition))
        for i in range(1, n + 1)
    ]


def _test_accuracy(trainer: Trainer) -> float:
    assert trainer.task.test is not None
    return trainer.task.metrics(trainer.model, trainer.task.test)["accuracy"]


def _consensus(models: list[dict[str, np.ndarray]]) -> float:
    mean = {k: np.mean([m[k] for m in models], axis=0) for k in models[0]}
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in mean.values()))
    dists = [math.sqrt(sum(float(np.sum((m[k] - mean[k]) ** 2)) for k in m)) for m in models]
    return statistics.fmean(dists) / norm if norm else 0.0


def gossip_curve(
    n: int, partition: str, seed: int, compression: str = "none", interval: float = GOSSIP_INTERVAL
) -> tuple[Curve, float]:
    """The gossip run's measurements, and the exchanges completed per peer."""
    torch.manual_seed(seed)
    trainers = [
        Trainer(t, GOSSIP_TRAINING, seed=1000 * seed + i)
        for i, t in enumerate(_tasks(n, partition, seed))
    ]
    learners = [InlineLearner(t) for t in trainers]
    training = replace(GOSSIP_TRAINING, steps_per_second=STEPS_PER_SECOND, eval_interval=30.0)
    gossip = GossipConfig(
        interval=interval,
        exchange_timeout=10.0,
        discovery_interval=2.0,
        compression=compression,
    )
    sim = build_simulation(learners, gossip=gossip, training=training, seed=seed, full_view=True)
    curve = Curve()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await sim.run(nursery)
            start = trio.current_time()
            while True:
                elapsed = trio.current_time() - start
                accs = [_test_accuracy(t) for t in trainers]
                curve.points.append(
                    Point(
                        seconds=elapsed,
                        rounds=elapsed / interval,
                        traffic=2 * sim.network.bytes_sent / n,
                        mean=statistics.fmean(accs),
                        worst=min(accs),
                        consensus=_consensus([t.snapshot() for t in trainers]),
                    )
                )
                if all(t.steps >= STEPS for t in trainers):
                    break
                await trio.sleep(SAMPLE_EVERY)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    exchanges = sum(node.stats.counters.completed for node in sim.nodes) / n
    return curve, exchanges


def fedavg_curve(
    n: int,
    partition: str,
    seed: int,
    rounds: int = ROUNDS,
    local_steps: int = LOCAL_STEPS,
    *,
    training: TrainingConfig = TRAINING,
    privacy: PrivacyConfig | None = None,
) -> Curve:
    """``privacy`` with ``dp``: every client trains with DP-SGD (its own budget over its
    ``training.max_steps`` steps, kept across rounds); the server averages what they send."""
    torch.manual_seed(seed)
    trainers = [
        Trainer(t, training, seed=1000 * seed + i, privacy=privacy)
        for i, t in enumerate(_tasks(n, partition, seed))
    ]
    weights = np.array([t.samples for t in trainers], dtype=np.float64)
    weights /= weights.sum()
    global_model = trainers[0].snapshot()  # the server's initial model
    per_round = 2 * encoded_model_size(global_model)  # one model down, one up, per client
    curve = Curve()
    for r in range(rounds + 1):
        if r:
            models = []
            for t in trainers:
                t.load(global_model)
                t.train_steps(local_steps)
                models.append(t.snapshot())
            weighted = list(zip(weights, models, strict=True))
            global_model = {
                k: np.sum([w * m[k].astype(np.float64) for w, m in weighted], axis=0).astype(
                    np.float32
                )
                for k in global_model
            }
        if (r * local_steps) % (2 * LOCAL_STEPS) == 0 or r == rounds:  # every 2 s
            trainers[0].load(global_model)
            acc = _test_accuracy(trainers[0])
            curve.points.append(
                Point(r * local_steps / STEPS_PER_SECOND, r, r * per_round, acc, acc, 0.0)
            )
    return curve


def local_only(n: int, partition: str, seed: int) -> tuple[float, float]:
    accs = []
    for i, task in enumerate(_tasks(n, partition, seed)):
        trainer = Trainer(task, TRAINING, seed=1000 * seed + i)
        trainer.train_steps(STEPS)
        accs.append(_test_accuracy(trainer))
    return statistics.fmean(accs), min(accs)


def centralised(n: int, partition: str, seed: int) -> float:
    options = TaskOptions(seed=seed, shard=(1, n), partition=partition)
    base = make_task(options)
    trainer = Trainer(replace(base, train=union_of_shards(options)), TRAINING, seed=seed)
    trainer.train_steps(STEPS)
    return _test_accuracy(trainer)


@dataclass
class Outcome:
    n: int
    partition: str
    seed: int
    gossip: Curve
    exchanges: float
    fedavg: Curve
    fast: Curve  # gossip, FAST_COMPRESSION every FAST_INTERVAL s
    fedavg_fast: Curve  # FedAvg, 4x the rounds of FAST_LOCAL_STEPS
    local: tuple[float, float]
    central: float


def run_config(n: int, partition: str, seed: int) -> Outcome:
    torch.set_num_threads(1)
    gossip, exchanges = gossip_curve(n, partition, seed)
    fast = gossip_curve(n, partition, seed, FAST_COMPRESSION, FAST_INTERVAL)[0]
    fedavg_fast = fedavg_curve(n, partition, seed, STEPS // FAST_LOCAL_STEPS, FAST_LOCAL_STEPS)
    return Outcome(
        n, partition, seed, gossip, exchanges, fedavg_curve(n, partition, seed), fast,
        fedavg_fast, local_only(n, partition, seed), centralised(n, partition, seed),
    )  # fmt: skip


def _mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _reach(curve: Curve, target: float) -> str:
    p = curve.reach(target)
    return "not reached" if p is None else f"{p.rounds:.0f} / {_mb(p.traffic)} / {p.seconds:.0f}"


def equal_bytes_gap(gossip: Curve, fedavg: Curve) -> float:
    """Gossip's mean accuracy minus FedAvg's, both after the smaller of their two traffics."""
    budget = min(gossip.final.traffic, fedavg.final.traffic)
    return gossip.at_traffic(budget) - fedavg.at_traffic(budget)


def _plot(outcomes: list[Outcome], folder: Path) -> list[tuple[str, str]]:
    """One PNG per partition (the largest N, first seed): accuracy against traffic per peer."""
    # imported here: the benchmarks that reuse this module's baselines need no matplotlib
    from bench.plots import pyplot as plt  # noqa: PLC0415

    images = []
    n, seed = max(SIZES), SEEDS[0]
    folder.mkdir(parents=True, exist_ok=True)
    for partition in PARTITIONS:
        o = next(x for x in outcomes if (x.n, x.partition, x.seed) == (n, partition, seed))
        fig, (acc, cons) = plt.subplots(1, 2, figsize=(10, 3.8))
        for name, curve, colour in (
            ("gossip", o.gossip, "C0"),
            ("FedAvg", o.fedavg, "C1"),
            (f"gossip, {FAST_COMPRESSION} every {FAST_INTERVAL:g} s", o.fast, "C2"),
        ):
            mb = [p.traffic / 1e6 for p in curve.points]
            acc.plot(mb, [100 * p.mean for p in curve.points], color=colour, label=f"{name} mean")
            if curve is o.gossip:
                acc.fill_between(
                    mb, [100 * p.worst for p in curve.points], [100 * p.mean for p in curve.points],
                    color=colour, alpha=0.2, label="gossip worst peer",
                )  # fmt: skip
        acc.axhline(100 * o.central, color="k", linestyle="--", label="centralised")
        acc.axhline(100 * o.local[0], color="grey", linestyle=":", label="local-only mean")
        acc.set(xlabel="traffic per peer (MB, sent + received)", ylabel="test accuracy (%)")
        acc.set_ylim(max(0, 100 * o.local[1] - 10), 100)
        acc.legend(loc="lower right", fontsize=8)
        for curve, colour in ((o.gossip, "C0"), (o.fast, "C2")):
            cons.plot(
                [p.seconds for p in curve.points],
                [p.consensus for p in curve.points],
                color=colour,
                label="gossip" if curve is o.gossip else "gossip, int8",
            )
        cons.legend(loc="upper right", fontsize=8)  # fmt: skip
        cons.set(xlabel="virtual seconds", ylabel="consensus distance", yscale="log")
        fig.suptitle(f"digits, {partition}, N = {n}, seed {seed}")
        fig.tight_layout()
        name = f"learning-{partition.replace(':', '-')}.png"
        fig.savefig(folder / name, dpi=90)
        plt.close(fig)
        images.append(
            (
                f"{partition}: accuracy against traffic, and consensus distance",
                f"{folder.name}/{name}",
            )
        )
    return images


def compressed_final(n: int, partition: str, seed: int, compression: str) -> Point:
    torch.set_num_threads(1)
    return gossip_curve(n, partition, seed, compression)[0].final


def run(workers: int = 2, images: Path | None = None) -> list[Section]:
    """Every configuration (``workers`` at a time); plots go to ``images`` (if given)."""
    configs = [(n, p, s) for p in PARTITIONS for n in SIZES for s in SEEDS]
    lossy = [(max(SIZES), p, s, c) for p in PARTITIONS for s in SEEDS for c in COMPRESSIONS]
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        outcomes = list(pool.map(run_config, *zip(*configs, strict=True)))
        lossy_finals = list(pool.map(compressed_final, *zip(*lossy, strict=True)))
    settings = (
        "In-process simulation (the deployed gossip core on the in-memory transport, virtual "
        f"time), digits MLP, the peer's own `Trainer` for gossip and every baseline. Each peer "
        f"takes {STEPS} SGD steps (batch {TRAINING.batch_size}, lr {TRAINING.learning_rate:g}, "
        f"momentum {TRAINING.momentum:g}) at {STEPS_PER_SECOND:g} steps/s; gossip starts one "
        f"exchange every {GOSSIP_INTERVAL:g} s per peer (jittered) with a cosine learning-rate "
        f"decay; FedAvg runs {ROUNDS} rounds of {LOCAL_STEPS} local steps (constant lr, which "
        "measured better for it) and averages all N models each round, weighted by samples; "
        f"local-only and centralised (the union of the shards) take {STEPS} steps. Accuracy on "
        "the common held-out test set; traffic per peer = bytes sent + received (a FedAvg "
        "client: one model down and one up per round). **Gossip, int8 ×4**: the same gossip "
        f"with `--compression {FAST_COMPRESSION}` (a quarter of the bytes a model) and an "
        f"exchange every {FAST_INTERVAL:g} s, so the same bytes per peer again. For fairness, "
        f"**FedAvg ×4** is FedAvg with the same 4× budget of messages: {STEPS // FAST_LOCAL_STEPS} "
        f"rounds of {FAST_LOCAL_STEPS} local steps (exact models, so an upper bound for an int8 "
        "FedAvg)."
    )
    accuracy = Section(
        title="Learning quality in simulation: gossip beside FedAvg (digits)",
        command="python -m bench",
        settings=settings,
        header=[
            "partition", "N", "seed", "gossip mean / worst", "FedAvg",
            "gossip − FedAvg, equal bytes", "gossip int8 ×4 mean / worst", "int8 ×4 − FedAvg",
            "FedAvg ×4", "local-only mean / worst", "centralised", "consensus distance",
        ],
    )  # fmt: skip
    cost = Section(
        title=f"Cost to reach {100 * TARGET:.0f}% of centralised accuracy (same runs)",
        command="python -m bench",
        settings="Rounds / MB per peer / seconds (virtual) until the mean test accuracy first "
        f"reaches {100 * TARGET:.0f}% of the centralised model's. A gossip round is one "
        f"gossip interval ({GOSSIP_INTERVAL:g} s, or {FAST_INTERVAL:g} s for int8 ×4); a FedAvg "
        "round is one aggregation.",
        header=[
            "partition", "N", "seed", "total MB per peer gossip / FedAvg", "gossip",
            "gossip int8 ×4", "FedAvg",
        ],
    )  # fmt: skip
    for o in outcomes:
        g, f, q = o.gossip.final, o.fedavg.final, o.fast.final
        target = TARGET * o.central
        accuracy.rows.append(
            [
                o.partition, str(o.n), str(o.seed), f"{_pct(g.mean)} / {_pct(g.worst)}",
                _pct(f.mean), f"{100 * equal_bytes_gap(o.gossip, o.fedavg):+.1f} points",
                f"{_pct(q.mean)} / {_pct(q.worst)}",
                f"{100 * equal_bytes_gap(o.fast, o.fedavg):+.1f} points",
                _pct(o.fedavg_fast.final.mean), f"{_pct(o.local[0])} / {_pct(o.local[1])}",
                _pct(o.central), f"{g.consensus:.4f} / {q.consensus:.4f}",
            ]
        )  # fmt: skip
        cost.rows.append(
            [
                o.partition, str(o.n), str(o.seed), f"{_mb(g.traffic)} / {_mb(f.traffic)}",
                _reach(o.gossip, target), _reach(o.fast, target), _reach(o.fedavg, target),
            ]
        )  # fmt: skip
    for partition in PARTITIONS:
        ours = [o for o in outcomes if o.partition == partition]
        for name, gaps in (
            ("gossip", [equal_bytes_gap(o.gossip, o.fedavg) for o in ours]),
            ("gossip int8 ×4", [equal_bytes_gap(o.fast, o.fedavg) for o in ours]),
            ("gossip int8 ×4 − FedAvg ×4", [o.fast.final.mean - o.fedavg_fast.final.mean
                                            for o in ours]),
        ):  # fmt: skip
            accuracy.notes.append(
                f"- {partition}, {name}: mean over N and seeds {100 * statistics.fmean(gaps):+.1f}"
                f" points (worst {100 * min(gaps):+.1f})."
            )
    if images is not None:
        accuracy.images = _plot(outcomes, images)
    return [accuracy, cost, _compression_section(outcomes, lossy, lossy_finals)]


def _compression_section(
    outcomes: list[Outcome], lossy: list[tuple[int, str, int, str]], finals: list[Point]
) -> Section:
    n = max(SIZES)
    section = Section(
        title=f"Compression: the accuracy cost of sending fewer bytes (simulation, N = {n})",
        command="python -m bench",
        settings="The gossip runs above, with every peer sending its model in a lossy "
        "encoding (`gossip.compression`; int8 with error feedback), the same schedule and "
        f"steps. Mean over {len(SEEDS)} seeds.",
        header=["partition", "compression", "gossip mean", "gossip worst", "MB per peer",
                "vs exact"],
    )  # fmt: skip
    for partition in PARTITIONS:
        exact = [o.gossip.final for o in outcomes if (o.n, o.partition) == (n, partition)]
        base = statistics.fmean(p.mean for p in exact)
        by_encoding: dict[str, list[Point]] = {c: [] for c in COMPRESSIONS}
        for (_, p, _, c), final in zip(lossy, finals, strict=True):
            if p == partition:
                by_encoding[c].append(final)
        rows = [("none", exact), *by_encoding.items()]
        for name, points in rows:
            mean = statistics.fmean(p.mean for p in points)
            section.rows.append(
                [partition, name, _pct(mean), _pct(statistics.fmean(p.worst for p in points)),
                 _mb(statistics.fmean(p.traffic for p in points)),
                 "—" if name == "none" else f"{100 * (mean - base):+.1f} points"]
            )  # fmt: skip
    return section
