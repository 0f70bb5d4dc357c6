"""One principal cannot hold the web tier's streams and waits away from the others.

``API_MAX_HELD_PER_PRINCIPAL`` bounds the event streams and ``Prefer: wait`` requests one
principal holds open in a web process: a stream over it answers ``429 too_many_streams`` with
``Retry-After``; a wait over it answers at once, without ``Preference-Applied``; another principal
is not affected, and a closed stream gives its place back.
"""

from __future__ import annotations

from typing import Any

from jobs.api import live


def test_places_are_counted_per_principal_and_given_back(settings: Any) -> None:
    # given a cap of two
    settings.API_MAX_HELD_PER_PRINCIPAL = 2
    one, two = -101, -102  # ids no real principal has: other tests' streams may hold places
    # when principal one takes two places, then a third
    assert live.hold(one) and live.hold(one)
    assert not live.hold(one)
    # then principal two is not affected, and a released place can be taken again
    assert live.hold(two)
    live.release(one)
    assert live.hold(one)
    for pid in (one, one, two):
        live.release(pid)
    assert one not in live._held and two not in live._held
