"""The worker's outcomes written behind their tasks (workers.tasks._OutcomesBehind): a thread's next
claim waits for its held outcome, a process that stops writes what it holds, and a failed write is
logged (no task is left to fail). The end-to-end path runs in the integration tests' real workers."""

from __future__ import annotations

import logging
import threading

import pytest

from orchestrator import logs
from workers.tasks import _OutcomesBehind

DEADLINE_S = 5.0


@pytest.fixture
def behind():
    return _OutcomesBehind()


def _blocked_write(started: threading.Event, release: threading.Event, done: list):
    def write():
        started.set()
        assert release.wait(DEADLINE_S)
        done.append(threading.current_thread().name)
    return write


def test_the_next_claim_waits_for_the_held_outcome(behind):
    started, release, done = threading.Event(), threading.Event(), []

    def task_thread():  # a task hands its outcome over and returns; the next one waits before its claim
        behind.submit(_blocked_write(started, release, done))
        behind.wait()

    claimer = threading.Thread(target=task_thread)
    claimer.start()
    assert started.wait(DEADLINE_S)
    claimer.join(0.2)
    assert claimer.is_alive() and done == []  # still held: the wait goes on
    release.set()
    claimer.join(DEADLINE_S)
    assert not claimer.is_alive()
    assert done and done[0].startswith("switchyard-outcome")  # written on the writer's thread, not the task's


def test_a_thread_waits_only_for_its_own_outcome(behind):
    """In a threads pool each thread holds its own: another thread's held write does not stop a claim."""
    started, release, done = threading.Event(), threading.Event(), []
    other = threading.Thread(target=behind.submit, args=(_blocked_write(started, release, done),))
    other.start()
    other.join(DEADLINE_S)
    assert started.wait(DEADLINE_S)
    behind.wait()  # returns at once: this thread holds nothing
    assert done == []
    release.set()
    behind.flush()
    assert len(done) == 1


def test_flush_writes_everything_held_before_the_process_stops(behind):
    order = []
    submitters = [threading.Thread(target=behind.submit, args=(lambda n=n: order.append(n),)) for n in range(3)]
    for thread in submitters:
        thread.start()
    for thread in submitters:  # each has handed its write over; none need have been written yet
        thread.join(DEADLINE_S)
    behind.flush()
    assert sorted(order) == [0, 1, 2]


def test_a_failed_write_is_logged_with_the_attempts_fields_and_the_next_claim_goes_on(behind, caplog):
    def failing():
        raise RuntimeError("database gone for good")

    with caplog.at_level(logging.ERROR, logger="workers.tasks"), logs.bound(run_id="run_1", step_id="a", attempt=2):
        behind.submit(failing)
    behind.wait()  # does not raise
    [record] = [r for r in caplog.records if "outcome failed" in r.getMessage()]
    assert "its lease will expire" in record.getMessage() and record.exc_info[1].args == ("database gone for good",)


def _log_fields() -> dict:
    return logs.fields(logging.makeLogRecord({}))


def test_the_write_runs_in_the_attempts_log_context(behind):
    seen = []
    with logs.bound(run_id="run_7", step_id="b", attempt=1):
        behind.submit(lambda: seen.append(_log_fields()))
    behind.wait()
    assert seen == [{"run_id": "run_7", "step_id": "b", "attempt": 1}]
    assert _log_fields() == {}  # the caller's own context is as it was
