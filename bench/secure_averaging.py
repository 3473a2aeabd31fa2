"""Secure group averaging (docs/protocol.md 16) beside plain push-pull: what a round costs
between real peers on 127.0.0.1 (bytes, wall time, CPU by step, memory), and what it does to
accuracy on digits with real peer processes at the same traffic per peer.

Cost: the leader is a ``Node`` in this process, each other member a ``Node`` in a process of its
own (``python -m bench.secure_averaging --member …``, the harness of bench/exchange_speed.py);
rounds are led through the node's own driver (``node.groups.lead()``), the plain baseline is
``node.initiate(peer)`` against exchange_speed's responder process. Members report their
traffic and memory after every round as JSON lines on stdout.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import trio

from bench.exchange_speed import LISTEN, _node, _timed_exchanges, responder, responders
from bench.report import Section
from gossiplearn.crypto import masking
from gossiplearn.crypto.fixedpoint import Contribution, VectorLayout, decode_sum
from gossiplearn.crypto.identity import Identity
from gossiplearn.demo.runner import DemoSettings, run_demo
from gossiplearn.gossip.group_messages import GroupShare, decode, encode, words_limits
from gossiplearn.gossip.messages import PeerRecord
from gossiplearn.peer.net.host import Libp2pTransport
from gossiplearn.peer.node.group import GroupOutcome
from gossiplearn.peer.node.node import Node

# (parameters, group sizes); 0 is the plain push-pull exchange
COSTS = ((1_000_000, (0, 3, 4, 8)), (10_000_000, (0, 3, 4)))
REPEATS = 3  # timed rounds per configuration (the median is reported)
MAX_RETRIES = 3  # rounds that did not complete, retried before the benchmark gives up
RETRIED: list[str] = []
MEMBER_POLL = 0.01  # seconds between a member's looks at its counters

# accuracy: the demo's consortium (6 peers, digits, dirichlet:0.5, 30 s, interval 0.3 s)
BASE = DemoSettings()
ACCURACY_GROUPS = (3, 4)
SEEDS = (0, 1)
MIB = 1 << 20


# ---------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> int:
    """Reset this process's peak resident set (VmHWM) to the current one; bytes resident now.
    (Linux: writing 5 to clear_refs; where that is refused the peak is since the start.)"""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kib("VmRSS") * 1024


def _peak() -> int:
    return _status_kib("VmHWM") * 1024


# ---------------------------------------------------------------------------- a member process


async def _member(params: int, size: int, seed: int) -> None:
    """A group member in a process of its own: prints its address, then one JSON line after
    every invite it answered (its counters, traffic and peak memory above idle); until
    killed."""
    identity = Identity.generate()
    async with Libp2pTransport.open(identity, LISTEN) as transport:
        node = _node(transport, params, seed, group=size, identity=identity)
        idle = _reset_peak()
        print(transport.addrs()[0], flush=True)
        seen: tuple[int, ...] = (0, 0, 0)
        while True:
            g = node.stats.group
            now = (g.completed, sum(g.abandoned.values()), g.declined_inbound)
            if now != seen:
                seen = now
                report = {
                    "completed": g.completed,
                    "ended": sum(now),
                    "sent": node.stats.bytes_sent,
                    "received": node.stats.bytes_received,
                    "above_idle": _peak() - idle,
                }
                print(json.dumps(report), flush=True)
            await trio.sleep(MEMBER_POLL)


class Reports:
    """The JSON lines a member process prints after its address."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.all: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = await self.stream.receive_some(4096)
            if not chunk:
                raise RuntimeError("a member process ended")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        self.all.append(json.loads(line))
        return self.all[-1]

    def round_traffic(self) -> list[int]:
        """Bytes sent + received in each round the member merged (a retried round's bytes
        count in the next one)."""
        out, last = [], 0
        for r in self.all:
            if r["completed"] > len(out):
                out.append(r["sent"] + r["received"] - last)
                last = r["sent"] + r["received"]
        return out


