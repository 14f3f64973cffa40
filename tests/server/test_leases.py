"""Shared-memory leases (server/shm.py `Leases`): expiry on use and by sweep, on a clock the test moves."""

from __future__ import annotations

import numpy as np

from kvbucket.server.shm import Leases


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_sweep_drops_exactly_the_expired_leases_and_their_slots_even_after_renewals():
    clock = _Clock()
    leases = Leases(clock, seconds=10.0)
    first = leases.open("t", "pool", spare={0: np.zeros(4, np.uint8)})
    clock.now += 5
    second = leases.open("t", "get", held=[np.zeros(4, np.uint8)])
    assert leases.sweep() == 0 and len(leases) == 2

    clock.now += 4  # first due at +10, second at +15
    assert leases.renew(first.id, "t", "pool") is first  # now due at +19
    clock.now += 2  # +11: first's original deadline has passed, it was renewed
    assert leases.sweep() == 0 and len(leases) == 2

    clock.now += 5  # +16: second expired, first (renewed to +19) did not
    assert leases.sweep() == 1 and len(leases) == 1
    assert second.held == [] and leases.expired == 1
    assert leases.take(second.id, "t") is None

    clock.now += 2  # +18
    assert leases.sweep() == 0
    clock.now += 1  # +19
    assert leases.sweep() == 1 and len(leases) == 0 and first.spare == {}
    assert leases.expired == 2


def test_a_lease_opened_after_a_sweep_is_swept_when_it_expires():
    clock = _Clock()
    leases = Leases(clock, seconds=10.0)
    assert leases.sweep() == 0  # none open: nothing is due
    late = leases.open("t", "put")
    clock.now += 9.5
    assert leases.sweep() == 0
    clock.now += 0.5
    assert leases.sweep() == 1 and leases.take(late.id, "t") is None
