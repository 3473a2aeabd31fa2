"""Chaos: six peer processes; for 90 s a random one is SIGKILLed and restarted every few seconds.
A calm consortium with the same settings, run just before on the same machine, is the
reference. See ``chaos.py`` for what is observed.

The two runs are not run side by side: twelve peers and the restarts' imports on two cores slow
the chaos run more than the calm one (measured: 0-1.6 points apart side by side, 0.4 at most
one after the other)."""

from __future__ import annotations

import pytest
from chaos import Settings, run_consortium


@pytest.mark.slow
def test_random_kills_for_90_s_lose_no_checkpoint_no_counter_and_little_accuracy() -> None:
    chaos_settings = Settings(chaos_seconds=90.0)
    calm_settings = Settings(chaos_seconds=0.0)
    calm = run_consortium(calm_settings, seed=3)
    chaos = run_consortium(chaos_settings, seed=4)
    print(calm.summary())
    print(chaos.summary())
    assert chaos.kills >= 15
    for run in (calm, chaos):
        assert run.exit_codes == [0] * 6  # every peer was running at the end and stopped cleanly
        assert not run.unloadable, run.unloadable  # every checkpoint loaded and fits the model
        assert not run.violations, run.violations  # no status counter ever went backwards
        assert not run.unsaved, run.unsaved  # the clean stop saved model and checkpoint
    # the checks ran: a checkpoint loaded after (nearly) every kill (not after one that came
    # before the peer's first checkpoint) and at the end, and restarted peers were compared
    # with what they resumed (not one killed again before it answered)
    assert chaos.checkpoints_checked >= chaos.kills
    assert chaos.restarts_checked >= chaos.kills // 2
    assert chaos.mean >= calm.mean - 0.02, (chaos.summary(), calm.summary())