# ---------------------------------------------------------------------------- cost of a round


@dataclass
class Cost:
    params: int
    size: int  # 0: plain push-pull
    seconds: float  # median, until the leader (initiator) merged
    all_merged: float  # median, until every member merged (0 for plain)
    leader_bytes: float  # sent + received per round, the leader's (the initiator's)
    member_bytes: float  # sent + received per round, one member's (the responder's: = leader)
    leader_memory: int  # peak resident bytes above idle over the rounds
    member_memory: int


def _traffic(node: Node) -> int:
    return node.stats.bytes_sent + node.stats.bytes_received


async def _plain(params: int) -> Cost:
    async with Libp2pTransport.open(Identity.generate(), LISTEN) as ta:
        a = _node(ta, params, seed=0)
        serve = ["-m", "bench.exchange_speed", "--serve", str(params), "none"]
        async with responder(serve) as (addr, _):
            peer = await ta.connect(addr)
            a.view.learn(PeerRecord(peer, (addr,)), trio.current_time())
            idle = _reset_peak()
            before = _traffic(a)
            seconds = await _timed_exchanges(a, peer)
            per_exchange = (_traffic(a) - before) / a.stats.counters.completed
            memory = _peak() - idle
    return Cost(params, 0, seconds, 0.0, per_exchange, per_exchange, memory, 0)


async def _group(params: int, size: int) -> Cost:
    identity = Identity.generate()
    async with Libp2pTransport.open(identity, LISTEN) as transport:
        leader = _node(transport, params, seed=0, group=size, identity=identity)
        member = ["-m", "bench.secure_averaging", "--member", str(params), str(size)]
        async with responders([[*member, str(i)] for i in range(1, size)]) as found:
            reports = [Reports(stream) for _, stream in found]
            for addr, _ in found:
                peer = await transport.connect(addr)
                leader.view.learn(PeerRecord(peer, (addr,)), trio.current_time())
            idle = _reset_peak()
            times: list[float] = []
            merged: list[float] = []
            leader_bytes: list[int] = []
            while len(times) < REPEATS:
                before = _traffic(leader)
                start = time.perf_counter()
                outcome = await leader.groups.lead()
                seconds = time.perf_counter() - start
                if outcome is not GroupOutcome.COMPLETED:
                    if len(RETRIED) >= MAX_RETRIES:
                        raise RuntimeError(f"group rounds do not complete: {outcome}")
                    RETRIED.append(f"{outcome.value} (g = {size}, {params:,} parameters)")
                    print(f"    a round {outcome.value}; retrying", flush=True)
                    await trio.sleep(0.5)
                    continue
                with trio.fail_after(120):  # every member merged it
                    for r in reports:
                        while (await r.next())["completed"] < len(times) + 1:
                            pass
                merged.append(time.perf_counter() - start)
                times.append(seconds)
                leader_bytes.append(_traffic(leader) - before)
            memory = _peak() - idle
    return Cost(
        params,
        size,
        statistics.median(times),
        statistics.median(merged),
        statistics.median(leader_bytes),
        statistics.median(b for r in reports for b in r.round_traffic()),
        memory,
        max(r.all[-1]["above_idle"] for r in reports),
    )


# ---------------------------------------------------------------------------- CPU by step


@dataclass
class Steps:
    """Seconds of one step of a round, on one core, measured alone (no network)."""

    encode: float  # one member: flatten, check, weight and encode to fixed point
    mask: float  # one member: one pair mask (a ChaCha20 keystream) added; x (g - 1) per member
    frame: float  # one share: msgpack encode + decode (each member once, the leader g - 1 times)
    sum_decode: float  # the leader: add g vectors mod 2^64, decode the sum to float32


