"""Privacy accounting: budgets and their validation, the noise a budget needs, and the ledger
(agreement with Opacus's accountants, never overspending, surviving a checkpoint)."""

from __future__ import annotations

import msgpack
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from gossiplearn.crypto.privacy import (
    MAX_NOISE_MULTIPLIER,
    Ledger,
    PrivacyBudget,
    Spend,
    default_delta,
    noise_for_budget,
)
from gossiplearn.errors import CheckpointError, UserError

Q = 32 / 1000
DELTA = 1e-5


def budget(**changes: object) -> PrivacyBudget:
    fields: dict[str, object] = {
        "target_epsilon": 3.0,
        "delta": DELTA,
        "max_grad_norm": 1.0,
        "noise_multiplier": 1.1,
        "sample_rate": Q,
    }
    return PrivacyBudget(**(fields | changes))  # type: ignore[arg-type]


def test_default_delta_is_well_below_one_over_records() -> None:
    for records in (1, 100, 1000, 60_000):
        assert default_delta(records) == 1 / (10 * records)
    with pytest.raises(ValueError):
        default_delta(0)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": float("nan")}, "target_epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": 500.0}, "noise_multiplier"),
        ({"sample_rate": 0.0}, "batch_size"),
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_an_invalid_setting_is_named(changes: dict[str, object], named: str) -> None:
    with pytest.raises(UserError, match=named):
        budget(**changes)


def test_plan_defaults_delta_and_derives_the_noise() -> None:
    plan = PrivacyBudget.plan(
        target_epsilon=3.0, max_grad_norm=1.0, records=1000, batch_size=32, steps=2000
    )
    assert plan.delta == default_delta(1000)
    assert plan.sample_rate == Q
    assert 1.5 < plan.noise_multiplier < 3.0
    assert plan.accountant == "rdp"


def test_plan_refuses_a_delta_not_below_one_over_records() -> None:
    with pytest.raises(UserError, match=r"below 1/records = 1/500"):
        PrivacyBudget.plan(
            target_epsilon=3.0, max_grad_norm=1.0, records=500, batch_size=32, steps=10,
            delta=1 / 500, noise_multiplier=1.0,
        )  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [{"target_epsilon": -1.0}, {"max_grad_norm": 0.0}, {"batch_size": 0}, {"steps": 0}],
)
def test_plan_refuses_invalid_settings(changes: dict[str, object]) -> None:
    settings: dict[str, object] = {
        "target_epsilon": 3.0, "max_grad_norm": 1.0, "records": 1000, "batch_size": 32,
        "steps": 100, "noise_multiplier": 1.0,
    }  # fmt: skip
    name = next(iter(changes))
    with pytest.raises(UserError, match=name if name != "steps" else "training steps"):
        PrivacyBudget.plan(**(settings | changes))  # type: ignore[arg-type]


def test_a_budget_too_small_for_the_training_says_what_to_change() -> None:
    with pytest.raises(UserError) as caught:
        noise_for_budget(0.01, DELTA, sample_rate=Q, steps=100_000)
    text = str(caught.value)
    assert f"above {MAX_NOISE_MULTIPLIER:g}" in text
    assert "target_epsilon" in text and "fewer steps" in text


def test_epsilon_grows_with_steps() -> None:
    ledger, seen = Ledger(), [0.0]
    assert ledger.epsilon(DELTA) == 0.0
    for steps in (1, 9, 90, 900):
        ledger.record(1.1, Q, steps)
        seen.append(ledger.epsilon(DELTA))
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


@pytest.mark.parametrize(
    ("mechanism", "history"),
    [
        (RDPAccountant, [(1.1, Q, 500), (0.9, 2 * Q, 20), (1.1, Q, 30)]),
        (PRVAccountant, [(1.1, Q, 50), (0.9, 2 * Q, 5)]),  # PRV: 0.2 s, not 1-2 s for 3
    ],
)
def test_the_ledger_computes_what_opacus_computes(
    mechanism: type[RDPAccountant | PRVAccountant], history: list[tuple[float, float, int]]
) -> None:
    accountant = mechanism()
    accountant.history = history
    ledger = Ledger(Spend(*entry) for entry in history)
    assert ledger.epsilon(DELTA, accountant.mechanism()) == accountant.get_epsilon(delta=DELTA)


