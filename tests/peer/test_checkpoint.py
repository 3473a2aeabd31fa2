"""Checkpoints: the file format detects every truncation and flipped bit, the previous good file
is used when the newest is damaged, and a resumed trainer continues bit for bit."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossiplearn.errors import CheckpointError
from gossiplearn.gossip.messages import WIRE_DTYPES
from gossiplearn.gossip.stats import ExchangeCounters, GroupCounters, MetricPoint
from gossiplearn.peer.home.checkpoint import (
    _HEADER,
    BAD_NAME,
    CURRENT_NAME,
    FORMAT_VERSION,
    MAGIC,
    PREVIOUS_NAME,
    Checkpoint,
    NodeState,
    decode_checkpoint,
    encode_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from gossiplearn.peer.home.config import TrainingConfig
from gossiplearn.peer.home.home import Home
from gossiplearn.peer.home.modelfile import MODEL_FILE_NAME
from gossiplearn.peer.home.resume import Checkpointer, resume, save_model_file
from gossiplearn.peer.learning.state import TrainerState
from gossiplearn.peer.learning.trainer import Trainer
from gossiplearn.tasks.base import Task, TaskOptions
from gossiplearn.tasks.digits import make_task

RELAXED = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60)


def small_checkpoint(steps: int = 7) -> Checkpoint:
    counters = ExchangeCounters(completed=3, declined=1, failed=2, initiated=4, answered=1)
    counters.refuse("non-finite")
    return Checkpoint(
        created=1_700_000_000.5,
        trainer=TrainerState(
            fingerprint=b"f" * 32,
            steps=steps,
            samples_seen=steps * 32,
            tensors={"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(3)},
            momentum={"w": np.full((3, 4), 0.5, dtype=np.float32)},
            rng_state=bytes(range(40)),
            order=np.array([3, 1, 0, 2], dtype=np.int64),
            position=2,
        ),
        node=NodeState(
            counters=counters,
            bytes_sent=1234,
            bytes_received=5678,
            history=(MetricPoint(1.0, 5, 0.5, 1.2), MetricPoint(2.0, 7, None, None)),
            consensus=((1.5, 0.25),),
        ),
    )


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert a.created == b.created
    assert a.node == b.node
    ta, tb = a.trainer, b.trainer
    assert (ta.fingerprint, ta.steps, ta.samples_seen, ta.rng_state, ta.position) == (
        tb.fingerprint,
        tb.steps,
        tb.samples_seen,
        tb.rng_state,
        tb.position,
    )
    assert np.array_equal(ta.order, tb.order)
    for mine, theirs in ((ta.tensors, tb.tensors), (ta.momentum, tb.momentum)):
        assert list(mine) == list(theirs)
        for name in mine:
            assert mine[name].dtype == theirs[name].dtype
            assert mine[name].tobytes() == theirs[name].tobytes()


names = st.text(min_size=1, max_size=12)
arrays = st.builds(
    lambda dtype, shape, seed: np.random.default_rng(seed).standard_normal(shape).astype(dtype),
    st.sampled_from(list(WIRE_DTYPES.values())),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.integers(0, 2**32 - 1),
)
reals = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(0, 2**62)


@RELAXED
@given(
    tensors=st.dictionaries(names, arrays, max_size=4),
    momentum=st.dictionaries(names, arrays, max_size=4),
    counters=st.builds(
        ExchangeCounters,
        completed=counts,
        refused=counts,
        clipped=counts,
        adopted=st.integers(0, 1),
        seeded=counts,
        refused_by_reason=st.dictionaries(st.text(max_size=8), counts, max_size=3),
    ),
    history=st.lists(
        st.builds(MetricPoint, reals, counts, st.none() | reals, st.none() | reals), max_size=5
    ),
    consensus=st.lists(st.tuples(reals, reals), max_size=5),
    group=st.builds(
        GroupCounters,
        led=counts,
        joined=counts,
        completed=counts,
        declined_inbound=counts,
        clipped=counts,
        last_size=st.none() | st.integers(3, 16),
        skipped=st.dictionaries(st.text(max_size=8), counts, max_size=3),
        abandoned=st.dictionaries(st.text(max_size=8), counts, max_size=3),
    ),
    order=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
    rng_state=st.binary(max_size=64),
    created=reals,
    age_offset=reals,
)
def test_round_trip(
    tensors: dict[str, np.ndarray],
    momentum: dict[str, np.ndarray],
    counters: ExchangeCounters,
    history: list[MetricPoint],
    consensus: list[tuple[float, float]],
    group: GroupCounters,
    order: list[int],
    rng_state: bytes,
    created: float,
    age_offset: float,
) -> None:
    cp = Checkpoint(
        created=created,
        trainer=TrainerState(
            fingerprint=b"\x00" * 32,
            steps=5,
            samples_seen=9,
            tensors=tensors,
            momentum=momentum,
            rng_state=rng_state,
            order=np.array(order, dtype=np.int64),
            position=1,
        ),
        node=NodeState(counters, 1, 2, tuple(history), tuple(consensus), age_offset, group),
    )
    assert_same(decode_checkpoint(encode_checkpoint(cp)), cp)


def test_a_checkpoint_without_a_model_age_reads_as_age_offset_0() -> None:
    # checkpoints written before late-joiner adoption existed have no "age_offset"
    data = encode_checkpoint(small_checkpoint())
    body = msgpack.unpackb(data[_HEADER.size :], raw=False)
    del body["age_offset"]
    raw = msgpack.packb(body, use_bin_type=True)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(raw), hashlib.sha256(raw).digest())
    assert decode_checkpoint(header + raw).node.age_offset == 0.0


def test_a_checkpoint_without_group_counters_reads_as_no_rounds() -> None:
    # checkpoints written before the group counters were kept have no "group"
    data = encode_checkpoint(small_checkpoint())
    body = msgpack.unpackb(data[_HEADER.size :], raw=False)
    assert body["group"]["completed"] == 0
    del body["group"]
    raw = msgpack.packb(body, use_bin_type=True)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(raw), hashlib.sha256(raw).digest())
    assert decode_checkpoint(header + raw).node.group == GroupCounters()


def test_every_truncation_is_detected() -> None:
    data = encode_checkpoint(small_checkpoint())
    for end in range(len(data)):
        with pytest.raises(CheckpointError):
            decode_checkpoint(data[:end])


def test_every_flipped_bit_is_detected() -> None:
    data = encode_checkpoint(small_checkpoint())
    for pos in range(len(data)):
        for bit in (0, 3, 7):
            damaged = bytearray(data)
            damaged[pos] ^= 1 << bit
            with pytest.raises(CheckpointError):
                decode_checkpoint(bytes(damaged))


@RELAXED
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_checkpoint_error(data: bytes) -> None:
    with pytest.raises(CheckpointError):
        decode_checkpoint(data)


def test_an_unknown_format_version_is_named() -> None:
    data = bytearray(encode_checkpoint(small_checkpoint()))
    data[7] = 9  # the low byte of the version
    with pytest.raises(CheckpointError, match="version 9"):
        decode_checkpoint(bytes(data))


def steps_of(home: Path) -> int | None:
    loaded = load_checkpoint(home)
    return None if loaded is None else loaded.checkpoint.trainer.steps


def test_saving_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    assert steps_of(tmp_path) is None
    save_checkpoint(tmp_path, encode_checkpoint(small_checkpoint(1)))
    assert not (tmp_path / PREVIOUS_NAME).exists()
    save_checkpoint(tmp_path, encode_checkpoint(small_checkpoint(2)))
    assert decode_checkpoint((tmp_path / PREVIOUS_NAME).read_bytes()).trainer.steps == 1
    assert steps_of(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [CURRENT_NAME, PREVIOUS_NAME]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_and_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, encode_checkpoint(small_checkpoint(1)))
    save_checkpoint(tmp_path, encode_checkpoint(small_checkpoint(2)))
    current = tmp_path / CURRENT_NAME
    current.write_bytes(current.read_bytes()[:-10])  # truncated
    with caplog.at_level(logging.WARNING):
        assert steps_of(tmp_path) == 1
    assert str(current) in caplog.text and "truncated" in caplog.text
    assert (tmp_path / BAD_NAME).exists() and not current.exists()
    # the next save must not rotate the damaged file over the good previous one
    save_checkpoint(tmp_path, encode_checkpoint(small_checkpoint(3)))
    assert decode_checkpoint((tmp_path / PREVIOUS_NAME).read_bytes()).trainer.steps == 1
    assert steps_of(tmp_path) == 3


def test_killed_between_rotation_and_write_the_previous_is_used(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, encode_checkpoint(small_checkpoint(4)))
    (tmp_path / CURRENT_NAME).rename(tmp_path / PREVIOUS_NAME)  # as the save leaves it
    (tmp_path / f".{CURRENT_NAME}.999.tmp").write_bytes(b"GLCKPT half written")
    assert steps_of(tmp_path) == 4


def test_nothing_usable_gives_none_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / CURRENT_NAME).write_bytes(b"")
    (tmp_path / PREVIOUS_NAME).mkdir()  # unreadable as a file
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(tmp_path) is None
    assert CURRENT_NAME in caplog.text and PREVIOUS_NAME in caplog.text


def test_a_rejected_checkpoint_falls_back_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, encode_checkpoint(small_checkpoint(1)))
    save_checkpoint(tmp_path, encode_checkpoint(small_checkpoint(2)))
    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(
            tmp_path, lambda cp: "another model" if cp.trainer.steps == 2 else None
        )
    assert loaded is not None and loaded.path.name == PREVIOUS_NAME
    assert "another model" in caplog.text


# ---------------------------------------------------------------------------------- trainer


@pytest.fixture(scope="module")
def task() -> Task:
    return make_task(TaskOptions(seed=0, shard=(1, 8), partition="iid"))


CONFIG = TrainingConfig(batch_size=16, momentum=0.9, weight_decay=1e-4)


@pytest.mark.parametrize(
    "config",
    [CONFIG, replace(CONFIG, lr_schedule="cosine", max_steps=60)],
    ids=["constant", "cosine"],
)
def test_a_resumed_trainer_continues_bit_for_bit(task: Task, config: TrainingConfig) -> None:
    original = Trainer(task, config, seed=1)
    per_epoch = len(task.train) // config.batch_size
    original.train_steps(per_epoch + 3)  # past an epoch boundary: a reshuffled order
    restored = decode_checkpoint(
        encode_checkpoint(Checkpoint(0.0, original.state(), small_checkpoint().node))
    )
    resumed = Trainer(task, config, seed=2)  # another init and batch order, all replaced
    assert resumed.incompatibility(restored.trainer) is None
    resumed.restore(restored.trainer)
    for _ in range(per_epoch):  # crosses the next epoch boundary as well
        original.train_steps(1)
        resumed.train_steps(1)
        a, b = original.state(), resumed.state()
        assert (a.steps, a.samples_seen, a.position) == (b.steps, b.samples_seen, b.position)
        for name in a.tensors:
            assert a.tensors[name].tobytes() == b.tensors[name].tobytes()
        assert a.momentum.keys() == b.momentum.keys() and a.momentum
        for name in a.momentum:
            assert a.momentum[name].tobytes() == b.momentum[name].tobytes()


def test_a_checkpoint_of_another_model_is_incompatible(task: Task) -> None:
    other = make_task(TaskOptions(seed=0, shard=(1, 8), params={"hidden": 8}))
    state = Trainer(other, CONFIG).state()
    assert "architecture" in (Trainer(task, CONFIG).incompatibility(state) or "")


def test_resume_prefers_the_checkpoint_then_the_model_file_then_fresh(
    task: Task, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trainer = Trainer(task, CONFIG, seed=1)
    trainer.train_steps(5)
    save_model_file(trainer, Home(tmp_path))  # an older home: model.glm only
    fresh = Trainer(task, CONFIG, seed=3)
    assert resume(fresh, Home(tmp_path)) is None
    assert fresh.steps == 5
    assert all(np.array_equal(fresh.snapshot()[k], v) for k, v in trainer.snapshot().items())

    trainer.train_steps(5)
    cp = Checkpoint(2.0, trainer.state(), small_checkpoint().node)
    save_checkpoint(tmp_path, encode_checkpoint(cp))
    again = Trainer(task, CONFIG, seed=3)
    loaded = resume(again, Home(tmp_path))
    assert loaded is not None and loaded.trainer.steps == again.steps == 10
    assert loaded.node == cp.node

    (tmp_path / CURRENT_NAME).write_bytes(b"garbage")
    (tmp_path / MODEL_FILE_NAME).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        last = Trainer(task, CONFIG, seed=3)
        assert resume(last, Home(tmp_path)) is None
    assert last.steps == 0
    assert "shorter than the header" in caplog.text and MODEL_FILE_NAME in caplog.text
    torch.manual_seed(0)  # leave the global generator as other tests expect it


def test_the_cosine_schedule_decays_to_zero_at_max_steps(task: Task) -> None:
    cosine = Trainer(task, replace(CONFIG, lr_schedule="cosine", max_steps=100), seed=1)
    base = CONFIG.learning_rate
    assert cosine.learning_rate(0) == base
    assert cosine.learning_rate(50) == pytest.approx(base / 2)
    assert cosine.learning_rate(100) == cosine.learning_rate(150) == pytest.approx(0.0)
    cosine.train_steps(25)
    assert cosine.optimizer.param_groups[0]["lr"] == cosine.learning_rate(24)  # the last step's
    constant = Trainer(task, replace(CONFIG, max_steps=100), seed=1)
    assert constant.learning_rate(0) == constant.learning_rate(99) == base


def test_the_status_says_what_the_resumed_checkpoint_counted(tmp_path: Path, task: Task) -> None:
    cp = small_checkpoint()
    cp = replace(cp, node=replace(cp.node, group=GroupCounters(led=2, joined=4, completed=5)))
    checkpointer = Checkpointer(Home(tmp_path), Trainer(task, CONFIG), 30.0, resumed=cp)
    status = checkpointer.status()
    resumed = status["resumed"]
    assert (resumed["steps"], resumed["exchanges"], resumed["group_rounds"]) == (7, 3, 5)
    assert status["time"] is None and status["group_rounds"] is None  # none written yet