def _timed(fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _steps(params: int) -> Steps:
    size = 3
    rng = np.random.default_rng(0)
    tensors = {"w": rng.normal(size=params).astype(np.float32)}
    layout = VectorLayout.of([("w", "float32", (params,))], None)
    own = Contribution.of(layout, tensors, None)
    words = own.encode(weight=1 / size, stats_weight=1 / size)
    seed = os.urandom(masking.SEED_BYTES)
    share = GroupShare(bytes(16), masking.apply_masks(words, "a", {"b": seed}))
    limits = words_limits(params)
    # a group's shares: a's and b's masks cancel in the sum, c's is left plain
    vectors = [share.words, masking.apply_masks(words, "b", {"a": seed}), words]
    steps = Steps(
        encode=_timed(
            lambda: Contribution.of(layout, tensors, None).encode(weight=0.5, stats_weight=0.5)
        ),
        mask=_timed(lambda: masking.apply_masks(words, "a", {"b": seed})),
        frame=_timed(lambda: decode(encode(share), limits=limits)),
        sum_decode=_timed(lambda: decode_sum(layout, masking.sum_words(vectors, params))),
    )
    return steps


# ---------------------------------------------------------------------------- accuracy


@dataclass
class Run:
    seed: int
    label: str
    interval: float  # seconds, the gossip interval of every peer
    summary: dict[str, Any]  # run_demo's
    secure: bool


def _accuracy_runs() -> list[Run]:
    """Per seed: plain push-pull at the demo's interval; then for each group size a secure run
    at that interval and a plain run whose interval is stretched (or shrunk) so that it sends
    about the bytes per peer the secure run sent."""
    runs: list[Run] = []
    for seed in SEEDS:
        plain = replace(BASE, seed=seed)
        print(f"  demo, plain push-pull, seed {seed} …", flush=True)
        base = run_demo(plain)
        runs.append(Run(seed, "plain push-pull", plain.gossip_interval, base, False))
        for size in ACCURACY_GROUPS:
            secure = replace(plain, extra_args=("--secure-averaging", "--group-size", str(size)))
            print(f"  demo, secure averaging g = {size}, seed {seed} …", flush=True)
            summary = run_demo(secure)
            runs.append(Run(seed, f"secure, g = {size}", secure.gossip_interval, summary, True))
            # plain traffic is proportional to the exchange rate: scale the interval by the
            # ratio of bytes per peer to send what the secure run sent
            ratio = base["traffic_per_peer"] / max(1.0, summary["traffic_per_peer"])
            matched = replace(plain, gossip_interval=round(plain.gossip_interval * ratio, 2))
            print(f"  demo, plain, interval {matched.gossip_interval} s, seed {seed} …", flush=True)
            runs.append(
                Run(seed, f"plain, bytes of g = {size}", matched.gossip_interval,
                    run_demo(matched), False)
            )  # fmt: skip
    return runs


# ---------------------------------------------------------------------------- sections


def run() -> list[Section]:
    costs: list[Cost] = []
    for params, sizes in COSTS:
        for size in sizes:
            what = "plain push-pull" if size == 0 else f"a group round of {size}"
            print(f"  {what}, {params:,} parameters …", flush=True)
            costs.append(trio.run(_plain, params) if size == 0 else trio.run(_group, params, size))
    print("  CPU by step …", flush=True)
    steps = {params: _steps(params) for params, _ in COSTS}
    runs = _accuracy_runs()
    return [_cost_section(costs, steps), _accuracy_section(runs)]


def _cost_section(costs: list[Cost], steps: dict[int, Steps]) -> Section:
    section = Section(
        title="Secure averaging: the cost of a round (127.0.0.1)",
        command="python -m bench secure_averaging",
        settings=(
            "Real libp2p hosts (TCP + Noise + yamux, no consortium key), float32 models of "
            "N(0, 1) values, training off. Plain: exchange_speed's pair, the initiator in this "
            "process, the responder in its own. Group: the leader a `Node` in this process "
            "leading rounds through its driver (`node.groups.lead()`), each of the g − 1 other "
            "members a `Node` in a process of its own; all on the same cores. Median of "
            f"{REPEATS} rounds after the connections are up: seconds until the leader (the "
            "initiator) merged, and until every member merged. Bytes: sent + received per "
            "round on the exchange and group streams, as the nodes count them. Memory: the peak "
            "resident set during the rounds above the idle process (VmHWM reset first)."
        ),
        header=[
            "parameters", "what", "seconds per round", "every member merged (s)",
            "MB per round, leader", "MB per round, member", "× plain bytes, member / leader",
            "× plain time", "leader MB/s", "peak MiB above idle, leader / member",
        ],
    )  # fmt: skip
    plain = {c.params: c for c in costs if c.size == 0}
    for c in costs:
        p = plain[c.params]
        what = "plain push-pull exchange" if c.size == 0 else f"secure group round, g = {c.size}"
        section.rows.append(
            [
                f"{c.params:,}",
                what,
                f"{c.seconds:.2f}",
                "" if c.size == 0 else f"{c.all_merged:.2f}",
                f"{c.leader_bytes / 1e6:.1f}",
                f"{c.member_bytes / 1e6:.1f}",
                f"{c.member_bytes / p.member_bytes:.1f} / {c.leader_bytes / p.leader_bytes:.1f}",
                f"{c.seconds / p.seconds:.1f}",
                f"{c.leader_bytes / c.seconds / 1e6:.0f}",
                f"{c.leader_memory / MIB:.0f} / "
                + ("—" if c.size == 0 else f"{c.member_memory / MIB:.0f}"),
            ]
        )
    section.notes.append(
        "A pairwise exchange moves 4 B a parameter each way. In a group round every member "
        "sends its masked share and receives the sum, 8 B a parameter each (fixed point mod "
        "2^64: twice float32), so 2× the plain bytes, whatever g; the leader receives g − 1 "
        "shares and sends g − 1 sums, 2(g − 1)× the plain bytes. The round is bound by the "
        "leader's link: its MB/s stays near the plain exchange's, and the time grows with "
        "the leader's bytes, not with the cryptography."
    )
    for params, s in steps.items():
        section.notes.append(
            f"CPU by step at {params:,} parameters, one core, no network: fixed-point encode "
            f"{s.encode:.2f} s a member; one pair mask (ChaCha20 keystream, added mod 2^64) "
            f"{s.mask:.2f} s, g − 1 of them a member; a share's frame encode + decode "
            f"{s.frame:.2f} s; the leader's sum of 3 vectors and decode {s.sum_decode:.2f} s."
        )
    big = max(costs, key=lambda c: (c.params, c.size))
    vector = 8 * big.params
    section.notes.append(
        f"Memory: at {big.params:,} parameters and g = {big.size}, the leader's peak is "
        f"{big.leader_memory / vector:.1f}× one fixed-point vector ({vector / 1e6:.0f} MB) "
        f"and a member's {big.member_memory / vector:.1f}×; a plain exchange's initiator "
        f"{plain[big.params].leader_memory / vector:.1f}×."
    )
    if RETRIED:
        section.notes.append(
            f"{len(RETRIED)} round(s) did not complete and were retried: {', '.join(RETRIED)}."
        )
    return section


def _accuracy_section(runs: list[Run]) -> Section:
    first = runs[0].summary
    section = Section(
        title="Secure averaging: accuracy on and off at the same traffic (digits)",
        command="python -m bench secure_averaging",
        settings=(
            f"The demo's consortium: {BASE.peers} real peer processes on 127.0.0.1 (private "
            f"network: consortium key), digits {BASE.partition}, {BASE.seconds:.0f} s, "
            f"{BASE.steps_per_second:g} steps/s ({first['steps_per_peer']:.0f} steps per "
            f"peer in every run), training stops after {100 * BASE.train_share:.0f}% of the "
            "run. Secure runs add `--secure-averaging --group-size g` to every peer, at the "
            f"demo's gossip interval ({BASE.gossip_interval} s). A group round and a pairwise "
            "exchange cost different bytes, so each secure run is paired with a plain run at "
            "the same traffic: its interval is the demo's scaled by the ratio of bytes per peer "
            "(plain at the demo's interval over the secure run), since plain traffic is "
            "proportional to the exchange rate; the MB column shows how close it came. "
            "Accuracy of the saved models on the common held-out test set; merges: pairwise "
            "exchanges, or group rounds (led or joined), completed per peer; a round abandoned "
            "is counted by every peer that abandoned it (its leader and the members that got "
            "the invite), by reason."
        ),
        header=[
            "seed", "averaging", "gossip interval (s)", "mean accuracy", "worst peer",
            "MB per peer", "merges per peer", "rounds abandoned, all peers (by reason)",
        ],
    )  # fmt: skip
    for r in runs:
        s = r.summary
        merges = s["group_rounds_per_peer"] if r.secure else s["exchanges_per_peer"]
        abandoned = s["group_abandoned"]
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(abandoned.items(), key=lambda kv: -kv[1]))
        section.rows.append(
            [
                str(r.seed),
                r.label,
                f"{r.interval:g}",
                f"{100 * s['gossip_mean']:.1f}%",
                f"{100 * s['gossip_worst']:.1f}%",
                f"{s['traffic_per_peer'] / 1e6:.2f}",
                f"{merges:.0f}",
                (reasons or "none") if r.secure else "",
            ]
        )
    for size in ACCURACY_GROUPS:
        pairs = [
            (a.summary, b.summary)
            for a, b in itertools.pairwise(runs)
            if a.label == f"secure, g = {size}" and b.label == f"plain, bytes of g = {size}"
        ]
        if not pairs:
            continue
        gap = statistics.fmean(s["gossip_mean"] - p["gossip_mean"] for s, p in pairs)
        traffic = statistics.fmean(s["traffic_per_peer"] / p["traffic_per_peer"] for s, p in pairs)
        merges = statistics.fmean(
            s["group_rounds_per_peer"] / max(1.0, p["exchanges_per_peer"]) for s, p in pairs
        )
        section.notes.append(
            f"g = {size} against plain at the same traffic (mean over seeds): "
            f"{100 * gap:+.1f} points of mean accuracy, {traffic:.2f}× the bytes, "
            f"{merges:.2f}× the merges per peer."
        )
    if any(r.secure and r.summary["group_abandoned"].get("timeout") for r in runs):
        section.notes.append(
            "Rounds abandoned on a deadline (`timeout`) mark connections that stalled: the peers "
            "log stream opens timing out after 10 s to a live neighbour, and a member that "
            "joined such a round holds its slot (declining every invite) until its own "
            "deadline. Measured while making this benchmark: six processes leading rounds of 3 "
            "every 0.3 s (numpy models, no training) complete about 80 rounds each in 30 s with "
            "a consortium key and stall for 10 s at a time, about 200 without one or with "
            "libp2p frame writes shielded from cancellation, with no stall. With the key, "
            "py-libp2p's PSK layer encrypts a frame before its socket write; a task cancelled "
            "in between (group rounds cancel the other members' steps on every decline) leaves "
            "the stream cipher out of step, and the receiver waits on a garbage frame length. "
            "With those writes shielded (a probe, not this code), secure runs at 0.3 s reached "
            "94.4% and 98.1% (g = 3, seeds 0 and 1) and 95.8% and 97.8% (g = 4), every peer "
            "on the same model, about 200 rounds and 21-26 MB per peer."
        )
    section.notes.append(
        "Centralised training on the union: "
        + ", ".join(
            f"{100 * r.summary['centralised']:.1f}% (seed {r.seed})"
            for r in runs
            if r.label == "plain push-pull"
        )
        + "; local-only: "
        + ", ".join(
            f"{100 * r.summary['local_mean']:.1f}%" for r in runs if r.label == "plain push-pull"
        )
        + "."
    )
    return section


if __name__ == "__main__" and sys.argv[1:2] == ["--member"]:
    trio.run(_member, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
