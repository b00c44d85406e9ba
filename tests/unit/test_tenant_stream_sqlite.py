"""The tenant stream on the embedded default (SQLite, no pub/sub): each change carries the run's previous
status, as the Redis publisher's do, for a run the real code moves through its statuses."""

from __future__ import annotations

import pytest

from orchestrator import broker, controls, service, streams
from orchestrator.catalog import DefinitionCatalog
from orchestrator.core.inputs import Actor
from orchestrator.db.session import make_engine, make_sessionmaker, transaction
from orchestrator.scheduler import Scheduler

ASKS = {"name": "asks", "steps": [{"id": "q", "type": "question", "question": "Which invoice?"}]}


@pytest.fixture
def scheduler(sqlite_settings):
    settings = sqlite_settings.model_copy(update={"stream_poll_s": 0.01, "stream_keepalive_s": 5})
    engine = make_engine(settings)
    yield Scheduler(settings, make_sessionmaker(engine), broker.make_celery(settings))
    engine.dispose()


def test_tenant_stream_changes_carry_the_previous_status(scheduler):
    sessions, settings = scheduler.sessions, scheduler.settings
    catalog = DefinitionCatalog()
    with transaction(sessions) as session:
        service.publish_workflow(session, settings, "t", "asks", ASKS)
    tenant = iter(streams.follow_tenant(None, sessions, settings, "t"))  # sees what is written from now on

    def act(action: str, **body):
        with transaction(sessions) as session:
            controls.control(session, catalog, controls.ControlRequest("t", run_id, action, Actor("tok"), body),
                             settings=settings)

    with transaction(sessions) as session:
        run_id = service.start_run(session, settings, "t", "asks", {}).run.id
    scheduler.drain()  # queued -> running -> waiting on the question, in one pass
    act("pause")
    act("resume")
    scheduler.drain()  # running -> waiting again: the question is still open
    act("cancel")

    changes = []
    while len(changes) < 7:
        change = next(tenant)
        if change is not None:  # not a keep-alive
            changes.append(change)
    assert all(c["run_id"] == run_id and c["workflow_id"] == "asks" for c in changes)
    assert [(c["type"], c["previous_status"], c["status"]) for c in changes] == [
        ("run_created", None, "queued"),
        ("run_started", "queued", "running"),
        ("run_waiting", "running", "waiting"),
        ("run_paused", "waiting", "paused"),
        ("run_resumed", "paused", "running"),
        ("run_waiting", "running", "waiting"),
        ("run_cancelled", "waiting", "cancelled"),
    ]
    assert [c["waiting_on"] for c in changes if c["type"] == "run_waiting"] == ["question", "question"]
    assert [c["seq"] for c in changes] == sorted(c["seq"] for c in changes)
