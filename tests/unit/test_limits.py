"""The in-process fixed-window rate limiter, with a clock the test controls."""

from __future__ import annotations

from api.limits import MemoryWindow


def test_fixed_window_counts_per_key_and_resets_each_minute():
    now = [1200.0]  # the start of a minute
    window = MemoryWindow(clock=lambda: now[0])
    assert [window.hit("acme", 2) for _ in range(2)] == [None, None]
    now[0] = 1245.5
    assert window.hit("acme", 2) == 14.5  # seconds to the next minute
    assert window.hit("globex", 2) is None
    now[0] = 1260.0
    assert window.hit("acme", 2) is None
