"""What Celery's events (what Flower shows) say of each attempt, heard by an event receiver beside
the session's real workers: a failed attempt is task-failed with its error, a retried one that then
succeeds is task-succeeded, each step message is acknowledged once (nothing delivered again)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from orchestrator import messages
from orchestrator.broker import make_celery
from tests.integration.conftest import by_id, publish, start, wait_for, wait_run

pytestmark = pytest.mark.usefixtures("engine_processes")


class Heard:
    """Celery's task events of the workers, kept by task id, from a receiver on its own thread."""

    def __init__(self, settings):
        self.app = make_celery(settings)
        self.events: dict[str, list[dict]] = {}
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self.app.connection() as connection:
            receiver = self.app.events.Receiver(connection, handlers={"*": self._keep})
            self.ready.set()
            while not self.stopping.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue

    def _keep(self, event: dict) -> None:
        if event["type"].startswith("task-"):
            self.events.setdefault(event["uuid"], []).append(event)

    def types(self, task_id: str) -> list[str]:
        return [e["type"] for e in self.events.get(task_id, [])]

    def last(self, task_id: str) -> dict | None:
        finals = [e for e in self.events.get(task_id, []) if e["type"] in ("task-succeeded", "task-failed")]
        return finals[-1] if finals else None


@pytest.fixture
def heard(settings) -> Iterator[Heard]:
    listener = Heard(settings)
    listener.thread.start()
    assert listener.ready.wait(10), "the event receiver did not connect"
    yield listener
    listener.stopping.set()
    listener.thread.join(5)


def test_celery_events_say_an_attempt_failed_when_it_failed(api, heard):
    workflow = publish(api, {"name": "truth", "steps": [
        {"id": "ok", "type": "tool", "tool": "echo", "args": {"fine": True}},
        {"id": "flaky", "type": "tool", "tool": "fail", "retry": {"max_attempts": 3, "initial_delay_s": 0.1,
                                                                   "jitter": False},
         "args": {"message": "upstream down", "until_attempt": 2}},
        {"id": "bad", "type": "tool", "tool": "fail", "needs": ["ok", "flaky"], "retry": {"max_attempts": 1},
         "args": {"message": "broken for good"}},
    ]})
    run_id = start(api, workflow)
    run = wait_run(api, run_id)
    assert run["status"] == "failed" and by_id(run)["flaky"]["attempt"] == 2

    ids = {name: messages.task_id(run_id, step, attempt)
           for name, step, attempt in (("ok", "ok", 1), ("flaky1", "flaky", 1), ("flaky2", "flaky", 2),
                                       ("bad", "bad", 1))}
    wait_for(lambda: all(heard.last(task) for task in ids.values()), 20, "the final event of every attempt")
    assert heard.last(ids["ok"])["type"] == "task-succeeded" and "succeeded" in heard.last(ids["ok"])["result"]
    for name in ("flaky1", "bad"):
        event = heard.last(ids[name])
        assert event["type"] == "task-failed", (name, heard.types(ids[name]))
        assert "AttemptFailed" in event["exception"] and "tool_failed" in event["exception"]
    assert "broken for good" in heard.last(ids["bad"])["exception"]
    assert heard.last(ids["flaky2"])["type"] == "task-succeeded", heard.types(ids["flaky2"])
    # A failed task is acknowledged like any other: neither received twice nor retried by Celery.
    for task in ids.values():
        assert heard.types(task).count("task-received") == 1, heard.types(task)
        assert "task-retried" not in heard.types(task)
