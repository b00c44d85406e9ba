"""The scheduler's doorbell on a real Redis: a ring wakes a waiting scheduler, and an idle wait as
long as a sweep interval returns quietly (it used to outlast redis-py's default 5 s read timeout and
end in a reconnect)."""

from __future__ import annotations

import threading
import time

from orchestrator import broker


def test_a_ring_wakes_the_wait_and_the_rings_waiting_are_taken_together(settings):
    doorbell = broker.Doorbell(broker.make_celery(settings), f"{settings.wake_queue}.test-wake")
    with doorbell.listening(max_wait_s=5.0) as wait:
        assert wait(0.01) == 0
        for reason in ("a", "b", "c"):
            doorbell.ring(reason)
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