def test_consecutive_equal_steps_are_one_entry() -> None:
    ledger = Ledger()
    for _ in range(100_000):
        ledger.record(1.1, Q)
    ledger.record(1.2, Q)
    ledger.record(1.1, Q, 5)
    assert ledger.history == (Spend(1.1, Q, 100_000), Spend(1.2, Q, 1), Spend(1.1, Q, 5))
    assert ledger.steps == 100_006
    assert len(msgpack.packb(ledger.to_state())) < 100


def test_the_state_survives_msgpack_and_keeps_epsilon() -> None:
    ledger = Ledger([Spend(1.1, Q, 1234), Spend(0.8, 0.1, 7)])
    packed = msgpack.packb(ledger.to_state())
    restored = Ledger.from_state(msgpack.unpackb(packed))
    assert restored.history == ledger.history
    assert restored.epsilon(DELTA) == ledger.epsilon(DELTA)
    restored.record(0.8, 0.1)  # continues the last entry
    assert restored.history[-1] == Spend(0.8, 0.1, 8)


@pytest.mark.parametrize(
    "state",
    [
        {},
        {"version": 2, "history": []},
        {"version": 1},
        {"version": 1, "history": 3},
        {"version": 1, "history": [[1.0, 0.1]]},
        {"version": 1, "history": [[1.0, 0.1, 2.5]]},
        {"version": 1, "history": [["1.0", 0.1, 2]]},
        {"version": 1, "history": [[1.0, 1.5, 2]]},
        {"version": 1, "history": [[-1.0, 0.1, 2]]},
        {"version": 1, "history": [[1.0, 0.1, 0]]},
    ],
)
def test_a_damaged_state_is_a_checkpoint_error(state: dict[str, object]) -> None:
    with pytest.raises(CheckpointError):
        Ledger.from_state(state)


def test_record_refuses_impossible_steps() -> None:
    ledger = Ledger()
    for sigma, rate, steps in ((0.0, Q, 1), (1.0, 0.0, 1), (1.0, 1.5, 1), (1.0, Q, 0)):
        with pytest.raises(ValueError):
            ledger.record(sigma, rate, steps)
    assert ledger.steps == 0


def test_spending_the_planned_steps_stays_within_the_target_and_then_stops() -> None:
    plan = PrivacyBudget.plan(
        target_epsilon=3.0, max_grad_norm=1.0, records=1000, batch_size=32, steps=2000,
        delta=DELTA,
    )  # fmt: skip
    ledger = Ledger()
    for _ in range(2000):
        assert not ledger.would_exceed(plan)
        ledger.record(plan.noise_multiplier, plan.sample_rate)
    assert 2.98 <= ledger.epsilon(DELTA) <= 3.0  # Opacus searches σ to 0.01 in ε
    left = ledger.remaining_steps(plan)
    assert left < 20  # the rounding of σ leaves a few steps, no more
    for _ in range(left):
        assert not ledger.would_exceed(plan)
        ledger.record(plan.noise_multiplier, plan.sample_rate)
    assert ledger.epsilon(DELTA) <= 3.0
    assert ledger.remaining_steps(plan) == 0 and ledger.would_exceed(plan)
    assert ledger.epsilon_after(plan, 1) > 3.0


def test_the_countdown_agrees_with_a_fresh_search() -> None:
    plan = budget(noise_multiplier=1.0, target_epsilon=3.0)  # 115 steps after the earlier 100
    ledger = Ledger([Spend(1.5, Q, 100)])  # an earlier setting
    allowed = ledger.remaining_steps(plan)
    ledger.record(plan.noise_multiplier, plan.sample_rate, 37)
    assert ledger.remaining_steps(plan) == allowed - 37
    assert Ledger(ledger.history).remaining_steps(plan) == allowed - 37
    assert ledger.would_exceed(plan, allowed - 36) and not ledger.would_exceed(plan, allowed - 37)
    ledger.record(2.0, Q)  # another setting: the countdown is recomputed
    assert ledger.remaining_steps(plan) == Ledger(ledger.history).remaining_steps(plan)


def test_a_ledger_already_over_the_target_allows_nothing() -> None:
    ledger = Ledger([Spend(0.8, 0.5, 200)])
    plan = budget()
    assert ledger.epsilon(DELTA) > plan.target_epsilon
    assert ledger.remaining_steps(plan) == 0 and ledger.would_exceed(plan)


def test_prv_is_tighter_than_rdp_for_the_same_history() -> None:
    ledger = Ledger([Spend(1.1, Q, 200)])
    assert ledger.epsilon(DELTA, "prv") < ledger.epsilon(DELTA, "rdp")
