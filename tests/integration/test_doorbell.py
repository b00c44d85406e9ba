"""The scheduler's doorbell on a real Redis: a ring wakes a waiting scheduler, a short wait ends when
asked (not at Redis's next clock tick), and an idle wait as long as a sweep interval returns quietly
(it used to outlast redis-py's default 5 s read timeout and end in a reconnect)."""

from __future__ import annotations

import threading
import time

from orchestrator import broker


def test_a_ring_wakes_the_wait_and_the_rings_waiting_are_taken_together(settings):
    doorbell = broker.Doorbell(broker.make_celery(settings), f"{settings.wake_queue}.test-wake")
    for reason in ("a", "b", "c"):  # kept while no scheduler listens
        doorbell.ring(reason)
    with doorbell.listening(max_wait_s=5.0) as wait:
        assert wait(1.0) == 3
        assert wait(0.01) == 0
        threading.Timer(0.2, doorbell.ring, args=("late",)).start()
        started = time.monotonic()
        assert wait(5.0) == 1
        assert time.monotonic() - started < 2.0


def test_an_idle_wait_longer_than_redis_py_default_read_timeout_returns_quietly(settings):
    doorbell = broker.Doorbell(broker.make_celery(settings), f"{settings.wake_queue}.test-idle")
    with doorbell.listening(max_wait_s=6.0) as wait:
        started = time.monotonic()
        assert wait(5.5) == 0
        assert time.monotonic() - started >= 5.4
        doorbell.ring("after")
        assert wait(1.0) == 1


def test_a_short_wait_ends_when_asked_not_at_redis_clock_tick(settings):
    """The pace of admission waits 20-250 ms between looks for room. A Redis left idle serves a
    blocking pop's timeout at its next clock tick (every 100 ms at its default hz of 10): a 30 ms
    wait took 100 ms, and a window emptied that long drained the workers."""
    doorbell = broker.Doorbell(broker.make_celery(settings), f"{settings.wake_queue}.test-short")
    with doorbell.listening(max_wait_s=5.0) as wait:
        took = []
        for _ in range(5):
            started = time.monotonic()
            assert wait(0.03) == 0
            took.append(time.monotonic() - started)
    assert min(took) >= 0.029, took
    assert sorted(took)[2] < 0.08, took  # the median: a busy host may delay one wake-up
